"""The bare-metal systemd units checked with ``systemd-analyze verify`` (unknown keys, bad values, a missing
executable all fail it) and their fairnode command lines parsed by the CLI. The check runs on copies whose
ExecStart points at this checkout's ``fairnode`` instead of /opt/fairnode/bin/fairnode (verify requires the
executable to exist)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.deploy.conftest import DEPLOY, parse_command

UNITS = DEPLOY / "systemd"
INSTALLED = "/opt/fairnode/bin/fairnode"
HERE = shutil.which("fairnode", path=str(Path(sys.executable).parent))


def _verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    tool = require_tool("systemd-analyze")
    return subprocess.run([tool, "verify", *map(str, units)], capture_output=True, text=True, timeout=60, check=False)


def _local_copies(tmp_path: Path) -> list[Path]:
    assert HERE is not None, "the fairnode command is not installed in this environment"
    out = []
    for unit, name in (
        ("fairnode.service", "fairnode.service"),
        ("fairnode-worker@.service", "fairnode-worker@ct-abdomen.service"),
    ):
        text = (UNITS / unit).read_text(encoding="utf-8")
        assert f"ExecStart={INSTALLED} " in text
        (tmp_path / name).write_text(text.replace(INSTALLED, HERE), encoding="utf-8")
        out.append(tmp_path / name)
    return out


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    result = _verify(_local_copies(tmp_path))
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_verify_fails_on_a_broken_unit(tmp_path: Path) -> None:
    receiver, _worker = _local_copies(tmp_path)
    receiver.write_text(receiver.read_text(encoding="utf-8").replace("ExecStart=", "ExecStrat="), encoding="utf-8")
    result = _verify([receiver])
    assert result.returncode != 0 and "ExecStrat" in result.stderr


def _exec_start(unit: str, instance: str = "ct-abdomen,xr-knee") -> list[str]:
    line = next(t for t in (UNITS / unit).read_text(encoding="utf-8").splitlines() if t.startswith("ExecStart="))
    words = shlex.split(line.removeprefix("ExecStart="))
    assert words[0] == INSTALLED
    return [
        w.replace("%i", instance).replace("%H", "host").replace("${FAIRNODE_WORKER_CONCURRENCY}", "2")
        for w in words[1:]
    ]


@pytest.mark.parametrize(
    ("unit", "command", "expected"),
    [
        ("fairnode.service", "serve", {"role": "receiver", "config": Path("/etc/fairnode/fairnode.yaml")}),
        (
            "fairnode-worker@.service",
            "worker",
            {
                "queues": "ct-abdomen,xr-knee",
                "concurrency": 2,
                "name": "ct-abdomen,xr-knee@host",
                "config": Path("/etc/fairnode/fairnode.yaml"),
            },
        ),
    ],
)
def test_command_lines_are_accepted_by_the_cli(unit: str, command: str, expected: dict[str, object]) -> None:
    assert parse_command(_exec_start(unit)) == (command, expected)


@pytest.mark.parametrize("unit", ["fairnode.service", "fairnode-worker@.service"])
def test_units_run_unprivileged_and_write_only_the_data_folder(unit: str) -> None:
    keys = dict(
        t.split("=", 1)
        for t in (UNITS / unit).read_text(encoding="utf-8").splitlines()
        if "=" in t and not t.startswith("#")
    )
    assert keys["User"] == "fairnode" and keys["NoNewPrivileges"] == "yes" and keys["ProtectSystem"] == "strict"
    assert keys["ReadWritePaths"] == "/var/lib/fairnode" and keys["Restart"] == "on-failure"
