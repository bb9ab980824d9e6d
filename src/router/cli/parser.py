"""The `router` command's parser: every subcommand, its flags and the function that runs it."""
from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any

from router import config
from router.client import UNREACHABLE_SECS
from router.engine import retention

from . import admin
from . import serve as serve_cmd
from .connection import add_connection_args
from .exec import cmd_exec


def _batch(args: argparse.Namespace) -> int:
    from .batch import cmd_batch  # only `router batch` needs it

    return cmd_batch(args)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a whole number >= 1: {text!r}")
    return value


def _halt(text: str) -> Any:
    from .batch_jobs import Halt

    try:
        return Halt.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def size(text: str) -> int:
    """A byte count: digits with an optional binary unit (K, M, G, T; B or iB may follow)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    try:
        number = int(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 4G)") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (negative)")
    return number * _SIZE_UNITS[unit]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router", description="Run commands for remote clients and stream their output.")
    sub = p.add_subparsers(dest="cmd", required=True)

    serve = sub.add_parser("serve", help="start the server")
    serve.add_argument("--listen", default=config.DEFAULT_LISTEN,
                       help="HOST:PORT (default %(default)s; port 0 picks one)")
    serve.add_argument("--state-dir", help="where keys, logs and state live (default: the user's state directory)")
    serve.add_argument("--task-id", help="the task this server serves (default: generated once per state directory)")
    serve.add_argument("--log-dir", help="where output logs live (default: STATE_DIR/logs); emptied at start")
    serve.add_argument("--kill-grace", type=float, default=0.0,
                       help="seconds between SIGTERM and SIGKILL when an exec times out (default 0: SIGKILL)")
    serve.add_argument("--server-mode", choices=("aio", "threads"), default="aio",
                       help="aio: grpc.aio, every call on one event loop thread (default); threads: a thread per call")
    serve.add_argument("--max-workers", type=int, default=13000, help="threads mode: threads for concurrent calls")
    serve.add_argument("--retain-bytes", type=size, default=0, metavar="SIZE",
                       help="finished execs' output kept in all, e.g. 2G (default: 10%% of the logs' filesystem, "
                            "at most 4G); oldest released first")
    serve.add_argument("--retain-secs", type=float, default=retention.DEFAULT_SECS, metavar="SECS",
                       help="release a finished exec this long after it exited (default %(default)s)")
    serve.add_argument("--retain-execs", type=int, default=retention.DEFAULT_EXECS, metavar="N",
                       help="finished execs kept (default %(default)s)")
    serve.add_argument("--max-exec-output", type=size, default=0, metavar="SIZE",
                       help="output a running exec keeps; past it the first segment and the latest output are "
                            "kept and the middle released (default: as much as --retain-bytes)")
    serve.add_argument("--no-journal", action="store_true",
                       help="keep no records: a restarted router starts empty (and deletes old logs)")
    serve.add_argument("--mount-method", choices=("auto", "overlay", "copy"), default="auto",
                       help="how images are mounted: overlay (needs the privilege to mount), copy, or auto "
                            "(overlay when a probe mount works; default)")
    sec = serve.add_argument_group("security (SECURITY.md)")
    sec.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (chain)")
    sec.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    sec.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA (mTLS)")
    sec.add_argument("--insecure", action="store_true",
                     help="allow plaintext on a non-loopback address (a warning is logged)")
    sec.add_argument("--jwt-alg", choices=("HS256", "RS256", "ES256", "EdDSA"), default="HS256",
                     help="token algorithm (default HS256 with STATE_DIR/jwt.key)")
    sec.add_argument("--jwt-public-key", metavar="PEM", help="verification key for RS256, ES256 or EdDSA")
    sec.add_argument("--jwt-audience", default="", help="require this `aud`")
    sec.add_argument("--jwt-issuer", default="", help="require this `iss`")
    sec.add_argument("--jwt-leeway", type=float, default=5.0, metavar="SECS",
                     help="clock skew allowed for exp, nbf and iat (default %(default)s)")
    sec.add_argument("--jwt-task-claim", default="task_id", help="the claim naming the task (default %(default)s)")
    sec.add_argument("--secrets-dir", metavar="DIR",
                     help="secret store: one ID.json or ID.toml per secret id (default STATE_DIR/secrets)")
    sec.add_argument("--exec-user", default="", metavar="USER[:GROUP]",
                     help="run every exec as this user (its groups and HOME); the router keeps its own identity")
    lim = serve.add_argument_group("limits (README, \"Limits\")")
    lim.add_argument("--max-arg-bytes", type=size, default=config.MiB, metavar="SIZE",
                     help="command_args bytes per exec (default 1M)")
    lim.add_argument("--max-env-bytes", type=size, default=config.MiB, metavar="SIZE",
                     help="bytes of an exec's environment (default 1M)")
    lim.add_argument("--max-message-size", type=size, default=128 * config.MiB, metavar="SIZE",
                     help="largest request message (default 128M; Modal's client sends 16 MiB stdin writes)")
    lim.add_argument("--max-streams-per-connection", type=int, default=65_536, metavar="N",
                     help="concurrent HTTP/2 streams per connection (default %(default)s)")
    lim.add_argument("--max-calls-per-token", type=int, default=65_536, metavar="N",
                     help="calls in flight per token; past it RESOURCE_EXHAUSTED with a retry delay "
                     "(default %(default)s)")
    serve.set_defaults(func=serve_cmd.cmd_serve)

    images = sub.add_parser("images", help="list, remove and garbage-collect the state directory's images")
    images.add_argument("--state-dir")
    images_sub = images.add_subparsers(dest="images_cmd", required=True)
    images_sub.add_parser("ls", help="list images, oldest first")
    rm = images_sub.add_parser("rm", help="remove images (not while mounted)")
    rm.add_argument("ids", nargs="+", metavar="ID")
    images_sub.add_parser("gc", help="remove expired images and content no image references")
    images.set_defaults(func=admin.cmd_images)

    sec_cmd = sub.add_parser("secrets", help="the secret store: set, remove and list secrets (names only)")
    sec_cmd.add_argument("--state-dir")
    sec_cmd.add_argument("--secrets-dir", help="default: STATE_DIR/secrets")
    secrets_sub = sec_cmd.add_subparsers(dest="secrets_cmd", required=True)
    set_ = secrets_sub.add_parser("set", help="set variables of a secret (NAME alone reads the value from stdin)")
    set_.add_argument("id")
    set_.add_argument("items", nargs="+", metavar="NAME=VALUE|NAME")
    rm_ = secrets_sub.add_parser("rm", help="remove a secret")
    rm_.add_argument("id")
    secrets_sub.add_parser("ls", help="list secret ids and their variable names")
    sec_cmd.set_defaults(func=admin.cmd_secrets)

    token = sub.add_parser("token", help="print a bearer token for the task")
    token.add_argument("--state-dir")
    token.add_argument("--task-id")
    token.add_argument("--ttl", type=int, default=config.DEFAULT_TOKEN_TTL_SECS, help="lifetime in seconds")
    token.set_defaults(func=admin.cmd_token)

    ex = sub.add_parser("exec", help="run a command on a server and stream its output")
    add_connection_args(ex)
    ex.add_argument("--workdir")
    ex.add_argument("--timeout", type=int, help="kill the command after this many seconds")
    ex.add_argument("--env", action="append", metavar="KEY=VALUE")
    ex.add_argument("-n", "--no-stdin", action="store_true", help="do not forward standard input")
    ex.add_argument("-t", "--tty", action="count", default=0,
                    help="run the command on a terminal, as ssh -t does: the local terminal in raw mode while it "
                         "runs (restored after), its size and changes forwarded; stdout and stderr arrive as one "
                         "stream. Without a terminal on stdin, a warning and no terminal; -tt: a terminal anyway")
    ex.add_argument("--give-up", type=float, default=UNREACHABLE_SECS, metavar="SECS",
                    help="exit 255 once the router has not answered for this long (default %(default)s)")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)

    ls = sub.add_parser("ls", help="list execs")
    add_connection_args(ls)
    ls.add_argument("--state", choices=sorted(admin.STATES), default="any")
    ls.set_defaults(func=admin.cmd_ls)
    inspect = sub.add_parser("inspect", help="an exec in full (JSON): command, times, bytes, exit and its cause, usage")
    add_connection_args(inspect)
    inspect.add_argument("id")
    inspect.set_defaults(func=admin.cmd_inspect)
    kill = sub.add_parser("kill", help="end an exec's whole process group (TERM, grace, KILL), or send one signal")
    add_connection_args(kill)
    kill.add_argument("id")
    kill.add_argument("-s", "--signal", help="send this signal (name or number) to the group instead")
    kill.add_argument("--grace", type=float, default=0.0, help="seconds between TERM and KILL (default 0: KILL)")
    kill.set_defaults(func=admin.cmd_kill)
    logs = sub.add_parser("logs", help="an exec's output")
    add_connection_args(logs)
    logs.add_argument("id")
    logs.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    logs.add_argument("--from", dest="offset", type=int, default=0, metavar="OFFSET", help="start at this byte")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing output as it comes, until the end")
    logs.set_defaults(func=admin.cmd_logs)

    bat = sub.add_parser("batch", help="run each line of FILE as `sh -c LINE`, N at once, GNU parallel style",
                         description="Run each line of FILE (or stdin) with `sh -c` on the servers, N at once. "
                         "Exit status: 0 if every job succeeded, else the number of failed jobs (at most 101; "
                         "with --halt ...,fail=1 the failed job's status); 255 if a server failed; 2 for bad usage.")
    add_connection_args(bat, many=True)
    bat.add_argument("-j", "--jobs", type=_positive, default=os.cpu_count() or 1, metavar="N",
                     help="jobs at once over all targets (default: this machine's CPUs, %(default)s)")
    bat.add_argument("--joblog", type=pathlib.Path, metavar="FILE", help="GNU parallel's joblog (tab separated)")
    bat.add_argument("--resume", action="store_true", help="skip the jobs already in --joblog, and append to it")
    bat.add_argument("--results", type=pathlib.Path, metavar="DIR",
                     help="write DIR/SEQ/stdout, stderr and exit instead of printing the output")
    bat.add_argument("--timeout", type=_positive, default=0, metavar="S", help="kill a job after S seconds")
    bat.add_argument("--retries", type=_positive, default=1, metavar="N",
                     help="attempts per job in all, as parallel's --retries (default 1)")
    bat.add_argument("--halt", type=_halt, metavar="now,fail=N|soon,fail=N",
                     help="after N failed jobs: kill the running ones (now) or wait for them (soon); start no more")
    bat.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECS",
                     help="give up on a server not reached within this long (default %(default)s)")
    bat.add_argument("file", nargs="?", default="-", metavar="FILE", help="one command line per line (default: stdin)")
    bat.set_defaults(func=_batch)
    return p
