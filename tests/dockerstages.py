"""What the unit tests read from deploy/Dockerfile: its stages and their instructions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "deploy" / "Dockerfile"


@dataclass
class Stage:
    """One ``FROM ... AS name`` stage and its instructions."""

    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for index, instruction in enumerate(logical):
        keyword, _, args = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#{index}"
            current = stages[name] = Stage(name, words[0])
        else:
            assert current is not None, f"{keyword} before FROM"
            current.instructions.append((keyword, args.strip()))
    return stages


def chain(stages: Mapping[str, Stage], target: str) -> list[Stage]:
    """The stage and its ancestors, oldest first."""
    result: list[Stage] = []
    name: str | None = target
    while name is not None and name in stages:
        result.insert(0, stages[name])
        name = stages[name].parent
    return result


def instructions(stages: Mapping[str, Stage], target: str, keyword: str) -> list[str]:
    return [
        args for stage in chain(stages, target) for kw, args in stage.instructions if kw == keyword
    ]


def pip_installs(stages: Mapping[str, Stage], target: str) -> list[str]:
    return [run for run in instructions(stages, target, "RUN") if "pip install" in run]
