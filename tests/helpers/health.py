"""grpc.health.v1 probes of a router, as an orchestrator makes them."""
from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS = "router.liveness"


def health(listen: str, service: str = "") -> int:
    """The status of `service` ("" is readiness) on a fresh plaintext channel."""
    with grpc.insecure_channel(listen) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        return int(check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)
