from google.protobuf import empty_pb2 as _empty_pb2
from router._proto import api_pb2 as _api_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskExecStderrConfig(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_EXEC_STDERR_CONFIG_DEVNULL: _ClassVar[TaskExecStderrConfig]
    TASK_EXEC_STDERR_CONFIG_PIPE: _ClassVar[TaskExecStderrConfig]
    TASK_EXEC_STDERR_CONFIG_STDOUT: _ClassVar[TaskExecStderrConfig]

class TaskExecStdioFileDescriptor(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT: _ClassVar[TaskExecStdioFileDescriptor]
    TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR: _ClassVar[TaskExecStdioFileDescriptor]

class TaskExecStdoutConfig(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_EXEC_STDOUT_CONFIG_DEVNULL: _ClassVar[TaskExecStdoutConfig]
    TASK_EXEC_STDOUT_CONFIG_PIPE: _ClassVar[TaskExecStdoutConfig]
TASK_EXEC_STDERR_CONFIG_DEVNULL: TaskExecStderrConfig
TASK_EXEC_STDERR_CONFIG_PIPE: TaskExecStderrConfig
TASK_EXEC_STDERR_CONFIG_STDOUT: TaskExecStderrConfig
TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT: TaskExecStdioFileDescriptor
TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR: TaskExecStdioFileDescriptor
TASK_EXEC_STDOUT_CONFIG_DEVNULL: TaskExecStdoutConfig
TASK_EXEC_STDOUT_CONFIG_PIPE: TaskExecStdoutConfig

class TaskExecPollRequest(_message.Message):
    __slots__ = ("task_id", "exec_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    exec_id: str
    def __init__(self, task_id: _Optional[str] = ..., exec_id: _Optional[str] = ...) -> None: ...

class TaskExecPollResponse(_message.Message):
    __slots__ = ("code", "signal")
    CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    code: int
    signal: int
    def __init__(self, code: _Optional[int] = ..., signal: _Optional[int] = ...) -> None: ...

class TaskExecStartRequest(_message.Message):
    __slots__ = ("task_id", "exec_id", "command_args", "stdout_config", "stderr_config", "timeout_secs", "workdir", "secret_ids", "pty_info", "runtime_debug", "container_id", "env", "secret_sources")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ARGS_FIELD_NUMBER: _ClassVar[int]
    STDOUT_CONFIG_FIELD_NUMBER: _ClassVar[int]
    STDERR_CONFIG_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECS_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    SECRET_IDS_FIELD_NUMBER: _ClassVar[int]
    PTY_INFO_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_DEBUG_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    SECRET_SOURCES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    exec_id: str
    command_args: _containers.RepeatedScalarFieldContainer[str]
    stdout_config: TaskExecStdoutConfig
    stderr_config: TaskExecStderrConfig
    timeout_secs: int
    workdir: str
    secret_ids: _containers.RepeatedScalarFieldContainer[str]
    pty_info: _api_pb2.PTYInfo
    runtime_debug: bool
    container_id: str
    env: _containers.ScalarMap[str, str]
    secret_sources: _containers.RepeatedCompositeFieldContainer[_api_pb2.SecretSource]
    def __init__(self, task_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., command_args: _Optional[_Iterable[str]] = ..., stdout_config: _Optional[_Union[TaskExecStdoutConfig, str]] = ..., stderr_config: _Optional[_Union[TaskExecStderrConfig, str]] = ..., timeout_secs: _Optional[int] = ..., workdir: _Optional[str] = ..., secret_ids: _Optional[_Iterable[str]] = ..., pty_info: _Optional[_Union[_api_pb2.PTYInfo, _Mapping]] = ..., runtime_debug: _Optional[bool] = ..., container_id: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., secret_sources: _Optional[_Iterable[_Union[_api_pb2.SecretSource, _Mapping]]] = ...) -> None: ...

class TaskExecStartResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskExecStdinWriteRequest(_message.Message):
    __slots__ = ("task_id", "exec_id", "offset", "data", "eof")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    exec_id: str
    offset: int
    data: bytes
    eof: bool
    def __init__(self, task_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., eof: _Optional[bool] = ...) -> None: ...

class TaskExecStdinWriteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskExecStdioReadRequest(_message.Message):
    __slots__ = ("task_id", "exec_id", "offset", "file_descriptor")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FILE_DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    exec_id: str
    offset: int
    file_descriptor: TaskExecStdioFileDescriptor
    def __init__(self, task_id: _Optional[str] = ..., exec_id: _Optional[str] = ..., offset: _Optional[int] = ..., file_descriptor: _Optional[_Union[TaskExecStdioFileDescriptor, str]] = ...) -> None: ...

class TaskExecStdioReadResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class TaskExecWaitRequest(_message.Message):
    __slots__ = ("task_id", "exec_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    exec_id: str
    def __init__(self, task_id: _Optional[str] = ..., exec_id: _Optional[str] = ...) -> None: ...

class TaskExecWaitResponse(_message.Message):
    __slots__ = ("code", "signal")
    CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    code: int
    signal: int
    def __init__(self, code: _Optional[int] = ..., signal: _Optional[int] = ...) -> None: ...

class TaskMountDirectoryRequest(_message.Message):
    __slots__ = ("task_id", "path", "image_id", "customer_supplied_encryption_key", "container_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_SUPPLIED_ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    path: bytes
    image_id: str
    customer_supplied_encryption_key: bytes
    container_id: str
    def __init__(self, task_id: _Optional[str] = ..., path: _Optional[bytes] = ..., image_id: _Optional[str] = ..., customer_supplied_encryption_key: _Optional[bytes] = ..., container_id: _Optional[str] = ...) -> None: ...

class TaskUnmountDirectoryRequest(_message.Message):
    __slots__ = ("task_id", "path", "container_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    path: bytes
    container_id: str
    def __init__(self, task_id: _Optional[str] = ..., path: _Optional[bytes] = ..., container_id: _Optional[str] = ...) -> None: ...

class TaskSnapshotDirectoryRequest(_message.Message):
    __slots__ = ("task_id", "path", "snapshot_id", "ttl_seconds", "customer_supplied_encryption_key", "container_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_SUPPLIED_ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    path: bytes
    snapshot_id: str
    ttl_seconds: int
    customer_supplied_encryption_key: bytes
    container_id: str
    def __init__(self, task_id: _Optional[str] = ..., path: _Optional[bytes] = ..., snapshot_id: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., customer_supplied_encryption_key: _Optional[bytes] = ..., container_id: _Optional[str] = ...) -> None: ...

class TaskSnapshotDirectoryResponse(_message.Message):
    __slots__ = ("image_id",)
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    def __init__(self, image_id: _Optional[str] = ...) -> None: ...
