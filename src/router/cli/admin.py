"""The admin commands: images and secrets of a state directory, tokens, and ls, inspect, kill and logs
of a router's execs."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

from router import config
from router._proto import exec_control_pb2 as ec
from router.client import STDERR, STDOUT
from router.server import exit_causes

from .connection import connect
from .serve import absolute_path, token_key

if TYPE_CHECKING:
    from router.images.store import Images

STATES = {"running": ec.EXEC_STATE_RUNNING, "exited": ec.EXEC_STATE_EXITED, "any": ec.EXEC_STATE_ANY}


def _when(t: float | None) -> str:
    return "never" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_images(args: argparse.Namespace) -> int:
    from router.errors import RouterError
    from router.images.opening import StoreFlags, open_images

    flags = StoreFlags(args.image_store, args.s3_endpoint, args.s3_region, args.image_cache_bytes)
    try:
        # method copy: no probe mount, nothing is mounted here
        images = open_images(config.state_dir_from(args.state_dir), "copy", flags, serving=False)
        try:
            return _images(args, images)
        finally:
            images.close()
    except RouterError as e:
        print(f"router images {args.images_cmd}: {e.message}", file=sys.stderr)
        return 1
    except ValueError as e:  # --image-store that is not s3://BUCKET[/PREFIX]
        print(f"router images {args.images_cmd}: {e}", file=sys.stderr)
        return 2


def _images(args: argparse.Namespace, images: Images) -> int:
    from router.errors import RouterError

    if args.images_cmd == "ls":
        mounted = images.mounted_images()
        rows = [("ID", "CREATED", "EXPIRES", "ENTRIES", "BYTES", "ENCRYPTED", "MOUNTED", "SOURCE")]
        for r in images.records():
            rows.append((r.id, _when(r.created), _when(r.expires), str(r.entries), str(r.content_bytes),
                         "yes" if r.encrypted else "no", "yes" if r.id in mounted else "no",
                         os.fsdecode(r.source)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
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
    done = images.gc(args.grace if args.image_store else 0.0)
    print(f"removed {done.images} expired images and {done.blobs} unreferenced blobs ({done.bytes} bytes)")
    return 0


def cmd_secrets(args: argparse.Namespace) -> int:
    from router.secretstore import SecretError, SecretStore

    if args.secrets_dir:
        directory = pathlib.Path(absolute_path(args.secrets_dir))
    else:
        directory = config.state_dir_from(args.state_dir) / "secrets"
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
                    value = _read_value(name)
                if not value and not args.allow_empty:
                    print(f"router secrets: the value of {name} is empty (--allow-empty to store it anyway)",
                          file=sys.stderr)
                    return 1
                values[name] = value
            print(store.set(args.id, values))
    except SecretError as e:
        print(f"router secrets: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError:
        print(f"router secrets: secret {getattr(args, 'id', '')!r} not found", file=sys.stderr)
        return 1
    return 0


def _read_value(name: str) -> str:
    """A secret's value from stdin: after a prompt and without echo on a terminal, else its next line."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"value of {name}: ")
    return sys.stdin.readline().rstrip("\n")


def cmd_token(args: argparse.Namespace) -> int:
    if args.jwt_key_file:
        return _token_from_key_file(args)
    state_dir = config.state_dir_from(args.state_dir)
    if not (state_dir / "jwt.key").exists() and not args.init:
        print(f"router token: {state_dir} has no signing key (jwt.key): not a router's state directory? "
              "(--init makes one; router serve does too)", file=sys.stderr)
        return 1
    state_dir = config.ensure_state_dir(state_dir)
    task_id = args.task_id or config.load_or_create_task_id(state_dir)
    print(f"token for task {task_id}, valid {args.ttl} s:", file=sys.stderr)
    from router.auth import load_or_create_key, mint_token  # jwt and cryptography: ~0.1 s, not for every command

    print(mint_token(load_or_create_key(state_dir), task_id, args.ttl))
    return 0


def _token_from_key_file(args: argparse.Namespace) -> int:
    """A token signed with --jwt-key-file's key, for a router serving --task-id with that key file."""
    if not args.task_id:
        print("router token: --jwt-key-file needs --task-id (the task of the router the token is for)",
              file=sys.stderr)
        return 2
    from router.auth import mint_token

    try:
        key = token_key(args, pathlib.Path())
    except ValueError as e:
        print(f"router token: {e}", file=sys.stderr)
        return 1
    print(f"token for task {args.task_id}, valid {args.ttl} s:", file=sys.stderr)
    print(mint_token(key, args.task_id, args.ttl))
    return 0


def _exit_text(info: ec.ExecInfo) -> str:
    if info.running:
        return "running"
    status = f"signal {info.exit.signal}" if info.exit.HasField("signal") else f"exit {info.exit.code}"
    return f"{status} ({ec.ExitCause.Name(info.exit.cause).removeprefix('EXIT_CAUSE_').lower().replace('_', ' ')})"


def cmd_ls(args: argparse.Namespace) -> int:
    with connect(args) as client:
        rows = [("ID", "STARTED", "STATUS", "COMMAND")]
        for info in client.execs(STATES[args.state]):
            rows.append((info.exec_id, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.started_at)),
                         _exit_text(info), " ".join(info.args)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[3])
    return 0


def _iso(t: float) -> str | None:
    """Unix time as ISO 8601 in UTC, to the microsecond; None for 0 (not yet)."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat() if t else None


def inspected(info: ec.ExecInfo) -> dict[str, Any]:
    """An exec's ExecInfo as a person reads it: integers, ISO 8601 times, the exit cause's name."""
    ended = None if info.running else {
        "code": info.exit.code if info.exit.HasField("code") else None,
        "signal": info.exit.signal if info.exit.HasField("signal") else None,
        "cause": exit_causes.NAMES.get(info.exit.cause),
    }
    usage = None if not info.HasField("usage") else {
        "user_cpu_secs": info.usage.user_cpu_secs, "system_cpu_secs": info.usage.system_cpu_secs,
        "max_rss_bytes": info.usage.max_rss_bytes}
    return {"exec_id": info.exec_id, "args": list(info.args), "workdir": info.workdir or None, "pid": info.pid,
            "terminal": info.terminal, "running": info.running, "started_at": _iso(info.started_at),
            "ended_at": _iso(info.ended_at), "stdout_bytes": info.stdout_bytes, "stderr_bytes": info.stderr_bytes,
            "stdin_bytes": info.stdin_bytes, "exit": ended, "usage": usage,
            "stdout_released": _released(info, "stdout"), "stderr_released": _released(info, "stderr"),
            "output_held_back": info.output_held_back, "log_filesystem_full": info.log_filesystem_full}


def _released(info: ec.ExecInfo, stream: Literal["stdout", "stderr"]) -> list[int] | None:
    """A stream's released range [start, end), or None if it holds all its output."""
    if not info.HasField(f"{stream}_released"):
        return None
    released: ec.OutputRange = getattr(info, f"{stream}_released")
    return [released.start, released.end]


def cmd_inspect(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.inspect(args.id)
    print(json.dumps(inspected(info), indent=2))
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.signal:
            client.signal(args.id, args.signal)
            return 0
        done = client.kill(args.id, args.grace, timeout=args.grace + args.give_up)
    print(f"{args.id}: " + (f"signal {done.signal}" if done.HasField("signal") else f"exit {done.code}"))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with connect(args) as client:
        fd = STDERR if args.stderr else STDOUT
        # First a unary call, which --give-up bounds (a stream waits as long as the exec runs).
        info = client.inspect(args.id)
        end = None if args.follow else (info.stderr_bytes if args.stderr else info.stdout_bytes)
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
