"""`python -m router.asv_proxy`: the local process asv runs for a command in a router environment
(the asv plugin `router.asv`'s; outside that package, which imports asv: ~0.1 s a benchmark).

    python -m router.asv_proxy --target T [--tls-...] [--env K=V]... [--fetch THERE=LOCAL]... -- CMD...
    python -m router.asv_proxy --target T [--tls-...] --end MARKER

`router exec` of CMD (its output, exit status and the signals asv sends passed through), then, if it
succeeded, each file THERE copied to LOCAL and removed there (asv's result files) through a client
in this process: one process per benchmark, and no gRPC in asv's own process, which forks (its
parallel builds) and gRPC does not survive a fork. `--end`: kill the running execs that have MARKER
among their arguments: `router exec` passes asv's SIGTERM (a timeout, Ctrl-C) on, but not one that
comes before its handlers are in place, nor the SIGKILL that follows a second later."""
from __future__ import annotations

import argparse
import sys
import uuid

from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb
from router.cli.main import main as router_main
from router.client import RouterClient, exit_code


def fetch(client: RouterClient, there: str, local: str) -> None:
    exec_id = f"router-asv-{uuid.uuid4().hex}"
    client.start(exec_id, ["sh", "-c", 'cat "$1" && rm -f "$1"', "sh", there],
                 stdout_config=pb.TASK_EXEC_STDOUT_CONFIG_PIPE, stderr_config=pb.TASK_EXEC_STDERR_CONFIG_PIPE)
    client.write_stdin(exec_id, 0, b"", eof=True)
    data = b"".join(client.read(exec_id))
    if (code := exit_code(client.wait(exec_id))) != 0:
        raise OSError(f"cannot read {there} on {client.target} (exit {code})")
    with open(local, "wb") as out:
        out.write(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.asv_proxy")
    parser.add_argument("--target", required=True)
    for name in ("tls-ca", "tls-cert", "tls-key"):
        parser.add_argument(f"--{name}", default="")
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--fetch", action="append", default=[], metavar="THERE=LOCAL")
    parser.add_argument("--end", metavar="MARKER")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    tls = {"tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key}
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    code = 0
    if command:
        flags = [f"--{name.replace('_', '-')}={path}" for name, path in tls.items() if path]
        code = router_main(["exec", f"--target={args.target}", *flags, *(f"--env={e}" for e in args.env), "-n",
                            "--", *command])
    if code != 0 or not (args.fetch or args.end):
        return code
    with RouterClient.from_env(args.target, give_up=30.0, **tls) as client:
        try:
            for pair in args.fetch:
                there, _, local = pair.partition("=")
                fetch(client, there, local)
            for info in client.execs(ec.EXEC_STATE_RUNNING) if args.end else ():
                if args.end in info.args:
                    client.kill(info.exec_id, 1.0, timeout=10.0)
        except OSError as e:
            print(f"router.asv: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
