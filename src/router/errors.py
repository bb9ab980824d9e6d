"""The one exception type that handlers turn into a gRPC status."""
from __future__ import annotations

import grpc


class RouterError(Exception):
    """A request failed with a definite gRPC status code and a message for the caller.

    `retry_after` (seconds) is set on throttling errors: the server then attaches Modal's
    RPCRetryPolicy so that the client retries RESOURCE_EXHAUSTED after that delay.
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


def invalid(field: str, why: str) -> RouterError:
    return RouterError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {why}")


def not_found(message: str) -> RouterError:
    return RouterError(grpc.StatusCode.NOT_FOUND, message)


# How long a throttled client is told to wait before it tries again.
RETRY_AFTER_SECS = 1.0


def throttled(message: str, retry_after: float) -> RouterError:
    return RouterError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after=retry_after)
