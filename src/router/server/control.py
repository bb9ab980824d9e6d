"""The router's own service, `task_command_router.v1.ExecControl` (proto/router/_proto/exec_control.proto):
signal, kill, resize, list, inspect, batch start, watch, status. Bodies as in service.py: generators that
yield Wait/Offload/frames and return the response; the same handlers drive them.
"""
from __future__ import annotations

import base64
import signal as signals
from collections.abc import Iterator
from typing import Any

from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb
from router.engine.execs import Changes, Exec
from router.engine.records import StreamName
from router.engine.watch import EventKind, Watcher
from router.errors import RouterError, invalid

from . import exit_causes, validate
from .service import Body, Method, Offload, Service, Wait
from .status import ServerStatus

SERVICE_NAME = "task_command_router.v1.ExecControl"
METHODS: dict[str, Method] = {
    "Signal": Method(ec.SignalRequest, ec.SignalResponse, False),
    "Kill": Method(ec.KillRequest, ec.KillResponse, False),
    "Resize": Method(ec.ResizeRequest, ec.ResizeResponse, False),
    "List": Method(ec.ListRequest, ec.ListResponse, False),
    "Inspect": Method(ec.InspectRequest, ec.ExecInfo, False),
    "BatchStart": Method(ec.BatchStartRequest, ec.BatchStartResponse, False),
    "Watch": Method(ec.WatchRequest, None, True),  # frames: encoded WatchResponses
    "Status": Method(ec.StatusRequest, ec.StatusResponse, False),
}
_TARGETS = {ec.SIGNAL_TARGET_GROUP: "group", ec.SIGNAL_TARGET_LEADER: "leader", ec.SIGNAL_TARGET_SESSION: "session"}
MAX_PAGE = 1000
MAX_BATCH = 10_000
# A Watch message takes no event that would carry it past this many bytes, unless it has none yet
# (under grpc's default 4 MiB limit for what a client receives).
WATCH_MESSAGE_BYTES = 1 << 20
# An event's size besides its exec id and output, rounded up (an estimate is enough for the above).
EVENT_FIELDS_BYTES = 64
# Room kept for an event's other fields when its output alone nears the server's message size limit.
EVENT_FIELDS_ROOM = 64 * 1024


def exit_info(ex: Exec, info: ec.ExitInfo | None = None) -> ec.ExitInfo:
    """The exec's exit, filled into `info` (a new ExitInfo if None)."""
    if info is None:
        info = ec.ExitInfo()
    status = ex.status
    if status is not None:
        if status.code is not None:
            info.code = status.code
        if status.signal is not None:
            info.signal = status.signal
        info.cause = exit_causes.TO_WIRE[ex.cause] if ex.cause is not None else ec.EXIT_CAUSE_UNSPECIFIED
    return info


def exec_info(ex: Exec, log_full: bool) -> ec.ExecInfo:
    """What Inspect and List say of an exec; `log_full`: the router's log filesystem is full."""
    info = ec.ExecInfo(exec_id=ex.exec_id, args=ex.spec.args, workdir=ex.spec.workdir or "",
                       started_at=ex.started_at, ended_at=ex.ended_at or 0.0, running=ex.running,
                       stdout_bytes=_answerable(ex, "stdout"), stderr_bytes=_answerable(ex, "stderr"),
                       stdin_bytes=min(ex.stdin.written, 2**63), exit=exit_info(ex),
                       pid=ex.pid, terminal=ex.spec.pty is not None,
                       output_held_back=ex.output is not None and ex.output.held_back, log_filesystem_full=log_full)
    for log, released in ((ex.stdout, info.stdout_released), (ex.stderr, info.stderr_released)):
        if log is not None and log.released_range[1]:
            released.start, released.end = log.released_range
    if ex.usage is not None:
        info.usage.CopyFrom(ec.Usage(user_cpu_secs=ex.usage.user_cpu_secs, system_cpu_secs=ex.usage.system_cpu_secs,
                                     max_rss_bytes=ex.usage.max_rss_bytes))
    return info


def _answerable(ex: Exec, which: StreamName) -> int:
    """How many bytes of the stream its log holds that a restart would still hold (journaled)."""
    log = ex.stdout if which == "stdout" else ex.stderr
    return 0 if log is None else ex.read_limit(which, log)[0]


def _output(ex: Exec, limit: int) -> tuple[bytes, bytes] | None:
    """Both streams whole, if together they hold at most `limit` bytes (and are still held)."""
    logs = [ex.log("stdout"), ex.log("stderr")]
    if limit <= 0 or sum(log.committed for log in logs if log is not None) > limit:
        return None
    try:
        out = [log.read(0, log.committed) if log is not None else b"" for log in logs]
    except (ValueError, LookupError, OSError):
        return None  # released meanwhile: the caller reads with TaskExecStdioRead, or learns it is gone
    return out[0], out[1]


class _Starts(Changes):
    """The starts of a BatchStart, waited for together: one wake-up for the lot, not one per exec."""

    def __init__(self, execs: list[Exec]) -> None:
        super().__init__()
        self._left = len(execs)
        for ex in execs:
            ex.started.add_done_callback(self._one_done)  # at once if done already

    def _one_done(self, _: object) -> None:
        with self.cond:
            self._left -= 1
            last = self._left == 0
        if last:
            self.notify()

    def done(self) -> bool:
        return self._left == 0


class Control:
    """The bodies of ExecControl, by name (see METHODS)."""

    def __init__(self, service: Service, max_message_size: int, status: ServerStatus) -> None:
        self._service = service
        self._status = status
        self._engine = service.engine
        # A larger output in an event could not be sent: the whole Watch would fail.
        self._max_event_output = max(0, max_message_size - EVENT_FIELDS_ROOM)

    def _exec(self, request: Any) -> Exec:
        return self._engine.get(validate.exec_id(request))

    def Signal(self, request: ec.SignalRequest) -> Body:
        ex = self._exec(request)
        if not 1 <= request.signal < signals.NSIG:
            raise invalid("signal", f"{request.signal} is not a signal number")
        target = _TARGETS.get(request.target)
        if target is None:
            raise invalid("target", f"unknown value {request.target}")
        yield Offload(lambda: self._engine.signal(ex, request.signal, target))
        return ec.SignalResponse()

    def Kill(self, request: ec.KillRequest) -> Body:
        ex = self._exec(request)
        if not 0 <= request.grace_secs <= 3600:
            raise invalid("grace_secs", f"must be 0-3600, got {request.grace_secs}")
        yield Offload(lambda: self._engine.kill(ex, request.grace_secs))
        yield Wait(ex, lambda: ex.complete)  # gone: reaped, output complete and journaled
        return ec.KillResponse(exit=exit_info(ex))

    def Resize(self, request: ec.ResizeRequest) -> Body:
        ex = self._exec(request)
        for name in ("rows", "cols"):
            if not 1 <= getattr(request, name) <= 0xFFFF:
                raise invalid(name, "must be 1-65535")
        yield Offload(lambda: self._engine.resize(ex, request.rows, request.cols))
        return ec.ResizeResponse()

    def List(self, request: ec.ListRequest) -> Body:
        if request.state not in (ec.EXEC_STATE_ANY, ec.EXEC_STATE_RUNNING, ec.EXEC_STATE_EXITED):
            raise invalid("state", f"unknown value {request.state}")
        size = request.page_size or MAX_PAGE
        if size > MAX_PAGE:
            raise invalid("page_size", f"at most {MAX_PAGE}")
        start = 0
        if request.page_token:
            try:
                start = int(base64.urlsafe_b64decode(request.page_token.encode()).decode())
            except (ValueError, UnicodeDecodeError):
                raise invalid("page_token", "not a token this router gave") from None
        execs = [ex for ex in self._engine.execs()
                 if request.state == ec.EXEC_STATE_ANY or (request.state == ec.EXEC_STATE_RUNNING) == ex.running]
        page = execs[start:start + size]
        token = base64.urlsafe_b64encode(str(start + size).encode()).decode() if start + size < len(execs) else ""
        return ec.ListResponse(execs=[exec_info(ex, self._engine.log_full) for ex in page], next_page_token=token)
        yield

    def Inspect(self, request: ec.InspectRequest) -> Body:
        return exec_info(self._exec(request), self._engine.log_full)
        yield

    def BatchStart(self, request: ec.BatchStartRequest) -> Body:
        if len(request.items) > MAX_BATCH:
            raise invalid("items", f"at most {MAX_BATCH} per call")
        results = []
        begun: list[tuple[int, Exec]] = []
        for i, item in enumerate(request.items):
            try:
                if item.task_id and item.task_id != request.task_id:
                    raise invalid(f"items[{i}].task_id", "must be empty or the call's task_id")
                item.task_id = request.task_id  # the same fingerprint as a TaskExecStart of it
                begun.append((i, self._service.begin(item)))
                results.append(ec.BatchItemResult(exec_id=item.exec_id))
            except RouterError as e:
                results.append(ec.BatchItemResult(exec_id=item.exec_id, code=e.code.value[0], message=e.message))
        starts = _Starts([ex for _, ex in begun])  # every start is in flight: wait for them all at once
        yield Wait(starts, starts.done)
        for i, ex in begun:
            try:
                ex.started.result()
            except RouterError as e:
                results[i] = ec.BatchItemResult(exec_id=ex.exec_id, code=e.code.value[0], message=e.message)
        return ec.BatchStartResponse(results=results)

    def Status(self, request: ec.StatusRequest) -> Body:
        status: ec.StatusResponse = yield Offload(self._status.response)  # statvfs may block
        return status

    def Watch(self, request: ec.WatchRequest) -> Body:
        for exec_id in request.exec_ids:
            validate.exec_id(pb.TaskExecPollRequest(exec_id=exec_id))
        watcher = Watcher(set(request.exec_ids) if request.exec_ids else None, request.include_started)
        yield Offload(lambda: self._engine.watch(watcher))
        try:
            while not watcher.complete:
                yield Wait(watcher, watcher.has_events)
                yield from _watch_messages(watcher.take(), min(request.output_limit, self._max_event_output))
        finally:
            self._engine.unwatch(watcher)


def _watch_messages(ready: list[tuple[EventKind, Exec]], output_limit: int) -> Iterator[bytes]:
    """The events that are ready, in order, in as few encoded WatchResponses as WATCH_MESSAGE_BYTES allows."""
    response = ec.WatchResponse()
    held = 0
    for kind, ex in ready:
        output = _output(ex, output_limit) if kind == "exited" else None
        size = EVENT_FIELDS_BYTES + len(ex.exec_id) + (len(output[0]) + len(output[1]) if output is not None else 0)
        if held and held + size > WATCH_MESSAGE_BYTES:
            yield response.SerializeToString()
            response, held = ec.WatchResponse(), 0
        held += size
        if kind == "started":
            response.events.add(exec_id=ex.exec_id, kind=ec.WATCH_EVENT_KIND_STARTED, time=ex.started_at,
                                pid=ex.pid)
            continue
        event = response.events.add(exec_id=ex.exec_id, time=ex.ended_at or 0.0)
        exit_info(ex, event.exit)
        if output is not None:
            event.output_included = True
            event.stdout, event.stderr = output
    if response.events:
        yield response.SerializeToString()
