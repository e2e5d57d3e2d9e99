"""The Kubernetes manifests (deploy/kubernetes: a kustomize base and an example site overlay) rendered offline
with ``kubectl kustomize`` and every object validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict); then what the deployment needs: GPU workers, the receiver's Service and probes,
the Secrets, the shared spool claim, non-root pods, command lines and settings that fairnode accepts."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError

from fairnode.settings import load_settings
from tests.conftest import require_tool
from tests.deploy.conftest import DEPLOY, parse_command

KUBERNETES = DEPLOY / "kubernetes"
VERSION = "1.32.0"
SECRET_FILES = ("pseudonym.key", "session.secret", "registry.url", "tls.crt", "tls.key", "ca.crt")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, Any]]:
    """The example overlay rendered, keyed by (kind, name); its secret files are placeholders made here."""
    kubectl = require_tool("kubectl")
    tree = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    for name in SECRET_FILES:
        (tree / "overlays" / "example" / "secrets" / name).write_text(f"placeholder {name}\n", encoding="utf-8")
    result = subprocess.run(
        [kubectl, "kustomize", str(tree / "overlays" / "example")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    return {
        (d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "Secret" else d["metadata"]["name"]): d
        for d in objects
    }


def test_every_object_is_valid_kubernetes(rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    for obj in rendered.values():
        kubernetes_validate.validate(obj, VERSION, strict=True)
    broken = copy.deepcopy(rendered[("Deployment", "fairnode-worker")])  # the check can fail
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_the_objects_a_site_deploys(rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert set(rendered) == {
        ("Namespace", "fairnode"),
        ("ConfigMap", "fairnode-config"),
        ("Secret", "fairnode-secrets"),
        ("Secret", "fairnode-tls"),
        ("PersistentVolumeClaim", "fairnode-spool"),
        ("Deployment", "fairnode-receiver"),
        ("Service", "fairnode-receiver"),
        ("Deployment", "fairnode-worker"),
    }
    assert all(o["metadata"].get("namespace") == "fairnode" for k, o in rendered.items() if k[0] != "Namespace")
    assert set(rendered[("Secret", "fairnode-secrets")]["data"]) == {"pseudonym-key", "session-secret", "registry-url"}
    tls = rendered[("Secret", "fairnode-tls")]
    assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    claim = rendered[("PersistentVolumeClaim", "fairnode-spool")]["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"] and claim["storageClassName"] == "nfs-client"


def _pod(rendered: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    pod: dict[str, Any] = rendered[("Deployment", name)]["spec"]["template"]["spec"]
    return pod


def test_workers_request_a_gpu_on_gpu_nodes(rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    worker = rendered[("Deployment", "fairnode-worker")]
    assert worker["spec"]["replicas"] == 2
    pod = _pod(rendered, "fairnode-worker")
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}  # the overlay's patch
    assert container["image"] == "registry.hospital.example/fairnode:0.1.0-cuda"
    name, params = parse_command(container["args"])
    assert name == "worker" and params["queues"] == "ct-abdomen,xr-knee" and params["concurrency"] == 1
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}


def test_receiver_service_probes_and_command(rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    pod = _pod(rendered, "fairnode-receiver")
    (container,) = pod["containers"]
    assert parse_command(container["args"]) == (
        "serve",
        {"role": "receiver", "config": Path("/etc/fairnode/fairnode.yaml")},
    )
    assert container["image"] == "registry.hospital.example/fairnode:0.1.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    service = rendered[("Service", "fairnode-receiver")]["spec"]
    labels = rendered[("Deployment", "fairnode-receiver")]["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["selector"].items())
    assert {(p["name"], p["port"]) for p in service["ports"]} == {("dicom", 11112), ("http", 8080)}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"dicom": 11112, "http": 8080}


@pytest.mark.parametrize("name", ["fairnode-receiver", "fairnode-worker"])
def test_pods_run_as_non_root_on_the_shared_spool_with_the_secrets(
    rendered: dict[tuple[str, str], dict[str, Any]], name: str
) -> None:
    pod = _pod(rendered, name)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["spool"]["persistentVolumeClaim"]["claimName"] == "fairnode-spool"
    assert volumes["tls"]["secret"]["secretName"] == rendered[("Secret", "fairnode-tls")]["metadata"]["name"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    secrets = rendered[("Secret", "fairnode-secrets")]
    assert {"FAIRNODE_REGISTRY_URL", "FAIRNODE_PSEUDONYM_SECRET"} <= set(refs)
    assert all(r["name"] == secrets["metadata"]["name"] and r["key"] in secrets["data"] for r in refs.values())
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["spool"] == "/var/lib/fairnode" and mounts["tls"] == "/etc/fairnode/tls"


def test_the_settings_file_is_accepted(
    rendered: dict[tuple[str, str], dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "fairnode.yaml"
    config.write_text(rendered[("ConfigMap", "fairnode-config")]["data"]["fairnode.yaml"], encoding="utf-8")
    for name in ("fairnode-receiver", "fairnode-worker"):  # the variables both set beside the file
        (container,) = _pod(rendered, name)["containers"]
        for e in container["env"]:
            monkeypatch.setenv(e["name"], e.get("value", f"secret-{e['name'].lower()}"))
    settings = load_settings(config)
    assert settings.jobs.mode == "celery" and settings.jobs.shared_root == Path("/var/lib/fairnode")
    assert settings.data_dir == Path("/var/lib/fairnode") and settings.jobs.metrics_port == 9100
    assert settings.tls.enabled and settings.tls.certificate == Path("/etc/fairnode/tls/tls.crt")
