"""``fairnode serve`` (the ``make run`` path): the web app beside the DICOM node, the first admin's one-time
password printed once, the generated session secret, a placeholder secret refused outside dev mode."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

LISTENING = re.compile(r"web app\s+http://127\.0\.0\.1:(\d+)/")
ONE_TIME = re.compile(r"one-time password:\s+(\S+)")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FAIRNODE_")} | {"COLUMNS": "300"}


@contextmanager
def _serve(config: Path) -> Iterator[tuple[int, str]]:
    """Run the node until it prints where the web app listens; its port and everything printed so far."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fairnode", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    assert process.stdout is not None
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if LISTENING.search(" ".join(lines)):
                found.set()
        found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(60), "the node did not start in 60 s"
        match = LISTENING.search(" ".join(lines))
        assert match is not None, "".join(lines)
        yield int(match.group(1)), "".join(lines)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _config(tmp_path: Path, **review: object) -> Path:
    config = tmp_path / "fairnode.yaml"
    values: dict[str, object] = {"data_dir": str(tmp_path / "data"), "port": 0, "http_port": 0}
    if review:
        values["review"] = review
    config.write_text(yaml.safe_dump(values))
    return config


def _sign_in(port: int, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=True) as client:
        page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        return client.post("/login", data={"username": username, "password": password, "csrf_token": token.group(1)})


@pytest.mark.timeout(180)
def test_serve_makes_the_first_admin_once_and_a_secret_file(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with _serve(config) as (port, printed):
        found = ONE_TIME.search(printed)
        assert found is not None, printed
        password = found.group(1)
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        signed_in = _sign_in(port, "admin", password)
        assert signed_in.status_code == 200 and "Operations" in signed_in.text
        assert _sign_in(port, "admin", "not-the-password").status_code == 401
    key = tmp_path / "data" / "review-session.key"
    secret = key.read_text()
    assert len(secret.strip()) >= 48
    with _serve(config) as (port, printed):
        assert "one-time password" not in printed  # once only
        assert _sign_in(port, "admin", password).status_code == 200
    assert key.read_text() == secret


@pytest.mark.timeout(60)
def test_serve_refuses_a_placeholder_secret_outside_dev_mode(tmp_path: Path) -> None:
    config = _config(tmp_path, session_secret="changeme")
    result = subprocess.run(
        [sys.executable, "-m", "fairnode", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=50,
    )
    assert result.returncode == 2
    assert "empty or a well-known default" in result.stderr and "Traceback" not in result.stderr
