"""`python -m router.asv machine|remove`: what asv's own commands cannot do for a router's host.

  machine: record the router's host (its CPU, memory, OS) as an asv machine, for `asv run --machine`
           (`asv machine` records the local host);
  remove:  remove the plugin's environments on the targets (asv has no command for that; later runs
           build them again)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from asv.config import Config  # type: ignore[import-untyped]
from asv.machine import MachineCollection  # type: ignore[import-untyped]

from .settings import router_for, targets

# Run by the host's python3: asv's own description of a machine (asv.machine.Machine.get_defaults).
DESCRIBE = r"""
import json, os, platform
def field(path, key):
    for line in open(path):
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return ""
ram = field("/proc/meminfo", "MemTotal").split()
u = platform.uname()
print(json.dumps({"machine": u.node, "os": f"{u.system} {u.release}", "num_cpu": str(os.cpu_count()),
                  "arch": platform.machine(), "cpu": field("/proc/cpuinfo", "model name"),
                  "ram": str(int(ram[0]) * 1024) if ram else ""}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.asv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("machine", "remove"))
    parser.add_argument("--config", default="asv.conf.json", help="the asv config (default %(default)s)")
    parser.add_argument("--target", help="HOST:PORT (default: machine: the first of router_targets; remove: all)")
    parser.add_argument("--machine", help="machine: the name to record it under (default: the host's name)")
    args = parser.parse_args(argv)
    conf = Config.load(args.config)
    chosen = [args.target] if args.target else targets(conf)
    try:
        if args.command == "machine":
            out = router_for(conf, chosen[0]).check(["python3", "-c", DESCRIBE], timeout=60)
            info = json.loads(out)
            name = args.machine or info["machine"]
            MachineCollection.save(name, {**info, "machine": name, "version": 1})
            print(f"recorded {chosen[0]}'s host as machine {name!r}: {info['cpu']}, {info['num_cpu']} CPUs, "
                  f"{info['os']}; use `asv run --machine {name}`")
            return 0
        where = str(getattr(conf, "router_env_dir", "") or ".cache/router-asv")
        for target in chosen:
            script = 'case "$1" in /*) d="$1";; *) d="$HOME/$1";; esac; rm -rf "$d" && echo "$d"'
            removed = router_for(conf, target).check(["sh", "-c", script, "sh", where], timeout=600)
            print(f"{target}: removed {removed.decode().strip()}")
        return 0
    except subprocess.CalledProcessError as e:
        print(f"router.asv: {' '.join(e.cmd[-3:])} failed: {e.stderr.decode(errors='replace').strip()}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
