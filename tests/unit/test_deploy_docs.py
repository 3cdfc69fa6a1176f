"""The README and the operations docs agree with the code and the deployment files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import GatewaySettings
from stt_daemon.common.settings import CommonSettings
from stt_daemon.config import DaemonSettings

ROOT = Path(__file__).resolve().parents[2]


README = ROOT / "README.md"
SETTINGS_PAGE = ROOT / "docs" / "operations" / "settings.md"
RUNNING_PAGE = ROOT / "docs" / "operations" / "running.md"


# --- README.md and docs/ -------------------------------------------------------


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


def test_readme_opens_with_the_two_commands(readme: str) -> None:
    first_block = re.search(r"```[^\n]*\n(.*?)```", readme, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make up", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("up", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no '{target}' target"


def test_readme_links_point_at_files_that_exist(readme: str) -> None:
    # mkdocs build --strict checks the links between the docs; the README is outside them.
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into docs/"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files {missing}"


@pytest.mark.parametrize("settings_class", [CommonSettings, DaemonSettings, GatewaySettings])
def test_the_settings_page_documents_every_setting(settings_class: type[CommonSettings]) -> None:
    page = SETTINGS_PAGE.read_text()
    missing = [
        f"STT_{name.upper()}"
        for name in settings_class.model_fields
        if f"`STT_{name.upper()}`" not in page
    ]
    assert not missing, f"{SETTINGS_PAGE.relative_to(ROOT)} does not document {missing}"


def test_the_running_page_documents_the_gateway_flags() -> None:
    page = RUNNING_PAGE.read_text()
    for flag in ("--host", "--port", "--debug", "--reload"):
        assert f"`{flag}" in page, flag
