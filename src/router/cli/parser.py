"""The `router` command's parser: every subcommand, its flags and the function that runs it."""
from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Callable
from importlib import import_module
from typing import Any, NoReturn

from router import config
from router.engine import retention
from router.server.drain import DEFAULT_DRAIN_SECS

from .argtypes import EXEC_STATES, halt, listen, message_size, positive, seconds, signal_number, size, whole
from .connection import add_connection_args

DEFAULT_IMAGE_CACHE_BYTES = 10 << 30  # images/opening.py's; not imported: a CLI start pays for what it uses
DEFAULT_GC_GRACE_SECS = 3600.0
# `router batch --target-timeout`: as --give-up's, under which a router's calls fail anyway; a
# handover or a restart on the same state directory is back well within it.
DEFAULT_TARGET_TIMEOUT = 30.0


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command's function, imported when it runs: each command pays only for its own imports
    (`serve` brings the engine and handover, ~50 modules; a CLI start is on the clock of `router
    batch` and `router exec`)."""

    def run(args: argparse.Namespace) -> int:
        return int(getattr(import_module(f"{__package__}.{module}"), name)(args))

    return run


class Parser(argparse.ArgumentParser):
    """argparse with the exit status of a usage error chosen per command: 2, or 255 for `exec` and
    `batch`, whose other statuses belong to the commands they run (as ssh's and GNU parallel's)."""

    def __init__(self, *args: Any, usage_status: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_status = usage_status
        self.commands: dict[str, Parser] = {}  # the top level's: each subcommand's parser

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse's, but an unknown flag is the subcommand's usage error (with its status), not the top's."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.commands.get(getattr(parsed, "cmd", ""), self).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        """One line: what is wrong, and where to read how it is used."""
        self.exit(self.usage_status, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _image_store_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, after_subcommand: bool = False) -> None:
    """Where images live: the same flags for `serve` and `images` (README, "Images in object storage");
    after a subcommand too, where they must not overwrite what was said before it."""
    def default(value: object) -> object:
        return argparse.SUPPRESS if after_subcommand else value

    p.add_argument("--image-store", metavar="s3://BUCKET[/PREFIX]", default=default(""),
                   help="keep images in this S3-compatible bucket (credentials from the AWS chain: environment, "
                        "shared config files, instance role); default: the state directory")
    p.add_argument("--s3-endpoint", metavar="URL", default=default(""), help="the S3 server (default: AWS, by region)")
    p.add_argument("--s3-region", metavar="REGION", default=default(""),
                   help="the bucket's region (default: the AWS chain's)")
    p.add_argument("--image-cache-bytes", type=size, metavar="SIZE", default=default(DEFAULT_IMAGE_CACHE_BYTES),
                   help="with --image-store: the local cache of the bucket's blobs, least recently used "
                        "evicted first, never a mounted image's (default 10G)")


def parser() -> Parser:
    from router import __version__

    p = Parser(prog="router", description="Run commands for remote clients and stream their output.")
    p.add_argument("--version", action="version", version=f"router (task-command-router) {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=Parser)

    serve = sub.add_parser("serve", help="start the server")
    serve.add_argument("--listen", type=listen, default=config.DEFAULT_LISTEN,
                       help="HOST:PORT (default %(default)s; port 0 picks one)")
    serve.add_argument("--metrics-listen", type=listen, metavar="HOST:PORT",
                       help="serve Prometheus metrics at /metrics here, no token asked (default: none; port 0 "
                            "picks one); a non-loopback address needs TLS or --insecure, as --listen does")
    serve.add_argument("--health-listen", type=listen, metavar="HOST:PORT",
                       help="serve the gRPC health service alone here, always plaintext, no token asked: for "
                            "Kubernetes' gRPC probes, which speak no TLS (default: none; health is on --listen too)")
    serve.add_argument("--state-dir", help="where keys, logs and state live (default: the user's state directory)")
    serve.add_argument("--task-id", help="the task this server serves (default: generated once per state directory)")
    serve.add_argument("--log-dir", help="where output logs live (default: STATE_DIR/logs); shared with nothing "
                       "else's arena-* files")
    serve.add_argument("--kill-grace", type=seconds(), default=0.0,
                       help="seconds between SIGTERM and SIGKILL when an exec times out (default 0: SIGKILL)")
    serve.add_argument("--drain-secs", type=seconds(), default=DEFAULT_DRAIN_SECS, metavar="SECS",
                       help="on SIGTERM or SIGINT, refuse new execs and wait up to SECS for the running ones to end "
                       f"before ending them; a second signal stops at once (default {DEFAULT_DRAIN_SECS:g}, under "
                       "Kubernetes' 30 s grace period; 0: no drain)")
    serve.add_argument("--server-mode", choices=("aio", "threads"), default="aio",
                       help="aio: grpc.aio, every call on one event loop thread (default); threads: a thread per call")
    serve.add_argument("--max-workers", type=positive, default=None, metavar="N",
                       help="threads mode only: threads for concurrent calls (default 13000)")
    serve.add_argument("--retain-bytes", type=size, default=0, metavar="SIZE",
                       help="finished execs' output kept in all, e.g. 2G (default: 10%% of the logs' filesystem, "
                            "at most 4G); oldest released first")
    serve.add_argument("--retain-secs", type=seconds(above=True), default=retention.DEFAULT_SECS, metavar="SECS",
                       help="release a finished exec this long after it exited (default %(default)s)")
    serve.add_argument("--retain-execs", type=positive, default=retention.DEFAULT_EXECS, metavar="N",
                       help="finished execs kept (default %(default)s)")
    serve.add_argument("--max-exec-output", type=size, default=0, metavar="SIZE",
                       help="output a running exec keeps; past it the first segment and the latest output are "
                            "kept and the middle released (default: as much as --retain-bytes)")
    serve.add_argument("--on-log-full", choices=("trim", "block"), default="trim",
                       help="when running execs fill the log filesystem (finished ones released already): trim "
                            "the one holding the most output to its head and tail (default), or block: stop "
                            "draining the largest writer until there is room; small outputs always find room")
    serve.add_argument("--takeover", action="store_true",
                       help="have the router serving STATE_DIR hand its running execs to a new serving process "
                            "from the code installed now (as SIGUSR2 to it does), then exit")
    serve.add_argument("--durability", choices=("process", "machine"), default="process",
                       help="answers wait for the journal's records: written, so they survive the router's death "
                            "(process, default), or also synced to disk, so they survive a power cut (machine)")
    serve.add_argument("--sched-batch", action="store_true",
                       help="run the router's own threads under SCHED_BATCH (its execs keep the policy it started "
                            "with): 12-19%% less CPU per exec through Modal's calls at high fan-out, but while its "
                            "execs keep every CPU busy each of its answers may wait for a scheduler tick "
                            "(benchmarks/RESULTS.md)")
    serve.add_argument("--no-journal", action="store_true",
                       help="keep no records: a restarted router starts empty (and deletes old logs)")
    serve.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="the server's own log lines on stderr (not exec output): text (default), or json: one "
                            "object per line with time, level, event and the event's fields (README, \"Logs\")")
    serve.add_argument("--mount-method", choices=("auto", "overlay", "copy"), default="auto",
                       help="how images are mounted: overlay (needs the privilege to mount), copy, or auto "
                            "(overlay when a probe mount works; default)")
    _image_store_flags(serve.add_argument_group("images in object storage"))
    sec = serve.add_argument_group("security (SECURITY.md)")
    sec.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (chain)")
    sec.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    sec.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA (mTLS)")
    sec.add_argument("--insecure", action="store_true",
                     help="allow plaintext on a non-loopback address (a warning is logged)")
    sec.add_argument("--jwt-alg", choices=("HS256", "RS256", "ES256", "EdDSA"), default="HS256",
                     help="token algorithm (default HS256 with STATE_DIR/jwt.key or --jwt-key-file)")
    sec.add_argument("--jwt-key-file", metavar="FILE",
                     help="read the HS256 key from FILE (a mounted secret; at least 32 bytes, one trailing newline "
                          "ignored) instead of STATE_DIR/jwt.key; `router token --jwt-key-file FILE` mints for it")
    sec.add_argument("--jwt-public-key", metavar="PEM", help="verification key for RS256, ES256 or EdDSA")
    sec.add_argument("--jwt-audience", default="", help="require this `aud`")
    sec.add_argument("--jwt-issuer", default="", help="require this `iss`")
    sec.add_argument("--jwt-leeway", type=seconds(), default=5.0, metavar="SECS",
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
    lim.add_argument("--max-message-size", type=message_size, default=128 * config.MiB, metavar="SIZE",
                     help="largest request message (default 128M; Modal's client sends 16 MiB stdin writes)")
    lim.add_argument("--max-streams-per-connection", type=whole(1, 2**31 - 1), default=65_536, metavar="N",
                     help="concurrent HTTP/2 streams per connection (default %(default)s)")
    lim.add_argument("--max-calls-per-token", type=positive, default=65_536, metavar="N",
                     help="calls in flight per token; past it RESOURCE_EXHAUSTED with a retry delay "
                     "(default %(default)s)")
    serve.set_defaults(func=_command("serve", "cmd_serve"))

    images = sub.add_parser("images", help="list, remove and garbage-collect the state directory's (or a "
                                           "bucket's) images")
    images.add_argument("--state-dir", help="default: the user's state directory")
    _image_store_flags(images)
    images_sub = images.add_subparsers(dest="images_cmd", required=True, metavar="ls|rm|gc", parser_class=Parser,
                                       help="what to do")
    state_dir = Parser(add_help=False)  # --state-dir after the subcommand too
    state_dir.add_argument("--state-dir", default=argparse.SUPPRESS, help="default: the user's state directory")
    _image_store_flags(state_dir, after_subcommand=True)
    images_sub.add_parser("ls", help="list images, oldest first", parents=[state_dir])
    rm = images_sub.add_parser("rm", help="remove images (not while mounted)", parents=[state_dir])
    rm.add_argument("ids", nargs="+", metavar="ID", help="image ids (im-...)")
    gc = images_sub.add_parser("gc", help="remove expired images and content no image references", parents=[state_dir])
    gc.add_argument("--grace", type=seconds(), default=DEFAULT_GC_GRACE_SECS, metavar="SECS",
                    help="in a bucket, keep unreferenced content younger than this (default %(default)s; "
                         "snapshots in progress keep what they use through their claims, whatever it is)")
    images.set_defaults(func=_command("admin", "cmd_images"))

    sec_cmd = sub.add_parser("secrets", help="the secret store: set, remove and list secrets (names only)")
    sec_cmd.add_argument("--state-dir", help="default: the user's state directory")
    sec_cmd.add_argument("--secrets-dir", help="default: STATE_DIR/secrets")
    secrets_sub = sec_cmd.add_subparsers(dest="secrets_cmd", required=True, metavar="set|rm|ls", parser_class=Parser,
                                         help="what to do")
    dirs = Parser(add_help=False)  # the directory flags after the subcommand too
    dirs.add_argument("--state-dir", default=argparse.SUPPRESS, help="default: the user's state directory")
    dirs.add_argument("--secrets-dir", default=argparse.SUPPRESS, help="default: STATE_DIR/secrets")
    set_ = secrets_sub.add_parser("set", parents=[dirs],
                                  help="set variables of a secret (NAME alone: the value is read from stdin, "
                                       "after a prompt and without echo on a terminal)")
    set_.add_argument("id", help="the secret's id, as execs name it (secret_ids, router exec --secret)")
    set_.add_argument("items", nargs="+", metavar="NAME=VALUE|NAME", help="its variables")
    set_.add_argument("--allow-empty", action="store_true", help="accept an empty value")
    rm_ = secrets_sub.add_parser("rm", help="remove a secret", parents=[dirs])
    rm_.add_argument("id", help="the secret's id")
    secrets_sub.add_parser("ls", help="list secret ids and their variable names", parents=[dirs])
    sec_cmd.set_defaults(func=_command("admin", "cmd_secrets"))

    token = sub.add_parser("token", help="print a bearer token for the task")
    token.add_argument("--state-dir", help="default: the user's state directory")
    token.add_argument("--task-id", help="default: the state directory's task")
    token.add_argument("--ttl", type=positive, default=config.DEFAULT_TOKEN_TTL_SECS, metavar="SECS",
                       help="lifetime in seconds (default %(default)s)")
    token.add_argument("--jwt-key-file", metavar="FILE",
                       help="sign with the HS256 key in FILE, as routers started with --jwt-key-file FILE verify "
                            "(needs --task-id; the state directory is not used)")
    token.add_argument("--init", action="store_true",
                       help="make the state directory's key (and task) if it has none; without it such a "
                            "directory is refused")
    token.set_defaults(func=_command("admin", "cmd_token"))

    ex = sub.add_parser("exec", help="run a command on a server and stream its output", usage_status=255)
    add_connection_args(ex)
    ex.add_argument("--workdir", help="the command's working directory on the server")
    ex.add_argument("--timeout", type=whole(1, 2**31 - 1), metavar="SECS",
                    help="kill the command after this many seconds (exit 137, with a line on stderr)")
    ex.add_argument("--env", action="append", metavar="KEY=VALUE|KEY",
                    help="set a variable; KEY alone passes this shell's value on (nothing if it is unset)")
    ex.add_argument("--secret", action="append", metavar="ID",
                    help="add the variables of this stored secret (router secrets); repeatable, later wins")
    ex.add_argument("-n", "--no-stdin", action="store_true", help="do not forward standard input")
    ex.add_argument("-t", "--tty", action="count", default=0,
                    help="run the command on a terminal, as ssh -t does: the local terminal in raw mode while it "
                         "runs (restored after), its size and changes forwarded; stdout and stderr arrive as one "
                         "stream. Without a terminal on stdin, a warning and no terminal; -tt: a terminal anyway")
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    ex.set_defaults(func=_command("exec", "cmd_exec"))

    status = sub.add_parser("status", help="the server's state: version, uptime, addresses, execs, free space, "
                            "mounts, certificate expiry")
    add_connection_args(status)
    status.add_argument("--json", action="store_true", help="as JSON, for machines (bytes and seconds as numbers)")
    status.set_defaults(func=_command("status", "cmd_status"))
    ls = sub.add_parser("ls", help="list execs")
    add_connection_args(ls)
    ls.add_argument("--state", choices=EXEC_STATES, default="any", help="which execs (default %(default)s)")
    ls.set_defaults(func=_command("admin", "cmd_ls"))
    inspect = sub.add_parser("inspect", help="an exec in full (JSON): command, times, bytes, exit and its cause, usage")
    add_connection_args(inspect)
    inspect.add_argument("id", help="the exec's id")
    inspect.set_defaults(func=_command("admin", "cmd_inspect"))
    kill = sub.add_parser("kill", help="end an exec's whole process group (TERM, grace, KILL), or send one signal")
    add_connection_args(kill)
    kill.add_argument("id", help="the exec's id")
    kill.add_argument("-s", "--signal", type=signal_number,
                      help="send this signal (name or number) to the group instead")
    kill.add_argument("--grace", type=seconds(), default=10.0,
                      help="seconds between TERM and KILL (default %(default)s, as docker stop; 0: KILL at once)")
    kill.set_defaults(func=_command("admin", "cmd_kill"))
    logs = sub.add_parser("logs", help="an exec's output")
    add_connection_args(logs)
    logs.add_argument("id", help="the exec's id")
    logs.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    logs.add_argument("--from", dest="offset", type=whole(0), default=0, metavar="OFFSET", help="start at this byte")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing output as it comes, until the end")
    logs.set_defaults(func=_command("admin", "cmd_logs"))

    bat = sub.add_parser("batch", help="run each line of FILE as `sh -c LINE`, N at once, GNU parallel style",
                         usage_status=255,
                         description="Run each line of FILE (or stdin) with `sh -c` on the servers, N at once. "
                         "Exit status: 0 if every job succeeded, else the number of failed jobs (at most 101; "
                         "with --halt ...,fail=1 the failed job's status); 255 if no server answered for "
                         "--target-timeout, or for bad usage. A job whose server was lost runs again on another "
                         "(at-least-once).")
    add_connection_args(bat, many=True)
    bat.add_argument("-j", "--jobs", type=positive, default=os.cpu_count() or 1, metavar="N",
                     help="jobs at once over all targets (default: this machine's CPUs, %(default)s)")
    bat.add_argument("--joblog", type=pathlib.Path, metavar="FILE", help="GNU parallel's joblog (tab separated)")
    bat.add_argument("--resume", action="store_true", help="skip the jobs already in --joblog, and append to it")
    bat.add_argument("--results", type=pathlib.Path, metavar="DIR",
                     help="write DIR/SEQ/stdout, stderr and exit instead of printing the output")
    bat.add_argument("--timeout", type=positive, default=0, metavar="S", help="kill a job after S seconds")
    bat.add_argument("--retries", type=positive, default=1, metavar="N",
                     help="attempts per job in all, as parallel's --retries (default 1)")
    bat.add_argument("--halt", type=halt, metavar="now,fail=N|soon,fail=N",
                     help="after N failed jobs: kill the running ones (now) or wait for them (soon); start no more")
    bat.add_argument("--connect-timeout", type=seconds(above=True), default=10.0, metavar="SECS",
                     help="fail if no server is reached within this long at the start (default %(default)s)")
    bat.add_argument("--targets-file", action="append", metavar="FILE",
                     help="more targets, one HOST:PORT (or dns:NAME:PORT) a line, read again when it changes: "
                          "an added one gets jobs, a removed one no new ones")
    bat.add_argument("--target-timeout", type=seconds(above=True), default=None, metavar="SECS",
                     help="a server that has not answered for this long is set aside and its jobs run again "
                          f"elsewhere; when none has, the run fails with 255 (default {DEFAULT_TARGET_TIMEOUT:g}, "
                          "or --give-up if shorter)")
    bat.add_argument("file", nargs="?", default="-", metavar="FILE", help="one command line per line (default: stdin)")
    bat.set_defaults(func=_command("batch", "cmd_batch"))
    p.commands = dict(sub.choices)
    return p
