"""The Kubernetes manifests (deploy/kubernetes: a kustomize base and an example site overlay) rendered offline
with ``kubectl kustomize`` and every object validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict); then what the deployment needs: GPU workers, the receiver's Service and probes,
the Secrets, the shared spool claim, non-root pods, command lines and settings that fairnode accepts."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError

from tests.conftest import require_tool
from tests.deploy.conftest import DEPLOY, Objects, check_pod, check_receiver, deployed_settings, parse_command, pod_spec

KUBERNETES = DEPLOY / "kubernetes"
VERSION = "1.32.0"
SECRET_FILES = ("pseudonym.key", "session.secret", "registry.url", "tls.crt", "tls.key", "ca.crt")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Objects:
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


def test_every_object_is_valid_kubernetes(rendered: Objects) -> None:
    for obj in rendered.values():
        kubernetes_validate.validate(obj, VERSION, strict=True)
    broken = copy.deepcopy(rendered[("Deployment", "fairnode-worker")])  # the check can fail
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_the_objects_a_site_deploys(rendered: Objects) -> None:
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


def test_workers_request_a_gpu_on_gpu_nodes(rendered: Objects) -> None:
    worker = rendered[("Deployment", "fairnode-worker")]
    assert worker["spec"]["replicas"] == 2
    pod = pod_spec(rendered, "fairnode-worker")
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}  # the overlay's patch
    assert container["image"] == "registry.hospital.example/fairnode:0.1.0-cuda"
    name, params = parse_command(container["args"])
    assert name == "worker" and params["queues"] == "ct-abdomen,xr-knee" and params["concurrency"] == 1
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}


def test_receiver_service_probes_and_command(rendered: Objects) -> None:
    check_receiver(rendered)


@pytest.mark.parametrize("name", ["fairnode-receiver", "fairnode-worker"])
def test_pods_run_as_non_root_on_the_shared_spool_with_the_secrets(rendered: Objects, name: str) -> None:
    secrets = rendered[("Secret", "fairnode-secrets")]
    refs = check_pod(
        rendered,
        name,
        tls_secret=rendered[("Secret", "fairnode-tls")]["metadata"]["name"],
        secrets=secrets["metadata"]["name"],
    )
    assert all(r["key"] in secrets["data"] for r in refs.values())


def test_the_settings_file_is_accepted(rendered: Objects, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the variables both pods set beside the file
    deployed_settings(rendered, ("fairnode-receiver", "fairnode-worker"), tmp_path, monkeypatch)
