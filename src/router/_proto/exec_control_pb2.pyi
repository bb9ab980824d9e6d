from router._proto import task_command_router_pb2 as _task_command_router_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignalTarget(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNAL_TARGET_GROUP: _ClassVar[SignalTarget]
    SIGNAL_TARGET_LEADER: _ClassVar[SignalTarget]
    SIGNAL_TARGET_SESSION: _ClassVar[SignalTarget]

class ExecState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXEC_STATE_ANY: _ClassVar[ExecState]
    EXEC_STATE_RUNNING: _ClassVar[ExecState]
    EXEC_STATE_EXITED: _ClassVar[ExecState]

class ExitCause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXIT_CAUSE_UNSPECIFIED: _ClassVar[ExitCause]
    EXIT_CAUSE_EXITED: _ClassVar[ExitCause]
    EXIT_CAUSE_SIGNALLED: _ClassVar[ExitCause]
    EXIT_CAUSE_TIMED_OUT: _ClassVar[ExitCause]
    EXIT_CAUSE_KILLED: _ClassVar[ExitCause]
    EXIT_CAUSE_LOST: _ClassVar[ExitCause]
    EXIT_CAUSE_FAILED_TO_START: _ClassVar[ExitCause]
    EXIT_CAUSE_SHUTDOWN: _ClassVar[ExitCause]
    EXIT_CAUSE_OUT_OF_MEMORY: _ClassVar[ExitCause]

class WatchEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_EVENT_KIND_EXITED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_STARTED: _ClassVar[WatchEventKind]
SIGNAL_TARGET_GROUP: SignalTarget
SIGNAL_TARGET_LEADER: SignalTarget
SIGNAL_TARGET_SESSION: SignalTarget
EXEC_STATE_ANY: ExecState
EXEC_STATE_RUNNING: ExecState
EXEC_STATE_EXITED: ExecState
EXIT_CAUSE_UNSPECIFIED: ExitCause
EXIT_CAUSE_EXITED: ExitCause
EXIT_CAUSE_SIGNALLED: ExitCause
EXIT_CAUSE_TIMED_OUT: ExitCause
EXIT_CAUSE_KILLED: ExitCause
EXIT_CAUSE_LOST: ExitCause
EXIT_CAUSE_FAILED_TO_START: ExitCause
EXIT_CAUSE_SHUTDOWN: ExitCause
EXIT_CAUSE_OUT_OF_MEMORY: ExitCause
WATCH_EVENT_KIND_EXITED: WatchEventKind
WATCH_EVENT_KIND_STARTED: WatchEventKind

class ExitInfo(_message.Message):
    __slots__ = ("code", "signal", "cause")
    CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    code: int
    signal: int
    cause: ExitCause
    def __init__(self, code: _Optional[int] = ..., signal: _Optional[int] = ..., cause: _Optional[_Union[ExitCause, str]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("user_cpu_secs", "system_cpu_secs", "max_rss_bytes")
    USER_CPU_SECS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_CPU_SECS_FIELD_NUMBER: _ClassVar[int]
    MAX_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    user_cpu_secs: float
    system_cpu_secs: float
    max_rss_bytes: int
    def __init__(self, user_cpu_secs: _Optional[float] = ..., system_cpu_secs: _Optional[float] = ..., max_rss_bytes: _Optional[int] = ...) -> None: ...

class ExecInfo(_message.Message):
    __slots__ = ("exec_id", "args", "workdir", "started_at", "ended_at", "running", "stdout_bytes", "stderr_bytes", "stdin_bytes", "exit", "usage", "pid", "terminal", "stdout_released", "stderr_released", "output_held_back", "log_filesystem_full")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    STDOUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDERR_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDIN_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    STDOUT_RELEASED_FIELD_NUMBER: _ClassVar[int]
    STDERR_RELEASED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_HELD_BACK_FIELD_NUMBER: _ClassVar[int]
    LOG_FILESYSTEM_FULL_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    args: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    started_at: float
    ended_at: float
    running: bool
    stdout_bytes: int
    stderr_bytes: int
    stdin_bytes: int
    exit: ExitInfo
    usage: Usage
    pid: int
    terminal: bool
    stdout_released: OutputRange
    stderr_released: OutputRange
    output_held_back: bool
    log_filesystem_full: bool
    def __init__(self, exec_id: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., running: _Optional[bool] = ..., stdout_bytes: _Optional[int] = ..., stderr_bytes: _Optional[int] = ..., stdin_bytes: _Optional[int] = ..., exit: _Optional[_Union[ExitInfo, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., pid: _Optional[int] = ..., terminal: _Optional[bool] = ..., stdout_released: _Optional[_Union[OutputRange, _Mapping]] = ..., stderr_released: _Optional[_Union[OutputRange, _Mapping]] = ..., output_held_back: _Optional[bool] = ..., log_filesystem_full: _Optional[bool] = ...) -> None: ...

class OutputRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class SignalRequest(_message.Message):
    __slots__ = ("task_id", "exec_id", "signal", "target")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    exec_id: str
    signal: int
    target: SignalTarget
    def __init__(self, task_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., signal: _Optional[int] = ..., target: _Optional[_Union[SignalTarget, str]] = ...) -> None: ...

class SignalResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KillRequest(_message.Message):
    __slots__ = ("task_id", "exec_id", "grace_secs")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    exec_id: str
    grace_secs: float
    def __init__(self, task_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., grace_secs: _Optional[float] = ...) -> None: ...

class KillResponse(_message.Message):
    __slots__ = ("exit",)
    EXIT_FIELD_NUMBER: _ClassVar[int]
    exit: ExitInfo
    def __init__(self, exit: _Optional[_Union[ExitInfo, _Mapping]] = ...) -> None: ...

class ResizeRequest(_message.Message):
    __slots__ = ("task_id", "exec_id", "rows", "cols")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    exec_id: str
    rows: int
    cols: int
    def __init__(self, task_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class ResizeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("task_id", "state", "page_size", "page_token")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: ExecState
    page_size: int
    page_token: str
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[ExecState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("execs", "next_page_token")
    EXECS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    execs: _containers.RepeatedCompositeFieldContainer[ExecInfo]
    next_page_token: str
    def __init__(self, execs: _Optional[_Iterable[_Union[ExecInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("task_id", "exec_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    exec_id: str
    def __init__(self, task_id: _Optional[str] = ..., exec_id: _Optional[str] = ...) -> None: ...

class BatchStartRequest(_message.Message):
    __slots__ = ("task_id", "items")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    items: _containers.RepeatedCompositeFieldContainer[_task_command_router_pb2.TaskExecStartRequest]
    def __init__(self, task_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[_task_command_router_pb2.TaskExecStartRequest, _Mapping]]] = ...) -> None: ...

class BatchItemResult(_message.Message):
    __slots__ = ("exec_id", "code", "message")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    code: int
    message: str
    def __init__(self, exec_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class BatchStartResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchItemResult, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("task_id", "exec_ids", "output_limit", "include_started")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_IDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_STARTED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    exec_ids: _containers.RepeatedScalarFieldContainer[str]
    output_limit: int
    include_started: bool
    def __init__(self, task_id: _Optional[str] = ..., exec_ids: _Optional[_Iterable[str]] = ..., output_limit: _Optional[int] = ..., include_started: _Optional[bool] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("exec_id", "exit", "output_included", "stdout", "stderr", "kind", "pid", "time")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_INCLUDED_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    exit: ExitInfo
    output_included: bool
    stdout: bytes
    stderr: bytes
    kind: WatchEventKind
    pid: int
    time: float
    def __init__(self, exec_id: _Optional[str] = ..., exit: _Optional[_Union[ExitInfo, _Mapping]] = ..., output_included: _Optional[bool] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., kind: _Optional[_Union[WatchEventKind, str]] = ..., pid: _Optional[int] = ..., time: _Optional[float] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[WatchEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[WatchEvent, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class FilesystemSpace(_message.Message):
    __slots__ = ("path", "free_bytes", "total_bytes", "full")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    path: str
    free_bytes: int
    total_bytes: int
    full: bool
    def __init__(self, path: _Optional[str] = ..., free_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., full: _Optional[bool] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "started_at", "uptime_secs", "listen", "metrics_listen", "pid", "serving", "server_mode", "durability", "execs_running", "execs_retained", "retained_bytes", "log_filesystem", "state_filesystem", "mounts_active", "mount_paths", "tls_not_after", "task_id", "keeper_pid")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECS_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    METRICS_LISTEN_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    SERVER_MODE_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    EXECS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    EXECS_RETAINED_FIELD_NUMBER: _ClassVar[int]
    RETAINED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOG_FILESYSTEM_FIELD_NUMBER: _ClassVar[int]
    STATE_FILESYSTEM_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    MOUNT_PATHS_FIELD_NUMBER: _ClassVar[int]
    TLS_NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KEEPER_PID_FIELD_NUMBER: _ClassVar[int]
    version: str
    started_at: float
    uptime_secs: float
    listen: str
    metrics_listen: str
    pid: int
    serving: str
    server_mode: str
    durability: str
    execs_running: int
    execs_retained: int
    retained_bytes: int
    log_filesystem: FilesystemSpace
    state_filesystem: FilesystemSpace
    mounts_active: int
    mount_paths: _containers.RepeatedScalarFieldContainer[bytes]
    tls_not_after: float
    task_id: str
    keeper_pid: int
    def __init__(self, version: _Optional[str] = ..., started_at: _Optional[float] = ..., uptime_secs: _Optional[float] = ..., listen: _Optional[str] = ..., metrics_listen: _Optional[str] = ..., pid: _Optional[int] = ..., serving: _Optional[str] = ..., server_mode: _Optional[str] = ..., durability: _Optional[str] = ..., execs_running: _Optional[int] = ..., execs_retained: _Optional[int] = ..., retained_bytes: _Optional[int] = ..., log_filesystem: _Optional[_Union[FilesystemSpace, _Mapping]] = ..., state_filesystem: _Optional[_Union[FilesystemSpace, _Mapping]] = ..., mounts_active: _Optional[int] = ..., mount_paths: _Optional[_Iterable[bytes]] = ..., tls_not_after: _Optional[float] = ..., task_id: _Optional[str] = ..., keeper_pid: _Optional[int] = ...) -> None: ...
