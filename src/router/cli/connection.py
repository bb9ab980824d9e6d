"""Connecting to a router from the command line: the connection flags, and the exit status when the
router, not the command, failed."""
from __future__ import annotations

import argparse

import grpc

from router.client import TOKEN_ENV, UNREACHABLE_SECS, RouterClient

from .argtypes import seconds

# Like ssh: the exit status when the router, not the command, failed.
ROUTER_FAILED = 255


def connect(args: argparse.Namespace, retries: int = 10, target: str | None = None,
            give_up: float | None = None, reconnect_secs: float | None = None) -> RouterClient:
    """A client from the connection flags (add_connection_args), the environment and the local state;
    `target` in place of --target ("": the local server's), `give_up` of --give-up (batch has several)."""
    if target is None:
        target = args.target if isinstance(args.target, str) else None
    chosen = target or None
    client = RouterClient.from_env(chosen, args.token, task_id=args.task_id, state_dir=args.state_dir,
                                   tls_ca=args.tls_ca or "", tls_cert=args.tls_cert or "",
                                   tls_key=args.tls_key or "", server_name=args.tls_server_name, retries=retries,
                                   give_up=give_up or args.give_up, reconnect_secs=reconnect_secs)
    args.connected = client  # for main()'s message if a call fails
    return client


def failure(e: grpc.RpcError, client: RouterClient | None, give_up: float | None) -> str:
    """One line saying why a call failed, and what to do about it."""
    code, details = e.code(), e.details() or ""
    where = f"the router at {client.target}" if client is not None else "the router"
    lowered = details.lower()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or (code == grpc.StatusCode.UNAVAILABLE and "timed out" in lowered):
        if give_up:
            return f"{where} did not answer within {give_up:g} s (--give-up); is it running, or frozen?"
        return f"{where} did not answer in time: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        if "ssl" in lowered or "handshake" in lowered or "certificate" in lowered:
            return f"cannot reach {where}: the TLS handshake failed (certificate not trusted, or not TLS): {details}"
        return f"cannot reach {where} (connection refused or lost; is it running?): {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        source = client.token_source if client is not None else "given"
        return (f"{where} refused the token ({source}): {details}; give one it accepts with --token or "
                f"${TOKEN_ENV}")
    return f"{code.name}: {details}"


def add_connection_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    """`many`: --target may be given several times (batch)."""
    p.add_argument("--target", action="append" if many else "store",
                   help="HOST:PORT of the server (default: the local server, else 127.0.0.1:50051)"
                   + ("; repeat it to spread the jobs over several servers; dns:NAME:PORT: every address "
                      "NAME resolves to, resolved again every few seconds (a headless Service)" if many else ""))
    p.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV}, else minted from the local state directory)")
    p.add_argument("--task-id", help="default: the token's task")
    p.add_argument("--state-dir", help="the local router's state directory, for its address, TLS and a token "
                                       "(default: the user's state directory)")
    p.add_argument("--tls-ca", metavar="PEM", help="trust this CA for the server's certificate (else the system's)")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate, for a server that requires one (mTLS)")
    p.add_argument("--tls-key", metavar="PEM", help="the client certificate's key")
    p.add_argument("--tls-server-name", default="", help="the name to expect in the server's certificate")
    p.add_argument("--give-up", type=seconds(above=True), default=UNREACHABLE_SECS, metavar="SECS",
                   help="fail (exit 255) once the router has not answered for this long (default %(default)s)")
