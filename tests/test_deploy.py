"""deploy/: the Kubernetes manifests validated against Kubernetes' own schemas (offline: the
kubernetes-validate package ships them), and what the schemas cannot see: the router's flags as
its own parser reads them, probes on the port they are served on, a grace period that fits the
drain, mounted paths for every file a flag names, privileges that fit the mount method. Validated,
never applied: no cluster runs in CI."""
from __future__ import annotations

import copy
import os
import pathlib
from typing import Any

import pytest
import yaml

from router.cli.parser import parser
from router.server.grpc_server import LIVENESS_SERVICE
from tests.helpers.certs import CA, write
from tests.helpers.health import LIVENESS, SERVING, health
from tests.helpers.processes import run_router
from tests.helpers.servers import free_port, router_process

DEPLOY = pathlib.Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes the manifests are for (container-level appArmorProfile: 1.30; gRPC probes:
# 1.27), and the newest the package knows.
OLDEST = "1.30.0"

try:
    import kubernetes_validate
except ImportError:  # the `test` extra installs it; CI must have it
    if os.environ.get("CI"):
        raise
    kubernetes_validate = None


def documents() -> list[dict[str, Any]]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def kind(name: str) -> dict[str, Any]:
    [found] = [d for d in documents() if d["kind"] == name]
    return found


def router_container() -> dict[str, Any]:
    [container] = kind("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return container


def serve_args(pod: str = "router-0") -> Any:
    """The container's args as `router` parses them, $(POD_NAME) expanded as the kubelet does."""
    container = router_container()
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    args = [a.replace("$(POD_NAME)", pod) for a in container["args"]]
    return parser().parse_args(args)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.fixture
def validate() -> Any:
    if kubernetes_validate is None:
        pytest.skip("kubernetes-validate is not installed (pip install -e '.[test]')")
    latest = kubernetes_validate.latest_version()

    def check(document: dict[str, Any]) -> None:
        for version in (OLDEST, latest):
            kubernetes_validate.validate(document, version, strict=True)
    return check


def test_every_manifest_is_valid_kubernetes(validate: Any) -> None:
    assert {"StatefulSet", "Service", "PodDisruptionBudget"} <= {d["kind"] for d in documents()}
    for document in documents():
        validate(document)


@pytest.mark.parametrize("breakage", ["a misspelt field", "a wrong type", "a missing field"])
def test_a_broken_manifest_fails_validation(validate: Any, breakage: str) -> None:
    broken = copy.deepcopy(kind("StatefulSet"))
    pod = broken["spec"]["template"]["spec"]
    if breakage == "a misspelt field":
        pod["containers"][0]["readinessProbe"]["grpc"]["servce"] = ""
    elif breakage == "a wrong type":
        pod["terminationGracePeriodSeconds"] = "300s"
    else:
        del pod["containers"][0]["livenessProbe"]["grpc"]["port"]
    assert kubernetes_validate is not None
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_the_args_are_the_routers_own_flags_and_the_task_is_the_pods_name() -> None:
    args = serve_args("router-2")
    assert args.cmd == "serve" and args.task_id == "router-2"
    assert router_container()["image"].startswith("registry.example.com/task-command-router:")  # deploy/Dockerfile
    assert "ENTRYPOINT [\"router\"]" in (DEPLOY / "Dockerfile").read_text()


def test_probes_ask_the_health_port_for_readiness_and_liveness() -> None:
    container, args = router_container(), serve_args()
    health = port_of(args.health_listen)
    assert port_of(args.listen) != health != port_of(args.metrics_listen)
    assert {"name": "health", "containerPort": health} in container["ports"]
    assert container["readinessProbe"]["grpc"] == {"port": health, "service": ""}
    assert container["livenessProbe"]["grpc"] == {"port": health, "service": LIVENESS_SERVICE}
    assert container["startupProbe"]["grpc"] == {"port": health, "service": LIVENESS_SERVICE}


def test_the_headless_service_fronts_the_grpc_and_metrics_ports() -> None:
    service, stateful, args = kind("Service"), kind("StatefulSet"), serve_args()
    assert service["spec"]["clusterIP"] == "None" and stateful["spec"]["serviceName"] == service["metadata"]["name"]
    labels = stateful["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in router_container()["ports"]}
    assert container_ports["grpc"] == port_of(args.listen)
    assert container_ports["metrics"] == port_of(args.metrics_listen)
    served = {(p["name"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert served == {("grpc", "grpc"), ("metrics", "metrics")}


def test_the_grace_period_fits_the_drain() -> None:
    grace = kind("StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # After the drain: ending what still runs and up to 2 s for the calls in flight (README, "Draining").
    assert grace >= serve_args().drain_secs + 5


def test_every_file_a_flag_names_is_on_a_volume_it_can_be() -> None:
    stateful, args = kind("StatefulSet"), serve_args()
    pod = stateful["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in router_container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {c["metadata"]["name"] for c in stateful["spec"]["volumeClaimTemplates"]}
    state = mounts[str(pathlib.PurePosixPath(args.state_dir).parent)]  # a directory in the volume
    assert state["name"] in claims and not state.get("readOnly")
    # A Secret of kubernetes.io/tls holds tls.crt and tls.key; the token key's Secret, jwt.key.
    for path in (args.jwt_key_file, args.tls_cert, args.tls_key):
        where = pathlib.PurePosixPath(path)
        mount = mounts[str(where.parent)]
        assert mount["readOnly"] and "secret" in volumes[mount["name"]], path
    names = [pathlib.PurePosixPath(path).name for path in (args.jwt_key_file, args.tls_cert, args.tls_key)]
    assert names == ["jwt.key", "tls.crt", "tls.key"]


def test_privileges_fit_the_mount_method() -> None:
    context = router_container()["securityContext"]
    method = serve_args().mount_method
    if method == "copy":  # needs nothing: the restricted profile
        assert context.get("runAsNonRoot") and context["capabilities"]["drop"] == ["ALL"]
    else:  # overlay (or auto choosing it): mount(2) as root with CAP_SYS_ADMIN, AppArmor out of the way
        assert context.get("privileged") or "SYS_ADMIN" in context["capabilities"]["add"]
        assert context["runAsUser"] == 0 and context.get("allowPrivilegeEscalation") is not False
        assert context["appArmorProfile"] == {"type": "Unconfined"}


def test_the_containers_args_start_a_router_whose_probes_and_token_work(tmp_path: pathlib.Path) -> None:
    """The StatefulSet's args as they are, but for where things are on this machine: its mounts in
    tmp_path, its addresses on loopback (free ports), copy mounts (no privilege here)."""
    container = router_container()
    ca = CA("fleet CA")
    cert, key = ca.issue("router", server=True)
    places = {m["mountPath"]: tmp_path / m["name"] for m in container["volumeMounts"]}
    for place in places.values():
        place.mkdir()
    write(places["/etc/router/tls"], "tls.crt", cert)
    write(places["/etc/router/tls"], "tls.key", key)
    (places["/etc/router/token"] / "jwt.key").write_text(os.urandom(32).hex() + "\n")
    args = []
    for arg in container["args"][1:]:  # after `serve`
        for mount, place in places.items():
            arg = arg.replace(mount, str(place))
        if arg.startswith("--mount-method="):
            arg = "--mount-method=copy"
        if "0.0.0.0:" in arg:
            arg = arg.split("0.0.0.0:")[0] + f"127.0.0.1:{free_port()}"
        args.append(arg.replace("$(POD_NAME)", "router-0"))
    probe = next(a for a in args if a.startswith("--health-listen=")).split("=")[1]
    with router_process(places["/var/lib/router"] / "state", *args, drain_secs=None) as (_, listen):
        assert health(probe) == SERVING and health(probe, LIVENESS) == SERVING
        key_file = str(places["/etc/router/token"] / "jwt.key")
        token = run_router("token", "--jwt-key-file", key_file, "--task-id", "router-0").stdout.decode().strip()
        listed = run_router("ls", "--target", listen, "--token", token, "--task-id", "router-0",
                            "--tls-ca", write(tmp_path, "ca.pem", ca.pem()))
        assert listed.returncode == 0, listed.stderr
