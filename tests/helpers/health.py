"""grpc.health.v1 as an orchestrator probes it: readiness on the overall service "", liveness on
router.liveness."""
from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(listen: str, service: str) -> int:
    """The status a Check of `service` answers at HOST:PORT `listen`, over a channel of its own."""
    with grpc.insecure_channel(listen) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        return check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def ready(listen: str) -> bool:
    return health(listen, "") == SERVING
