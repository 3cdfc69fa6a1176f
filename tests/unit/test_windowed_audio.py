"""Recordings on disk, read a window at a time: the same features and speech as in memory."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from stack import JFK
from stt_daemon import features, vad
from stt_daemon.audio import ArraySamples, PcmFile, decode, decode_to_file
from stt_daemon.features import LazyFeatures, WindowedFeatures, stand_in


def test_a_recording_decoded_to_a_file_reads_back_as_decoded_in_memory(tmp_path: Path) -> None:
    pcm = decode_to_file(JFK, 60, tmp_path)
    try:
        assert np.array_equal(pcm.read(), decode(JFK, 60))
        assert np.array_equal(pcm.read(16000, 32000), decode(JFK, 60)[16000:32000])
        assert pcm.read(pcm.samples - 10, pcm.samples + 100).shape == (10,)
    finally:
        pcm.remove()
    assert not list(tmp_path.iterdir())


def test_decoding_an_hour_does_not_hold_it_in_memory(tmp_path: Path) -> None:
    # An hour of silence is a small FLAC and 115 MB of samples (230 MB as float32).
    flac = tmp_path / "hour.flac"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", str(flac), "trim", "0", "3600"], check=True
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pcm = decode_to_file(flac, 4000, tmp_path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert pcm.samples == 3600 * 16000
    assert grown_mib < 50, f"decoding grew the peak by {grown_mib:.0f} MiB"
    pcm.remove()


def _features(audio: np.ndarray) -> np.ndarray | LazyFeatures:
    windowed = WindowedFeatures(FeatureExtractor())
    placeholder = stand_in(audio.shape[0])
    with windowed.reading(placeholder, ArraySamples(audio)):
        return windowed(placeholder)


def _noise(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


@pytest.mark.parametrize("seconds", [12.3, 65.77, 240.0])
def test_features_of_a_recording_on_disk_are_faster_whispers_bit_for_bit(seconds: float) -> None:
    audio = _noise(seconds)
    got = _features(audio)
    assert isinstance(got, np.ndarray)
    assert np.array_equal(got, FeatureExtractor()(audio))


@pytest.mark.parametrize("seconds", [31.3, 100.0])
def test_long_recordings_get_lazy_features_equal_to_rounding(
    seconds: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(features, "EXACT_SECONDS", 0)  # as if these were hours long
    audio = _noise(seconds)
    reference = FeatureExtractor()(audio)
    lazy = _features(audio)
    assert isinstance(lazy, LazyFeatures) and lazy.shape == reference.shape
    for seek in (0, 1234, 2999, lazy.shape[1] - 5):
        got = lazy[:, seek : seek + 3000]
        assert isinstance(got, np.ndarray)
        assert np.allclose(got, reference[:, seek : seek + 3000], atol=1e-6)
    # "From here to the end" stays lazy when it is long, and slices on.
    tail = lazy[..., 100:]
    first = tail[:, 0:50]
    assert isinstance(first, np.ndarray)
    assert np.allclose(first, reference[:, 100:150], atol=1e-6)


def test_speech_across_a_block_edge_is_one_stretch(monkeypatch: pytest.MonkeyPatch) -> None:
    speech = decode(JFK, 60)
    silence = np.zeros(3 * 16000, dtype=np.float32)
    audio = np.concatenate([silence, speech, silence])
    whole = vad.speech_timestamps(ArraySamples(audio))
    monkeypatch.setattr(vad, "BLOCK_S", 7.0)  # an edge in the middle of the speech
    blocked = vad.speech_timestamps(ArraySamples(audio))
    assert len(blocked) == len(whole)
    for (a, b), (c, d) in zip(whole, blocked, strict=True):
        assert abs(a - c) < 16000 and abs(b - d) < 16000


def test_a_mono_array_written_as_a_work_file_is_the_same_audio(tmp_path: Path) -> None:
    audio = decode(JFK, 60)
    pcm = PcmFile.write(audio, tmp_path)
    assert np.array_equal(pcm.read(), audio)
    pcm.remove()
