"""The `router` command: serve, token, exec, batch, ls, inspect, kill, logs, images, secrets."""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import logging
import os
import pathlib
import signal
import sys
import termios
import threading
import time
import tty
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from router import config
from router.engine import procs
from router.engine import retention
from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb
from router.client import STDERR, STDOUT, TOKEN_ENV, UNREACHABLE_SECS, RouterClient, exit_code
from router.tls import TlsFiles


def _path(value: str | None) -> str:
    return str(pathlib.Path(value).expanduser().resolve()) if value else ""


def cmd_serve(args: argparse.Namespace) -> int:
    from router.auth import load_or_create_key
    from router.server.grpc_server import RouterServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state_dir = config.ensure_state_dir(config.state_dir_from(args.state_dir))
    task_id = args.task_id or config.load_or_create_task_id(state_dir)
    log_dir = str(pathlib.Path(args.log_dir).expanduser().resolve()) if args.log_dir else ""
    cfg = config.ServerConfig(state_dir=str(state_dir), task_id=task_id, listen=args.listen, log_dir=log_dir,
                              kill_grace_secs=args.kill_grace, server_mode=args.server_mode,
                              reap_orphans=procs.inherits_orphans(),
                              max_workers=args.max_workers, retain_bytes=args.retain_bytes,
                              retain_secs=args.retain_secs, retain_execs=args.retain_execs,
                              max_exec_output=args.max_exec_output, journal=not args.no_journal,
                              mount_method=args.mount_method,
                              tokens=config.TokenPolicy(algorithm=args.jwt_alg, public_key=_path(args.jwt_public_key),
                                                        audience=args.jwt_audience, issuer=args.jwt_issuer,
                                                        leeway_secs=args.jwt_leeway, task_claim=args.jwt_task_claim),
                              tls=TlsFiles(cert=_path(args.tls_cert), key=_path(args.tls_key),
                                           client_ca=_path(args.tls_client_ca)),
                              insecure=args.insecure, secrets_dir=_path(args.secrets_dir), exec_user=args.exec_user,
                              max_arg_bytes=args.max_arg_bytes, max_env_bytes=args.max_env_bytes,
                              max_receive_message_size=args.max_message_size,
                              max_streams_per_connection=args.max_streams_per_connection,
                              max_calls_per_token=args.max_calls_per_token)
    try:
        server = RouterServer(cfg, load_or_create_key(state_dir))
    except ValueError as e:
        print(f"router serve: {e}", file=sys.stderr)
        return 2
    # Every exec allocates dozens of objects kept as long as the exec is: at the default threshold
    # (700 allocations) the collector ran ~90 times per 1,000 execs of `true`, ~10% of the server's
    # CPU (benchmarks/RESULTS.md, issue 10).
    gc.set_threshold(GC_THRESHOLD)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if server.tls is not None:
        tls = server.tls
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=tls.reload, daemon=True).start())
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    listen = f"{host}:{server.port}"
    config.write_server_info(state_dir, config.ServerInfo(listen=listen, task_id=task_id, pid=os.getpid(),
                                                          tls=cfg.tls.enabled))
    print(f"router listening on {listen}", flush=True)
    print(f"task id: {task_id}", flush=True)
    print(f"state directory: {state_dir}", flush=True)
    if cfg.reap_orphans:
        print("reaping orphaned processes (this router is their init)", flush=True)
    print(f"get a token with: router token --state-dir {state_dir}", flush=True)
    try:
        stop.wait()
    finally:
        print("router shutting down", flush=True)
        server.stop()
        config.remove_server_info(state_dir)
    return 0


def _when(t: float | None) -> str:
    return "never" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_images(args: argparse.Namespace) -> int:
    from router.errors import RouterError
    from router.images.store import Images

    images = Images(config.state_dir_from(args.state_dir), method="copy")  # no probe mount: nothing is mounted here
    if args.images_cmd == "ls":
        mounted = images.mounted_images()
        rows = [("ID", "CREATED", "EXPIRES", "ENTRIES", "BYTES", "ENCRYPTED", "MOUNTED", "SOURCE")]
        for r in images.records():
            rows.append((r.id, _when(r.created), _when(r.expires), str(r.entries), str(r.content_bytes),
                         "yes" if r.encrypted else "no", "yes" if r.id in mounted else "no",
                         os.fsdecode(r.source)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        return 0
    if args.images_cmd == "rm":
        failed = 0
        for image_id in args.ids:
            try:
                images.remove(image_id)
            except RouterError as e:
                print(f"router images rm: {e.message}", file=sys.stderr)
                failed += 1
            else:
                print(image_id)
        return 1 if failed else 0
    done = images.gc()
    print(f"removed {done.images} expired images and {done.blobs} unreferenced blobs ({done.bytes} bytes)")
    return 0


def cmd_secrets(args: argparse.Namespace) -> int:
    from router.secretstore import SecretError, SecretStore

    directory = pathlib.Path(_path(args.secrets_dir)) if args.secrets_dir else config.state_dir_from(args.state_dir) / "secrets"
    store = SecretStore(directory)
    try:
        if args.secrets_cmd == "ls":
            for secret_id in store.ids():
                print(f"{secret_id}\t{' '.join(sorted(store.get(secret_id)))}")  # names, never values
        elif args.secrets_cmd == "rm":
            store.remove(args.id)
        else:
            values = {}
            for item in args.items:
                name, eq, value = item.partition("=")
                if not eq:  # NAME alone: the value comes from stdin, so it is not on any command line
                    value = sys.stdin.readline().rstrip("\n")
                values[name] = value
            print(store.set(args.id, values))
    except SecretError as e:
        print(f"router secrets: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError:
        print(f"router secrets: secret {getattr(args, 'id', '')!r} not found", file=sys.stderr)
        return 1
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    state_dir = config.ensure_state_dir(config.state_dir_from(args.state_dir))
    task_id = args.task_id or config.load_or_create_task_id(state_dir)
    print(f"token for task {task_id}, valid {args.ttl} s:", file=sys.stderr)
    from router.auth import load_or_create_key, mint_token  # jwt and cryptography: ~0.1 s, not for every command

    print(mint_token(load_or_create_key(state_dir), task_id, args.ttl))
    return 0


def _connect(args: argparse.Namespace, retries: int = 10, target: str | None = None) -> RouterClient:
    """A client from the connection flags (_add_connection_args), the environment and the local state;
    `target` in place of --target (batch has several)."""
    chosen = target if target is not None else (args.target if isinstance(args.target, str) else None)
    return RouterClient.from_env(chosen, args.token, task_id=args.task_id, state_dir=args.state_dir,
                                 tls_ca=args.tls_ca or "", tls_cert=args.tls_cert or "", tls_key=args.tls_key or "",
                                 server_name=args.tls_server_name, retries=retries)


def _add_connection_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    """`many`: --target may be given several times (batch)."""
    p.add_argument("--target", action="append" if many else "store",
                   help="HOST:PORT of the server (default: the local server, else 127.0.0.1:50051)"
                   + ("; repeat it to spread the jobs over several servers" if many else ""))
    p.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV}, else minted from the local state directory)")
    p.add_argument("--task-id", help="default: the token's task")
    p.add_argument("--state-dir")
    p.add_argument("--tls-ca", metavar="PEM", help="trust this CA for the server's certificate (else the system's)")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate, for a server that requires one (mTLS)")
    p.add_argument("--tls-key", metavar="PEM", help="the client certificate's key")
    p.add_argument("--tls-server-name", default="", help="the name to expect in the server's certificate")


GC_THRESHOLD = 10_000  # allocations between young-generation collections in `router serve`
_STATES = {"running": ec.EXEC_STATE_RUNNING, "exited": ec.EXEC_STATE_EXITED, "any": ec.EXEC_STATE_ANY}


def _exit_text(info: ec.ExecInfo) -> str:
    if info.running:
        return "running"
    status = f"signal {info.exit.signal}" if info.exit.HasField("signal") else f"exit {info.exit.code}"
    return f"{status} ({ec.ExitCause.Name(info.exit.cause).removeprefix('EXIT_CAUSE_').lower().replace('_', ' ')})"


def cmd_ls(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        rows = [("ID", "STARTED", "STATUS", "COMMAND")]
        for info in client.execs(_STATES[args.state]):
            rows.append((info.exec_id, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.started_at)),
                         _exit_text(info), " ".join(info.args)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with _connect(args) as client:
        info = client.inspect(args.id)
    print(json_format.MessageToJson(info, always_print_fields_with_no_presence=True, preserving_proto_field_name=True))
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        if args.signal:
            sig = int(args.signal) if args.signal.isdigit() else int(getattr(signal, "SIG" + args.signal.upper().removeprefix("SIG")))
            client.signal(args.id, sig)
            return 0
        done = client.kill(args.id, args.grace)
    print(f"{args.id}: " + (f"signal {done.signal}" if done.HasField("signal") else f"exit {done.code}"))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        fd = STDERR if args.stderr else STDOUT
        end = None
        if not args.follow:  # what is there now, not what comes later
            info = client.inspect(args.id)
            end = info.stderr_bytes if args.stderr else info.stdout_bytes
        offset = args.offset
        for data in client.read(args.id, fd, offset):
            if end is not None and offset + len(data) >= end:
                data = data[:max(0, end - offset)]
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
            offset += len(data)
            if end is not None and offset >= end:
                break
    return 0


def _copy_output(client: RouterClient, exec_id: str, fd: pb.TaskExecStdioFileDescriptor, out: int) -> None:
    for data in client.read(exec_id, fd):
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]


def _forward_stdin(client: RouterClient, exec_id: str) -> None:
    offset = 0
    while True:
        data = os.read(0, 1024 * 1024)
        client.write_stdin(exec_id, offset, data, eof=not data)
        if not data:
            return
        offset += len(data)


def _in_background(fn: Callable[..., None], *args: Any) -> tuple[threading.Thread, list[Exception]]:
    """Run fn(*args) in a daemon thread; a failed call lands in the returned list, not a traceback
    (ValueError: the channel was closed under it, as when the main thread gives up and leaves)."""
    errors: list[Exception] = []

    def run() -> None:
        try:
            fn(*args)
        except (grpc.RpcError, ValueError) as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _exec_io(client: RouterClient, exec_id: str, streams: Sequence[tuple[pb.TaskExecStdioFileDescriptor, int]],
             no_stdin: bool, give_up: float) -> int:
    """Copy the exec's `streams` (fd, local fd) out and stdin in; once it has ended and its output is
    all out, its exit code."""
    outputs = [_in_background(_copy_output, client, exec_id, fd, out) for fd, out in streams]
    errors: list[Exception] = []
    if no_stdin:
        client.write_stdin(exec_id, 0, b"", eof=True)
    else:
        errors = _in_background(_forward_stdin, client, exec_id)[1]
    code = exit_code(client.wait(exec_id, unreachable_secs=give_up))
    for thread, output_errors in outputs:
        thread.join()
        errors += output_errors
    if errors:
        raise errors[0]
    return 1 if code is None else code


def _window_size() -> tuple[int, int]:
    """The local terminal's (rows, cols), stdin's else stdout's; (0, 0), the router's 24x80, without one."""
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.lines, size.columns
    return 0, 0


def _noted(signum: int, frame: object) -> None:
    """A signal _on_terminal handles: the wakeup descriptor brings it there."""


def _on_terminal(client: RouterClient, exec_id: str, raw: bool, io: Callable[[], int]) -> int:
    """Run `io` (the exec's output, input and wait) in a thread while this one keeps the local
    terminal: with `raw`, stdin's terminal in raw mode, so that every key reaches the remote terminal
    as a byte (Ctrl-C and Ctrl-D too); window changes forwarded; SIGTERM, SIGHUP or SIGINT hang up
    the remote terminal, as a closed ssh connection does, and give 128+N. The local terminal is put
    back in every case."""
    # Signals come here as bytes on a pipe, never as an exception in the middle of putting things back.
    r, w = os.pipe()
    os.set_blocking(w, False)
    saved_wakeup = signal.set_wakeup_fd(w)  # first: no signal may come to _noted and not to the pipe
    caught = (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    saved_handlers = {sig: signal.signal(sig, _noted) for sig in caught}
    saved_mode = termios.tcgetattr(0) if raw else None
    outcome: list[int] = []

    def work() -> None:
        try:
            outcome.append(io())
        finally:
            os.write(w, b"\0")  # no signal has number 0

    signalled = 0
    try:
        # Raw before the first remote byte is written out: a cooked terminal would turn its \r\n into \r\r\n.
        if saved_mode is not None:
            tty.setraw(0, termios.TCSADRAIN)
        worker, errors = _in_background(work)
        finished = False
        while not finished and not signalled:
            for signum in os.read(r, 64):
                if signum == 0:
                    finished = True
                elif signum == signal.SIGWINCH:
                    # A resize that fails (the exec just ended, the router is away) is no reason to stop.
                    with contextlib.suppress(grpc.RpcError):
                        client.resize(exec_id, *_window_size())
                else:
                    signalled = signum
    finally:
        if saved_mode is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved_mode)
        signal.set_wakeup_fd(saved_wakeup)
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)
    if signalled:
        with contextlib.suppress(grpc.RpcError):
            client.signal(exec_id, signal.SIGHUP, ec.SIGNAL_TARGET_SESSION)
    worker.join(5 if signalled else None)  # a hung-up exec ends at once
    if not worker.is_alive():  # else it may still write to w
        os.close(r)
        os.close(w)
    if signalled:
        return 128 + signalled
    if errors:
        raise errors[0]
    return outcome[0]


def cmd_exec(args: argparse.Namespace) -> int:
    if not args.command:
        print("router exec: no command given (router exec -- CMD ARGS...)", file=sys.stderr)
        return 2
    exec_id = f"ex-{uuid.uuid4().hex}"
    fields: dict[str, Any] = {"stdout_config": pb.TASK_EXEC_STDOUT_CONFIG_PIPE,
                              "stderr_config": pb.TASK_EXEC_STDERR_CONFIG_PIPE}
    if args.workdir:
        fields["workdir"] = args.workdir
    if args.timeout:
        fields["timeout_secs"] = args.timeout
    if args.env:
        fields["env"] = dict(item.split("=", 1) for item in args.env)
    # As ssh: -t gives a terminal when stdin is one, -tt always.
    terminal = args.tty >= 2 or (args.tty == 1 and os.isatty(0))
    if args.tty == 1 and not terminal:
        print("Pseudo-terminal will not be allocated because stdin is not a terminal.", file=sys.stderr)
    if terminal:
        rows, cols = _window_size()
        from router._proto import api_pb2

        fields["pty_info"] = api_pb2.PTYInfo(enabled=True, winsz_rows=rows, winsz_cols=cols,
                                             env_term=os.environ.get("TERM", ""))
    # A terminal's stderr is its stdout: one stream, in order.
    streams = ((STDOUT, 1),) if terminal else ((STDOUT, 1), (STDERR, 2))
    with _connect(args) as client:
        client.start(exec_id, args.command, **fields)
        io = functools.partial(_exec_io, client, exec_id, streams, args.no_stdin, args.give_up)
        if terminal:
            return _on_terminal(client, exec_id, not args.no_stdin and os.isatty(0), io)
        return io()


def cmd_batch(args: argparse.Namespace) -> int:
    from . import batch

    if args.resume and not args.joblog:
        print("router batch: --resume needs --joblog", file=sys.stderr)
        return 2
    options = batch.Options(jobs=args.jobs, timeout_secs=args.timeout, attempts=args.retries, halt=args.halt,
                            joblog=args.joblog, results=args.results, resume=args.resume)
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(_connect(args, target=t)) for t in args.target or [None]]
        for client in clients:
            if not client.reachable(args.connect_timeout):
                print(f"router batch: cannot reach {client.target} (within {args.connect_timeout:g} s)",
                      file=sys.stderr)
                return ROUTER_FAILED
        try:
            with open(args.file, "rb") if args.file != "-" else contextlib.nullcontext(sys.stdin.buffer) as source:
                return batch.run(clients, [c.target for c in clients], source, options)
        except (batch.BatchError, OSError) as e:
            print(f"router batch: {e}", file=sys.stderr)
            return ROUTER_FAILED
        except KeyboardInterrupt:  # a second Ctrl-C while the first was killing the jobs
            print("router batch: interrupted again; jobs may be left running", file=sys.stderr)
            return 128 + signal.SIGINT


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a whole number >= 1: {text!r}")
    return value


def _halt(text: str) -> Any:
    from .batch import Halt

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
    serve.add_argument("--listen", default=config.DEFAULT_LISTEN, help="HOST:PORT (default %(default)s; port 0 picks one)")
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
                     help="calls in flight per token; past it RESOURCE_EXHAUSTED with a retry delay (default %(default)s)")
    serve.set_defaults(func=cmd_serve)

    images = sub.add_parser("images", help="list, remove and garbage-collect the state directory's images")
    images.add_argument("--state-dir")
    images_sub = images.add_subparsers(dest="images_cmd", required=True)
    images_sub.add_parser("ls", help="list images, oldest first")
    rm = images_sub.add_parser("rm", help="remove images (not while mounted)")
    rm.add_argument("ids", nargs="+", metavar="ID")
    images_sub.add_parser("gc", help="remove expired images and content no image references")
    images.set_defaults(func=cmd_images)

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
    sec_cmd.set_defaults(func=cmd_secrets)

    token = sub.add_parser("token", help="print a bearer token for the task")
    token.add_argument("--state-dir")
    token.add_argument("--task-id")
    token.add_argument("--ttl", type=int, default=config.DEFAULT_TOKEN_TTL_SECS, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    ex = sub.add_parser("exec", help="run a command on a server and stream its output")
    _add_connection_args(ex)
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
    _add_connection_args(ls)
    ls.add_argument("--state", choices=sorted(_STATES), default="any")
    ls.set_defaults(func=cmd_ls)
    inspect = sub.add_parser("inspect", help="an exec in full (JSON): command, times, bytes, exit and its cause, usage")
    _add_connection_args(inspect)
    inspect.add_argument("id")
    inspect.set_defaults(func=cmd_inspect)
    kill = sub.add_parser("kill", help="end an exec's whole process group (TERM, grace, KILL), or send one signal")
    _add_connection_args(kill)
    kill.add_argument("id")
    kill.add_argument("-s", "--signal", help="send this signal (name or number) to the group instead")
    kill.add_argument("--grace", type=float, default=0.0, help="seconds between TERM and KILL (default 0: KILL)")
    kill.set_defaults(func=cmd_kill)
    logs = sub.add_parser("logs", help="an exec's output")
    _add_connection_args(logs)
    logs.add_argument("id")
    logs.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    logs.add_argument("--from", dest="offset", type=int, default=0, metavar="OFFSET", help="start at this byte")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing output as it comes, until the end")
    logs.set_defaults(func=cmd_logs)

    bat = sub.add_parser("batch", help="run each line of FILE as `sh -c LINE`, N at once, GNU parallel style",
                         description="Run each line of FILE (or stdin) with `sh -c` on the servers, N at once. "
                         "Exit status: 0 if every job succeeded, else the number of failed jobs (at most 101; "
                         "with --halt ...,fail=1 the failed job's status); 255 if a server failed; 2 for bad usage.")
    _add_connection_args(bat, many=True)
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
    bat.set_defaults(func=cmd_batch)
    return p


# Like ssh: the exit status when the router, not the command, failed.
ROUTER_FAILED = 255


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    try:
        return int(args.func(args))
    except grpc.RpcError as e:
        print(f"router {args.cmd}: {e.code().name}: {e.details()}", file=sys.stderr)
        return ROUTER_FAILED

