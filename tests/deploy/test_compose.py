"""deploy/compose.yaml checked without a Docker daemon: valid against the Compose Specification's schema
(check-jsonschema's vendored copy), the six services wired as the demo needs, every fairnode command line
accepted by the CLI and every FAIRNODE_* variable accepted by the settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fairnode.settings import load_settings
from tests.deploy.conftest import DEPLOY, parse_command

COMPOSE = DEPLOY / "compose.yaml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
#: ${NAME:?message} and ${NAME} interpolation, as Compose does it
INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[?-][^}]*)?\}")


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def test_compose_file_is_valid_against_the_compose_specification(tmp_path: Path) -> None:
    result = _validate(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "compose.yaml"  # the check can fail: a service with an unknown key
    broken.write_text(
        COMPOSE.read_text(encoding="utf-8").replace("    restart: unless-stopped\n", "    restart_: no\n", 1)
    )
    assert _validate(broken).returncode != 0


def test_the_demo_has_its_six_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"orthanc", "receiver", "worker-1", "worker-2", "redis", "postgres"}
    for name in ("receiver", "worker-1", "worker-2"):
        s = services[name]
        assert (
            s["build"]["dockerfile"] == "deploy/Dockerfile"
            and (DEPLOY / s["build"]["context"]).resolve() == DEPLOY.parent
        )
        assert s["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        assert "fairnode-data:/var/lib/fairnode" in s["volumes"]  # one shared spool
        assert s["healthcheck"]["test"][-1] == "/opt/fairnode/healthcheck.py"
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in services["orthanc"]["volumes"] if m.startswith("./")}
    assert mounts == {
        "./orthanc/orthanc.json": "/etc/orthanc/orthanc.json",
        "./orthanc/route-ct.lua": "/etc/orthanc/route-ct.lua",
    }
    assert all((DEPLOY / source).is_file() for source in mounts)


def test_fairnode_command_lines_are_accepted_by_the_cli(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert parse_command(services["receiver"]["command"]) == ("serve", {"role": "receiver", "config": None})
    queues = []
    for name in ("worker-1", "worker-2"):
        command, params = parse_command(services[name]["command"])
        assert command == "worker" and params["concurrency"] >= 1 and params["name"] == name
        queues += params["queues"].split(",")
    assert {"ct-abdomen", "xr-knee"} <= set(queues)


def _environment(values: dict[str, str]) -> dict[str, str]:
    return {k: INTERPOLATION.sub(lambda m: f"value-of-{m.group(1).lower()}", str(v)) for k, v in values.items()}


@pytest.mark.parametrize("service", ["receiver", "worker-1", "worker-2"])
def test_environment_is_accepted_by_the_settings(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = _environment(compose["services"][service]["environment"])
    unknown = [k for k in env if not k.startswith("FAIRNODE_")]
    assert not unknown
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FAIRNODE_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.jobs.mode == "celery" and settings.jobs.broker_url == "redis://redis:6379/0"
    assert settings.registry.startswith("postgresql+psycopg://fairnode:value-of-postgres_password@postgres:5432/")
    assert settings.pseudonym_secret is not None and settings.review.session_secret is not None
    (pacs,) = settings.destinations
    orthanc = yaml.safe_load((DEPLOY / "orthanc" / "orthanc.json").read_text(encoding="utf-8"))
    assert (pacs.ae_title, pacs.host, pacs.port) == (orthanc["DicomAet"], "orthanc", orthanc["DicomPort"])
    assert orthanc["DicomModalities"]["fairnode"]["AET"] == settings.ae_title
    assert orthanc["DicomModalities"]["fairnode"]["Port"] == settings.port
    assert settings.allowed_calling_aes == [orthanc["DicomAet"]]
