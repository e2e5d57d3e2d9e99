"""The container images' Dockerfiles, checked without a Docker daemon: non-root user, health check, torch's CPU
pin, exactly one ONNX Runtime per image, the bundled models inside, and a command the CLI accepts. The
health check script runs against a real HTTP server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, parse_command

ROOT = DEPLOY.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
IMAGES = {"cpu": DEPLOY / "Dockerfile", "cuda": DEPLOY / "Dockerfile.cuda"}


def instructions(path: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments) with continuation lines joined."""
    lines, current = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest.strip()))
    return stages


def _pin(name: str) -> str:
    """The version pyproject.toml pins ``name`` to (dependencies and the gpu extra)."""
    specs = [*PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    (spec,) = [s for s in specs if re.split(r"[=<>\[ ]", s, maxsplit=1)[0] == name]
    return spec.split("==")[1]


def _args(stages: list[list[tuple[str, str]]]) -> dict[str, str]:
    return {
        k: v
        for stage in stages
        for keyword, rest in stage
        if keyword == "ARG" and "=" in rest
        for k, v in [rest.split("=", 1)]
    }


def _runs(stages: list[list[tuple[str, str]]]) -> str:
    return "\n".join(rest for stage in stages for keyword, rest in stage if keyword == "RUN")


@pytest.mark.parametrize("variant", sorted(IMAGES))
def test_final_stage_runs_as_a_non_root_user_with_a_health_check(variant: str) -> None:
    final = instructions(IMAGES[variant])[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage sets no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root") and user.isdigit(), "USER should be a numeric non-root id (runAsNonRoot)"
    health = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert len(health) == 1 and " CMD " in f" {health[0]} " and "NONE" not in health[0]
    command = json.loads(health[0].split("CMD", 1)[1])
    assert command[-1] == "/opt/fairnode/healthcheck.py"
    assert any(k == "COPY" and rest.startswith("deploy/healthcheck.py ") for k, rest in final)


@pytest.mark.parametrize("variant", sorted(IMAGES))
def test_torch_is_the_pinned_cpu_build(variant: str) -> None:
    stages = instructions(IMAGES[variant])
    args = _args(stages)
    assert args["TORCH_VERSION"] == _pin("torch") == "2.13.0"
    assert args["TORCH_INDEX"].rstrip("/").endswith("/cpu")
    assert re.search(r'pip install "torch==\$\{TORCH_VERSION\}" --index-url "\$\{TORCH_INDEX\}"', _runs(stages))


def test_cpu_image_never_installs_onnxruntime_gpu() -> None:
    runs = _runs(instructions(IMAGES["cpu"]))
    installs = [c for c in re.split(r"&&|\n", runs) if "pip install" in c]
    assert installs and not any("onnxruntime-gpu" in c or "[gpu]" in c for c in installs)
    assert "onnxruntime-gpu must not be in the CPU image" in runs  # checked at build time too


def test_cuda_image_replaces_onnxruntime_by_onnxruntime_gpu() -> None:
    stages = instructions(IMAGES["cuda"])
    runs = _runs(stages)
    assert _args(stages)["ORT_GPU_VERSION"] == _pin("onnxruntime-gpu")
    uninstall = runs.index("pip uninstall -y onnxruntime")
    install = runs.index('pip install "onnxruntime-gpu==${ORT_GPU_VERSION}"')
    assert runs.index("pip install /src") < uninstall < install  # never both installed at the end
    assert "'onnxruntime-gpu' in names and 'onnxruntime' not in names" in runs  # checked at build time
    assert _args(stages)["CUDA_IMAGE"].startswith("nvidia/cuda:") and "cudnn" in _args(stages)["CUDA_IMAGE"]


@pytest.mark.parametrize("variant", sorted(IMAGES))
def test_every_package_and_the_bundled_models_are_inside(variant: str) -> None:
    stages = instructions(IMAGES[variant])
    copied = {rest.split()[0] for stage in stages for keyword, rest in stage if keyword == "COPY"}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"packages not copied into the image: {sorted(packages - copied)}"
    assert "bundled_models()" in _runs(stages) and "pip install /src" in _runs(stages)  # not editable
    ignore = (DEPLOY / f"{IMAGES[variant].name}.dockerignore").read_text(encoding="utf-8").splitlines()
    assert all(f"!{p}/" in ignore for p in packages) and "!pyproject.toml" in ignore


@pytest.mark.parametrize("variant", sorted(IMAGES))
def test_entrypoint_and_command_are_a_fairnode_command_line(variant: str) -> None:
    final = instructions(IMAGES[variant])[-1]
    entry = json.loads(next(rest for keyword, rest in final if keyword == "ENTRYPOINT"))
    command = json.loads(next(rest for keyword, rest in final if keyword == "CMD"))
    assert entry == ["fairnode"]
    name, _params = parse_command(command)
    assert name == {"cpu": "serve", "cuda": "worker"}[variant]


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _check(url: str) -> subprocess.CompletedProcess[str]:
    env = {"FAIRNODE_HEALTH_URL": url, "PATH": "/usr/bin:/bin"}
    script = str(DEPLOY / "healthcheck.py")
    return subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=30, check=False)


def test_health_check_script_exits_zero_only_on_http_200(health_server: ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{health_server.server_address[1]}/health"
    _Health.status = 200
    assert _check(url).returncode == 0
    _Health.status = 503
    failed = _check(url)
    assert failed.returncode == 1 and "HTTP 503" in failed.stderr
    nobody = f"http://127.0.0.1:{health_server.server_address[1]}/nothing-here"
    assert _check(nobody).returncode == 1
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    port = closed.server_address[1]
    closed.server_close()
    refused = _check(f"http://127.0.0.1:{port}/health")
    assert refused.returncode == 1 and "unhealthy" in refused.stderr
