"""The Helm chart (deploy/helm/fairnode) checked offline: ``helm lint --strict``, ``helm template`` with the
example site's values and with chart-made Secrets, every rendered object validated against the Kubernetes
OpenAPI schemas (kubernetes-validate, strict); then what a site sets through values: GPU requests and node
selectors per worker set, the Secrets (made or existing), the settings file fairnode accepts, and the
messages of missing required values."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import IN_CI
from tests.deploy.conftest import DEPLOY, Objects, check_pod, check_receiver, deployed_settings, parse_command, pod_spec
from tests.deploy.test_kubernetes import VERSION

CHART = DEPLOY / "helm" / "fairnode"
SITE_VALUES = DEPLOY / "helm" / "example-values.yaml"
LOCAL_HELM = DEPLOY.parent / ".tools" / "bin" / "helm"
SECRET_VALUES = {
    "secrets.pseudonymKey": "pseudonym.key",
    "secrets.sessionSecret": "session.secret",
    "secrets.registryUrl": "registry.url",
    "tls.crt": "tls.crt",
    "tls.key": "tls.key",
    "tls.ca": "ca.crt",
}


@pytest.fixture(scope="module")
def helm() -> str:
    """The helm binary of deploy/k8s-tools.sh (or one on PATH); in CI a missing helm fails the tests."""
    path = str(LOCAL_HELM) if LOCAL_HELM.is_file() else shutil.which("helm")
    if path is None:
        if IN_CI:
            pytest.fail("helm is not installed; deploy/system-deps.sh (deploy/k8s-tools.sh) should have installed it")
        pytest.skip("helm is not installed (run deploy/k8s-tools.sh)")
    return path


def _helm(helm: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def _template(helm: str, *args: str | Path) -> Objects:
    result = _helm(helm, "template", "fairnode", CHART, "--namespace", "fairnode", *args)
    assert result.returncode == 0, result.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}


@pytest.fixture(scope="module")
def secret_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--set-file`` arguments with placeholder secret files, for the chart to make its own Secrets."""
    folder = tmp_path_factory.mktemp("secrets")
    args = []
    for key, name in SECRET_VALUES.items():
        (folder / name).write_text(f"placeholder {name}\n", encoding="utf-8")
        args += ["--set-file", f"{key}={folder / name}"]
    return args


@pytest.fixture(scope="module")
def site(helm: str) -> Objects:
    """The example site's values: existing Secrets, its storage class and GPU node label."""
    return _template(helm, "-f", SITE_VALUES)


@pytest.fixture(scope="module")
def made(helm: str, secret_files: list[str]) -> Objects:
    """The chart's defaults, an image and the secret values: the chart makes the Secrets."""
    return _template(helm, "--set", "image.repository=registry.hospital.example/fairnode", *secret_files)


def test_lint_strict(helm: str, secret_files: list[str]) -> None:
    for args in (["-f", str(SITE_VALUES)], ["--set", "image.repository=r/fairnode", *secret_files]):
        result = _helm(helm, "lint", "--strict", CHART, *args)
        assert result.returncode == 0, result.stdout + result.stderr
    broken = _helm(helm, "lint", "--strict", CHART, "-f", SITE_VALUES, "--set", "receiver.replicas=[1")
    assert broken.returncode != 0  # the check can fail


def test_every_object_is_valid_kubernetes(site: Objects, made: Objects) -> None:
    for obj in [*site.values(), *made.values()]:
        kubernetes_validate.validate(obj, VERSION, strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fairnode"
    assert set(site) == {
        ("ConfigMap", "fairnode-config"),
        ("PersistentVolumeClaim", "fairnode-spool"),
        ("Deployment", "fairnode-receiver"),
        ("Service", "fairnode-receiver"),
        ("Deployment", "fairnode-worker-gpu"),
    }
    assert set(made) - set(site) == {("Secret", "fairnode-secrets"), ("Secret", "fairnode-tls")}


def test_the_site_values_mirror_the_kustomize_overlay(site: Objects) -> None:
    claim = site[("PersistentVolumeClaim", "fairnode-spool")]["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"] and claim["storageClassName"] == "nfs-client"
    assert site[("Deployment", "fairnode-worker-gpu")]["spec"]["replicas"] == 2
    pod = pod_spec(site, "fairnode-worker-gpu")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    (container,) = pod["containers"]
    assert container["image"] == "registry.hospital.example/fairnode:0.1.0-cuda"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    name, params = parse_command(container["args"])
    assert name == "worker" and params["queues"] == "ct-abdomen,xr-knee" and params["concurrency"] == 1
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}


def test_one_worker_deployment_per_queue_set(helm: str, tmp_path: Path) -> None:
    values = {
        "image": {"repository": "r/fairnode", "tag": "1.2.3"},
        "secrets": {"existingSecret": "s"},
        "tls": {"existingSecret": "t"},
        "workers": [
            {
                "name": "ct",
                "queues": ["ct-abdomen"],
                "concurrency": 2,
                "replicas": 3,
                "gpus": 2,
                "nodeSelector": {"gpu": "a100"},
            },
            {"name": "xr", "queues": ["xr-knee", "xr-chest"], "gpus": 0, "nodeSelector": {"pool": "cpu"}},
        ],
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values), encoding="utf-8")
    objects = _template(helm, "-f", tmp_path / "values.yaml")
    for obj in objects.values():
        kubernetes_validate.validate(obj, VERSION, strict=True)
    ct, xr = pod_spec(objects, "fairnode-worker-ct"), pod_spec(objects, "fairnode-worker-xr")
    assert objects[("Deployment", "fairnode-worker-ct")]["spec"]["replicas"] == 3
    assert ct["nodeSelector"] == {"gpu": "a100"} and xr["nodeSelector"] == {"pool": "cpu"}
    (gpu,), (cpu,) = ct["containers"], xr["containers"]
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == 2 and gpu["image"] == "r/fairnode:1.2.3-cuda"
    assert "nvidia.com/gpu" not in cpu["resources"]["requests"] and cpu["image"] == "r/fairnode:1.2.3"
    assert parse_command(gpu["args"])[1]["concurrency"] == 2
    assert parse_command(cpu["args"])[1]["queues"] == "xr-knee,xr-chest"
    assert {e["name"]: e.get("value") for e in cpu["env"]}["FAIRNODE_PREFER_GPU"] == "false"
    selectors = [
        objects[("Deployment", n)]["spec"]["selector"]["matchLabels"]
        for n in ("fairnode-receiver", "fairnode-worker-ct", "fairnode-worker-xr")
    ]
    assert len({tuple(sorted(s.items())) for s in selectors}) == 3  # no Deployment adopts another's pods


def test_receiver_service_probes_and_command(made: Objects) -> None:
    check_receiver(made)


@pytest.mark.parametrize("name", ["fairnode-receiver", "fairnode-worker-gpu"])
@pytest.mark.parametrize("which", ["site", "made"])
def test_pods_run_as_non_root_on_the_shared_spool_with_the_secrets(
    request: pytest.FixtureRequest, which: str, name: str
) -> None:
    objects: Objects = request.getfixturevalue(which)
    refs = check_pod(objects, name, tls_secret="fairnode-tls", secrets="fairnode-secrets")
    if which == "made":
        assert all(r["key"] in made_data(objects) for r in refs.values())
        assert objects[("Secret", "fairnode-tls")]["type"] == "kubernetes.io/tls"


def made_data(objects: Objects) -> dict[str, str]:
    data: dict[str, str] = objects[("Secret", "fairnode-secrets")]["data"]
    assert set(data) == {"pseudonym-key", "session-secret", "registry-url"}
    return data


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "image.repository="], "image.repository is required"),
        (["--set", "secrets.existingSecret="], "secrets.pseudonymKey is required (or secrets.existingSecret)"),
        (["--set", "tls.existingSecret="], "tls.crt is required (or tls.existingSecret)"),
        (["--set", "workers[0].queues=null"], "workers[gpu].queues is required"),
    ],
)
def test_a_missing_required_value_fails_with_its_message(helm: str, args: list[str], message: str) -> None:
    result = _helm(helm, "template", "fairnode", CHART, "-f", SITE_VALUES, *args)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_the_settings_file_is_accepted(site: Objects, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the variables both pods set beside the file
    settings = deployed_settings(site, ("fairnode-receiver", "fairnode-worker-gpu"), tmp_path, monkeypatch)
    assert settings.jobs.broker_url == "redis://fairnode-redis:6379/0"
    assert settings.port == 11112 and settings.http_port == 8080
