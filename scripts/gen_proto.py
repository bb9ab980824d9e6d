"""Regenerate src/router/_proto/ from proto/router/_proto/*.proto.

Run with the pinned grpcio-tools (see pyproject's `test` extra):
    python scripts/gen_proto.py [--out DIR]
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTOS = sorted((PROTO_ROOT / "router" / "_proto").glob("*.proto"))


def generate(out: pathlib.Path) -> None:
    (out / "router" / "_proto").mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in PROTOS],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "src", help="directory that holds router/_proto/")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
