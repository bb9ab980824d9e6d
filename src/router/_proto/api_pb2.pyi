from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PTYInfo(_message.Message):
    __slots__ = ("enabled", "winsz_rows", "winsz_cols", "env_term", "env_colorterm", "env_term_program", "pty_type", "no_terminate_on_idle_stdin")
    class PTYType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PTY_TYPE_UNSPECIFIED: _ClassVar[PTYInfo.PTYType]
        PTY_TYPE_FUNCTION: _ClassVar[PTYInfo.PTYType]
        PTY_TYPE_SHELL: _ClassVar[PTYInfo.PTYType]
    PTY_TYPE_UNSPECIFIED: PTYInfo.PTYType
    PTY_TYPE_FUNCTION: PTYInfo.PTYType
    PTY_TYPE_SHELL: PTYInfo.PTYType
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    WINSZ_ROWS_FIELD_NUMBER: _ClassVar[int]
    WINSZ_COLS_FIELD_NUMBER: _ClassVar[int]
    ENV_TERM_FIELD_NUMBER: _ClassVar[int]
    ENV_COLORTERM_FIELD_NUMBER: _ClassVar[int]
    ENV_TERM_PROGRAM_FIELD_NUMBER: _ClassVar[int]
    PTY_TYPE_FIELD_NUMBER: _ClassVar[int]
    NO_TERMINATE_ON_IDLE_STDIN_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    winsz_rows: int
    winsz_cols: int
    env_term: str
    env_colorterm: str
    env_term_program: str
    pty_type: PTYInfo.PTYType
    no_terminate_on_idle_stdin: bool
    def __init__(self, enabled: _Optional[bool] = ..., winsz_rows: _Optional[int] = ..., winsz_cols: _Optional[int] = ..., env_term: _Optional[str] = ..., env_colorterm: _Optional[str] = ..., env_term_program: _Optional[str] = ..., pty_type: _Optional[_Union[PTYInfo.PTYType, str]] = ..., no_terminate_on_idle_stdin: _Optional[bool] = ...) -> None: ...

class StringMap(_message.Message):
    __slots__ = ("contents",)
    class ContentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONTENTS_FIELD_NUMBER: _ClassVar[int]
    contents: _containers.ScalarMap[str, str]
    def __init__(self, contents: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SecretSource(_message.Message):
    __slots__ = ("secret_id", "env")
    SECRET_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    secret_id: str
    env: StringMap
    def __init__(self, secret_id: _Optional[str] = ..., env: _Optional[_Union[StringMap, _Mapping]] = ...) -> None: ...

class RPCRetryPolicy(_message.Message):
    __slots__ = ("retry_after_secs",)
    RETRY_AFTER_SECS_FIELD_NUMBER: _ClassVar[int]
    retry_after_secs: float
    def __init__(self, retry_after_secs: _Optional[float] = ...) -> None: ...
