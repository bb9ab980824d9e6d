"""`router serve`: the keeper (handover/keeper.py), which starts this again as the serving process:
the server on its configuration, until SIGINT or SIGTERM (a drain, then the stop: server/drain.py),
or until it hands over to a successor."""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import pathlib
import signal
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from router import config, logs
from router.engine import procs, scheduling
from router.engine.adoption import Adoption
from router.handover import keeper, listeners, messages, takeover, wire
from router.handover.serving import HandoverFailed, KeeperLink, give, take
from router.tls import TlsFiles

if TYPE_CHECKING:
    from router.errors import RouterError
    from router.server.grpc_server import RouterServer

GC_THRESHOLD = 10_000  # allocations between young-generation collections in `router serve`


def absolute_path(value: str | None) -> str:
    return str(pathlib.Path(value).expanduser().resolve()) if value else ""


def token_key(args: argparse.Namespace, state_dir: pathlib.Path) -> bytes:
    """The HS256 key: --jwt-key-file's (a mounted Secret; STATE_DIR/jwt.key is then neither read nor
    made), else the state directory's, made there on first use. ValueError, one line, if the file is
    unusable or given with another algorithm; OSError if the state directory is."""
    from router.auth import load_or_create_key, read_key_file  # jwt and cryptography: not for every command

    if not args.jwt_key_file:
        return load_or_create_key(state_dir)
    if getattr(args, "jwt_alg", "HS256") != "HS256":
        raise ValueError(f"--jwt-key-file is an HS256 key; --jwt-alg {args.jwt_alg} verifies with --jwt-public-key")
    return read_key_file(absolute_path(args.jwt_key_file))


def cmd_serve(args: argparse.Namespace) -> int:
    from router.server.drain import StopRequests
    from router.server.grpc_server import RouterServer

    say = logs.Announcer(args.log_format)
    if args.max_workers is not None and args.server_mode != "threads":
        say.error("usage_error", "router serve: --max-workers is for --server-mode threads (aio serves every call "
                  "on one event loop thread)")
        return 2
    logs.configure(args.log_format)
    state_dir = config.state_dir_from(args.state_dir)
    try:
        config.ensure_state_dir(state_dir)
        task_id = args.task_id or config.load_or_create_task_id(state_dir)
        key = token_key(args, state_dir)
    except OSError as e:
        say.error("cannot_start", f"router serve: cannot use the state directory {state_dir}: {e.strerror}",
                  state_dir=str(state_dir))
        return 1
    except ValueError as e:
        say.error("bad_configuration", f"router serve: {e}")
        return 2
    if args.takeover:
        return takeover.request(state_dir)
    if keeper.KEEPER_FD not in os.environ:
        return keeper.keep(args.argv, state_dir)
    # The serving process, started by the keeper (which holds the lock for it).
    if args.sched_batch:
        scheduling.batch_threads()  # before its threads start: they inherit it
    link = KeeperLink(socket.socket(fileno=keeper.passed_fd(keeper.KEEPER_FD)))
    keeper.passed_fd(keeper.LOCK_FD)  # held, never used: the keeper's lock
    listen, adopting, predecessor = args.listen, None, None
    if keeper.HANDOVER_FD in os.environ:
        predecessor = socket.socket(fileno=keeper.passed_fd(keeper.HANDOVER_FD))
        try:
            listen, carried = take(predecessor)
        except (HandoverFailed, OSError, EOFError, ValueError) as e:
            say.error("takeover_failed", f"router serve: cannot take over: {e}")
            return 1
        adopting = Adoption(carried, link)
    log_dir = str(pathlib.Path(args.log_dir).expanduser().resolve()) if args.log_dir else ""
    cfg = config.ServerConfig(state_dir=str(state_dir), task_id=task_id, listen=listen, log_dir=log_dir,
                              kill_grace_secs=args.kill_grace, server_mode=args.server_mode,
                              reap_orphans=procs.inherits_orphans(),
                              retain_bytes=args.retain_bytes,
                              retain_secs=args.retain_secs, retain_execs=args.retain_execs,
                              max_exec_output=args.max_exec_output, on_log_full=args.on_log_full,
                              journal=not args.no_journal, durability=args.durability,
                              mount_method=args.mount_method, image_store=args.image_store,
                              s3_endpoint=args.s3_endpoint, s3_region=args.s3_region,
                              image_cache_bytes=args.image_cache_bytes,
                              tokens=config.TokenPolicy(algorithm=args.jwt_alg,
                                                        public_key=absolute_path(args.jwt_public_key),
                                                        audience=args.jwt_audience, issuer=args.jwt_issuer,
                                                        leeway_secs=args.jwt_leeway, task_claim=args.jwt_task_claim),
                              tls=TlsFiles(cert=absolute_path(args.tls_cert), key=absolute_path(args.tls_key),
                                           client_ca=absolute_path(args.tls_client_ca)),
                              insecure=args.insecure, metrics_listen=args.metrics_listen or "",
                              health_listen=args.health_listen or "",
                              secrets_dir=absolute_path(args.secrets_dir),
                              exec_user=args.exec_user,
                              max_arg_bytes=args.max_arg_bytes, max_env_bytes=args.max_env_bytes,
                              max_receive_message_size=args.max_message_size,
                              max_streams_per_connection=args.max_streams_per_connection,
                              max_calls_per_token=args.max_calls_per_token,
                              **({} if args.max_workers is None else {"max_workers": args.max_workers}))
    try:
        server = RouterServer(cfg, key, takeover=adopting is not None)
    except ValueError as e:
        say.error("bad_configuration", f"router serve: {e}")
        return 2
    except OSError as e:  # the log directory, the journal, the image store
        say.error("cannot_start", f"router serve: cannot start: {e}")
        return 1
    # Every exec allocates dozens of objects kept as long as the exec is: at the default threshold
    # (700 allocations) the collector ran ~90 times per 1,000 execs of `true`, ~10% of the server's
    # CPU (benchmarks/HISTORY.md, "A leaner start and finish per exec").
    gc.set_threshold(GC_THRESHOLD)
    stops, handed_over = StopRequests(), threading.Event()  # the first signal drains, the next stops at once
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stops.request())
    if server.tls is not None:
        tls = server.tls
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=tls.reload, daemon=True).start())
    else:  # the keeper passes a terminal's hangup on: nothing to reload, nothing to stop
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if predecessor is not None:
        # The point of no return: the journal and the execs' pipes are this process's from here.
        # Whatever fails before (configuration, TLS files, the secret store) leaves the old one serving.
        try:
            wire.send(predecessor, messages.Commit())
        except OSError as e:
            say.error("takeover_failed", f"router serve: cannot take over: the serving process is gone ({e})")
            return 1
    try:
        server.start(adopting=adopting, lock=False)
    except config.StateDirBusy as e:
        say.error("state_dir_busy", f"router serve: {e}", state_dir=str(state_dir))
        return 1
    except RuntimeError as e:  # grpc's "Failed to bind"
        say.error("cannot_listen", f"router serve: cannot listen on {args.listen}: the address is in use or not "
                  f"this host's ({e})", listen=args.listen)
        return 1
    host = listen.rsplit(":", 1)[0]
    listen = f"{host}:{server.port}"
    link.start(server.engine.loop.call_soon)
    server.status.keeper_pid = os.getppid()
    def on_handed_over() -> None:
        handed_over.set()
        stops.first.set()
        stops.again.set()
    link.on_handover = functools.partial(_give, server, listen, on_handed_over)
    if adopting is not None and predecessor is not None:
        _took_over(server, link, adopting, predecessor)
    try:
        config.write_server_info(state_dir, config.ServerInfo(listen=listen, task_id=task_id, pid=os.getpid(),
                                                              tls=cfg.tls.enabled, keeper_pid=os.getppid(),
                                                              metrics=server.metrics_url))
    except OSError as e:  # a full state filesystem: serve anyway, the journal keeps its own room
        say.error("cannot_write_server_info", f"router serve: cannot write {state_dir / 'server.json'} "
                  f"({e.strerror}): clients on this host need --target {listen}", listen=listen)
    say("listening", f"router listening on {listen}", listen=listen, pid=os.getpid())
    if server.metrics_url:
        say("metrics", f"metrics on {server.metrics_url}", url=server.metrics_url)
    if server.health_port:
        health = f"{args.health_listen.rsplit(':', 1)[0]}:{server.health_port}"
        say("health", f"health (plaintext) on {health}", listen=health)
    say("task", f"task id: {task_id}", task_id=task_id)
    say("state_dir", f"state directory: {state_dir}", state_dir=str(state_dir))
    if cfg.reap_orphans:
        say("reaping_orphans", "reaping orphaned processes (this router is their init)")
    # A task the state directory does not name, or a key file (which names none)
    task_flag = f" --task-id {task_id}" if args.task_id or args.jwt_key_file else ""
    signer = f"--jwt-key-file {absolute_path(args.jwt_key_file)}" if args.jwt_key_file else f"--state-dir {state_dir}"
    say("token_hint", f"get a token with: router token {signer}{task_flag}")
    try:
        stops.wait()
        if not handed_over.is_set():
            say("shutting_down", "router shutting down")
            server.drain(args.drain_secs, stops.again)
    finally:
        if handed_over.is_set():
            say("handed_over", "router handed over to a new serving process")
            server.abandon()
            logs.flush()  # os._exit skips logging's own flush at exit
            os._exit(0)  # nothing of the engine may run on: the journal, the execs are the successor's
        server.stop()
        config.remove_server_info(state_dir)
    return 0


def _give(server: RouterServer, listen: str, handed_over: Callable[[], None], successor: socket.socket) -> None:
    """A handover thread (KeeperLink.on_handover): the running execs to the successor, or, if that
    fails, serving on. Not while draining: the successor would take new execs again."""
    def refuse(why: RouterError | None) -> None:
        if why is not None and server.draining:
            raise HandoverFailed("this router is draining (it got SIGTERM or SIGINT): it stops once its execs end")
        server.refuse_new_execs(why)
    other_ports = server.ports[1:]  # shared with the successor for the switch too (gRPC's: give() does it)
    for port in other_ports:
        listeners.reuse_port(port, True)
    try:
        give(successor, listen, server.engine.journaled, server.engine.hand_over, refuse,
             lambda: server.engine.registry.starting, handed_over)
    finally:  # it failed: serving on (after a handover, give() never returns)
        for port in other_ports:
            listeners.reuse_port(port, False)


def _took_over(server: RouterServer, link: KeeperLink, adopting: Adoption, predecessor: socket.socket) -> None:
    """Serving the adopted execs: the keeper reaps their leaders from now on, the predecessor
    stops; once it has closed its listener, the port is ours alone again."""
    link.adopt([running.pid for running, _, _ in adopting.carried.values()])
    link.send(messages.Serving(os.getpid()))
    with contextlib.suppress(OSError):  # it died after we committed: the keeper has seen to it
        wire.send(predecessor, messages.Serving(os.getpid()))

    def port_ours_alone() -> None:
        with contextlib.suppress(OSError):
            predecessor.settimeout(None)
            predecessor.recv(1)  # its end closes when it exits
        predecessor.close()
        for port in server.ports:
            listeners.reuse_port(port, False)
    threading.Thread(target=port_ours_alone, name="router-handover", daemon=True).start()
