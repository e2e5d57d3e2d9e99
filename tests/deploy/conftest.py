"""Helpers of the deployment checks: where the assets are, the fairnode command lines they run, and the checks
that the Kubernetes manifests and the Helm chart share (the same receiver, pods and settings file, rendered two
ways)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from fairnode.cli import app
from fairnode.settings import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
#: Rendered Kubernetes objects by (kind, name).
Objects = dict[tuple[str, str], dict[str, Any]]


def parse_command(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``fairnode ARGS`` as the CLI would, without running it; returns the subcommand's name and its
    parameters. An unknown command or option, or a bad value, raises the CLI's usage error (a
    :class:`typer.exceptions.TyperException`)."""
    group: Any = typer.main.get_command(app)
    with group.make_context("fairnode", list(args), resilient_parsing=False) as ctx:
        name, command, rest = group.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert name is not None and command is not None
        with command.make_context(name, rest, parent=ctx) as sub:
            return name, dict(sub.params)


def pod_spec(objects: Objects, name: str) -> dict[str, Any]:
    """The pod template's spec of the Deployment ``name``."""
    pod: dict[str, Any] = objects[("Deployment", name)]["spec"]["template"]["spec"]
    return pod


def check_receiver(objects: Objects) -> None:
    """The receiver runs ``fairnode serve --role receiver`` with probes, behind a Service on its DICOM and HTTP
    ports."""
    (container,) = pod_spec(objects, "fairnode-receiver")["containers"]
    assert parse_command(container["args"]) == (
        "serve",
        {"role": "receiver", "config": Path("/etc/fairnode/fairnode.yaml")},
    )
    assert container["image"] == "registry.hospital.example/fairnode:0.1.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    service = objects[("Service", "fairnode-receiver")]["spec"]
    labels = objects[("Deployment", "fairnode-receiver")]["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["selector"].items())
    assert {(p["name"], p["port"]) for p in service["ports"]} == {("dicom", 11112), ("http", 8080)}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"dicom": 11112, "http": 8080}


def check_pod(objects: Objects, name: str, *, tls_secret: str, secrets: str) -> dict[str, dict[str, Any]]:
    """The pod ``name`` runs as non-root, mounts the shared spool and the TLS Secret ``tls_secret``, and takes the
    registry URL and the pseudonym secret from the Secret ``secrets``; its secret references by variable."""
    pod = pod_spec(objects, name)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["spool"]["persistentVolumeClaim"]["claimName"] == "fairnode-spool"
    assert volumes["tls"]["secret"]["secretName"] == tls_secret
    refs: dict[str, dict[str, Any]] = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
    }
    assert {"FAIRNODE_REGISTRY_URL", "FAIRNODE_PSEUDONYM_SECRET"} <= set(refs)
    assert all(r["name"] == secrets for r in refs.values())
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["spool"] == "/var/lib/fairnode" and mounts["tls"] == "/etc/fairnode/tls"
    return refs


def deployed_settings(
    objects: Objects, pods: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The settings fairnode loads from the ConfigMap's file with the environment the ``pods`` set beside it
    (a secret's value stands in as ``secret-<name>``); checks what every rendering of the deployment sets."""
    config = tmp_path / "fairnode.yaml"
    config.write_text(objects[("ConfigMap", "fairnode-config")]["data"]["fairnode.yaml"], encoding="utf-8")
    for name in pods:
        (container,) = pod_spec(objects, name)["containers"]
        for e in container["env"]:
            monkeypatch.setenv(e["name"], e.get("value", f"secret-{e['name'].lower()}"))
    settings = load_settings(config)
    assert settings.jobs.mode == "celery" and settings.jobs.shared_root == Path("/var/lib/fairnode")
    assert settings.data_dir == Path("/var/lib/fairnode") and settings.jobs.metrics_port == 9100
    assert settings.tls.enabled and settings.tls.certificate == Path("/etc/fairnode/tls/tls.crt")
    return settings
