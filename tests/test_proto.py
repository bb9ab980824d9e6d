"""The committed generated code is exactly what the pinned generator makes from proto/."""
from __future__ import annotations

import filecmp
import importlib.metadata
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_generated_code_is_current(tmp_path: pathlib.Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True)
    committed = ROOT / "src" / "router" / "_proto"
    fresh = tmp_path / "router" / "_proto"
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    assert names == sorted(p.name for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")
                           and p.name != "__init__.py")
    match, mismatch, errors = filecmp.cmpfiles(fresh, committed, names, shallow=False)
    assert not mismatch and not errors, f"regenerate with scripts/gen_proto.py: {mismatch + errors}"


def test_no_top_level_modal_proto_is_installed() -> None:
    files = importlib.metadata.files("task-command-router") or []
    assert not [f for f in files if str(f).startswith("modal_proto")]
    top = {str(f).split("/")[0] for f in files}
    assert "modal_proto" not in top


def test_wire_names_match_modal() -> None:
    from router._proto import api_pb2
    from router._proto import task_command_router_pb2 as pb
    assert pb.DESCRIPTOR.package == "modal.task_command_router"
    assert api_pb2.DESCRIPTOR.package == "modal.client"
    start = pb.TaskExecStartRequest.DESCRIPTOR.fields_by_name
    assert (start["container_id"].number, start["env"].number, start["secret_sources"].number) == (11, 12, 13)
    snapshot = pb.TaskSnapshotDirectoryRequest.DESCRIPTOR.fields_by_name
    assert [snapshot[n].number for n in ("snapshot_id", "ttl_seconds", "customer_supplied_encryption_key",
                                         "container_id")] == [3, 4, 5, 6]
