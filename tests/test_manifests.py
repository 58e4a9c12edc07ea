"""deploy/kubernetes and the Dockerfile agree with the server's flags and defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from jobqueue_grpc.api.auth import parse_tokens
from jobqueue_grpc.cli import build_parser
from jobqueue_grpc.config import Settings
from jobqueue_grpc.server import LIVENESS

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
DRAIN_MARGIN = 5  # seconds past preStop + grace for releasing what is left and exiting


def docs() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def one(kind: str, name: str = "jobqueue-grpc") -> dict[str, Any]:
    found = [d for d in docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod["containers"]
    return dict(c)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def settings_from_env(container: dict[str, Any]) -> Settings:
    """The Settings the container would run with (secret-sourced values left at defaults)."""
    values = {
        name.removeprefix("JOBQUEUE_").lower(): value
        for name, value in env_of(container).items()
        if isinstance(value, str)
    }
    return Settings(**values)


def test_every_manifest_parses_and_kustomization_lists_them() -> None:
    kinds = sorted(d["kind"] for d in docs())
    assert kinds == ["Deployment", "PodDisruptionBudget", "Secret", "Service", "Service"]
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.stem != "kustomization")


def test_env_names_are_real_settings(container: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    for name in env_of(container):
        assert name.startswith("JOBQUEUE_")
        assert name.removeprefix("JOBQUEUE_").lower() in fields, name


def test_args_are_real_flags(container: dict[str, Any]) -> None:
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"


def test_container_listens_where_probes_and_services_look(container: dict[str, Any]) -> None:
    s = settings_from_env(container)
    assert s.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": s.port, "metrics": s.metrics_port}
    assert s.port == Settings().port == 50051
    assert s.metrics_host == "0.0.0.0" and s.metrics_port != 0
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        grpc_probe = container[probe]["grpc"]  # Kubernetes' native gRPC health probe
        assert grpc_probe["port"] == s.port
        # readiness and start-up: the overall health (it follows the database); liveness: the
        # process itself, so that a database outage restarts nothing
        want = LIVENESS if probe == "livenessProbe" else ""
        assert grpc_probe.get("service", "") == want
    pod_annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(pod_annotations["prometheus.io/port"]) == s.metrics_port


def test_termination_grace_covers_the_drain(pod: dict[str, Any], container: dict[str, Any]) -> None:
    s = settings_from_env(container)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + s.grace_period + DRAIN_MARGIN


def test_liveness_is_more_patient_than_readiness(container: dict[str, Any]) -> None:
    def patience(p: dict[str, Any]) -> int:
        return int(p.get("periodSeconds", 10)) * int(p.get("failureThreshold", 3))

    assert patience(container["livenessProbe"]) > patience(container["readinessProbe"])


def test_resources_and_security(pod: dict[str, Any], container: dict[str, Any]) -> None:
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_secrets_feed_the_database_url_and_tokens(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    secret = one("Secret")
    env = env_of(container)
    ref = env["JOBQUEUE_DATABASE_URL"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    # The tokens file path points into the mounted Secret, at the key holding the tokens.
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    (item,) = volume["secret"]["items"]
    assert env["JOBQUEUE_AUTH_TOKENS_FILE"] == f"{mount['mountPath']}/{item['path']}"
    roles = {c.role.value for c in parse_tokens(secret["stringData"][item["key"]], "secret")}
    assert roles == {"producer", "worker", "admin"}
    # No token in the Deployment itself.
    assert "JOBQUEUE_AUTH_TOKENS" not in env


def test_services_and_pdb_select_the_pods() -> None:
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    ports = {
        p["name"] for p in one("Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    for name in ("jobqueue-grpc", "jobqueue-grpc-headless"):
        svc = one("Service", name)["spec"]
        assert svc["selector"].items() <= labels.items()
        for p in svc["ports"]:
            assert p["targetPort"] in ports
    grpc_port = next(p for p in one("Service")["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["port"] == Settings().port and grpc_port["appProtocol"] == "grpc"
    pdb = one("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert one("Deployment")["spec"]["replicas"] > pdb["maxUnavailable"]


def test_dockerfile() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / "Dockerfile").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(ln.startswith("RUN pip install '.[server]'") for ln in lines)  # serve needs it
    user = next(ln for ln in lines if ln.startswith("USER "))
    assert not user.split()[1].startswith(("root", "0"))
    assert 'ENTRYPOINT ["jobqueue-grpc"]' in lines and 'CMD ["serve"]' in lines
    assert any("JOBQUEUE_HOST=0.0.0.0" in ln for ln in lines)
    assert f"EXPOSE {Settings().port} {Settings().metrics_port}" in lines
