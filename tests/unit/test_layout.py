"""The walls between the packages, read from the source (no import needed).

- The gateway imports from ``stt_daemon.common`` only (and the package's version):
  what both processes share is in one place, so a gateway host never needs the rest.
- ``stt_daemon.common`` imports nothing else of ours: the contract is a leaf.
- The daemon never imports the gateway: daemons are headless.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(package: str) -> Iterator[tuple[Path, str]]:
    """(file, imported module) for every absolute import under ``package``."""
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, alias.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "stt_daemon":
                    # ``from stt_daemon import x``: x is a module or a name of the package.
                    for alias in node.names:
                        yield path, f"stt_daemon.{alias.name}"
                else:
                    yield path, node.module


def ours(module: str) -> bool:
    return module.split(".")[0] in {"stt_daemon", "gateway"}


def test_the_gateway_imports_only_the_common_part_of_the_daemon() -> None:
    allowed = ("stt_daemon.common", "stt_daemon.__version__")
    wrong = [
        f"{path.relative_to(ROOT)}: {module}"
        for path, module in imports("gateway")
        if module.startswith("stt_daemon") and not module.startswith(allowed)
    ]
    assert wrong == []


def test_the_common_part_imports_nothing_else_of_ours() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}: {module}"
        for path, module in imports("stt_daemon/common")
        if ours(module) and not module.startswith("stt_daemon.common")
    ]
    assert wrong == []


def test_the_daemon_never_imports_the_gateway() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}: {module}"
        for path, module in imports("stt_daemon")
        if module.split(".")[0] == "gateway"
    ]
    assert wrong == []


def test_the_scan_sees_imports() -> None:
    # The checks above pass trivially if the scan finds nothing: make sure it does.
    found = {module for _, module in imports("gateway")}
    assert "stt_daemon.common.protocol" in found
    assert "stt_daemon.__version__" in found
