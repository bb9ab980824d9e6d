"""The generated stub with auth metadata, for tests that look at exact status codes."""
from __future__ import annotations

from typing import Any

import grpc
from google.rpc import status_pb2

from router._proto import api_pb2
from router._proto import task_command_router_pb2_grpc as pb_grpc
from router.client import CHANNEL_OPTIONS


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that presents `token`."""
    return (("authorization", f"Bearer {token}"),)


def retry_after(error: grpc.RpcError) -> float:
    """The delay of the Modal RPCRetryPolicy that a refused call carries (KeyError if none)."""
    status = status_pb2.Status.FromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
    policies = [d for d in status.details if d.type_url == "type.modal.com/modal.client.RPCRetryPolicy"]
    if not policies:
        raise KeyError("no RPCRetryPolicy in the status details")
    return float(api_pb2.RPCRetryPolicy.FromString(policies[0].value).retry_after_secs)


class Raw:
    """The generated stub with auth metadata, for tests that look at exact status codes. Closes its
    channel at the end of a `with` block. Channels to one port share a connection unless
    `own_connection` (grpc pools them per process)."""

    def __init__(self, port: int, token: str, *, own_connection: bool = False) -> None:
        options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)] if own_connection else CHANNEL_OPTIONS
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
        self.stub = pb_grpc.TaskCommandRouterStub(self.channel)
        self.token = token
        self.metadata: tuple[tuple[str, str], ...] = bearer(token)

    def call(self, name: str, request: object, timeout: float | None = 30.0,
             metadata: tuple[tuple[str, str | bytes], ...] | None = None) -> Any:
        """Method `name` of the stub called with `request`: its response (a stream call's iterator)."""
        return getattr(self.stub, name)(request, timeout=timeout,
                                        metadata=self.metadata if metadata is None else metadata)

    def code(self, name: str, request: object, timeout: float | None = 30.0,
             metadata: tuple[tuple[str, str | bytes], ...] | None = None) -> grpc.StatusCode:
        """The status code a call ends with (OK included); stream calls are read to the end."""
        try:
            result = self.call(name, request, timeout=timeout, metadata=metadata)
            if name == "TaskExecStdioRead":
                list(result)
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.channel.close()
