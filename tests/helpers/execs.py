"""What an exec is started with: output configurations, start requests, small child programs."""
from __future__ import annotations

import sys
from typing import Any, TypedDict

from router._proto import task_command_router_pb2 as pb

from .servers import TASK_ID


class Pipes(TypedDict):
    """Keyword arguments that configure both output streams (a start request's, a client's start())."""

    stdout_config: pb.TaskExecStdoutConfig
    stderr_config: pb.TaskExecStderrConfig


# Both output streams piped: what most tests start an exec with.
PIPES: Pipes = {"stdout_config": pb.TASK_EXEC_STDOUT_CONFIG_PIPE, "stderr_config": pb.TASK_EXEC_STDERR_CONFIG_PIPE}


def start_request(exec_id: str, args: list[str], **fields: Any) -> pb.TaskExecStartRequest:
    """A TaskExecStartRequest for this suite's task; both streams piped unless `fields` say otherwise."""
    fields.setdefault("stdout_config", pb.TASK_EXEC_STDOUT_CONFIG_PIPE)
    fields.setdefault("stderr_config", pb.TASK_EXEC_STDERR_CONFIG_PIPE)
    return pb.TaskExecStartRequest(task_id=TASK_ID, exec_id=exec_id, command_args=args, **fields)


def py(code: str) -> list[str]:
    """A tiny Python child program."""
    return [sys.executable, "-u", "-c", code]
