"""The 24 -> 16 kHz resampler: seamless across chunks, tones kept, aliases filtered out."""

from __future__ import annotations

import random

import numpy as np
import numpy.typing as npt

from gateway.resample import Resampler24to16


def tone(hz: float, seconds: float = 1.0, amplitude: float = 0.5) -> bytes:
    t = np.arange(int(24000 * seconds)) / 24000
    return (np.sin(2 * np.pi * hz * t) * amplitude * 32767).astype("<i2").tobytes()


def samples(pcm: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def level_db(pcm: bytes) -> float:
    """RMS level relative to full scale, past the filter's start-up."""
    x = samples(pcm)[200:]
    return float(20 * np.log10(np.sqrt(np.mean(x**2)) / 32767 + 1e-12))


def test_two_samples_out_for_three_in() -> None:
    out = Resampler24to16().convert(tone(440, seconds=1.0))
    assert len(out) == 16000 * 2


def test_chunks_of_any_size_give_what_one_piece_gives() -> None:
    audio = tone(440) + tone(3000)
    whole = Resampler24to16().convert(audio)
    rng = random.Random(7)
    resampler = Resampler24to16()
    parts = []
    position = 0
    while position < len(audio):
        size = rng.randint(1, 5000)  # odd sizes too: half samples carried over
        parts.append(resampler.convert(audio[position : position + size]))
        position += size
    assert b"".join(parts) == whole


def test_a_tone_keeps_its_frequency_and_level() -> None:
    out = Resampler24to16().convert(tone(1000))
    steady = samples(out)[400:]
    peak_hz = np.argmax(np.abs(np.fft.rfft(steady))) * 16000 / len(steady)
    assert abs(peak_hz - 1000) <= 2
    assert abs(level_db(out) - level_db(tone(1000))) < 0.2


def test_speech_band_passes_and_what_would_alias_is_filtered() -> None:
    passed = Resampler24to16().convert(tone(6000))
    assert abs(level_db(passed) - level_db(tone(6000))) < 0.5
    # 10 kHz cannot exist at 16 kHz: without the filter it would fold to 6 kHz.
    folded = Resampler24to16().convert(tone(10000))
    assert level_db(folded) - level_db(tone(10000)) < -50


def test_reset_starts_a_new_stream() -> None:
    resampler = Resampler24to16()
    resampler.convert(tone(440)[:1001])
    resampler.reset()
    assert resampler.convert(tone(440)) == Resampler24to16().convert(tone(440))


def test_full_scale_is_clipped_not_wrapped() -> None:
    square = np.tile(np.array([32767] * 12 + [-32768] * 12, dtype="<i2"), 1000).tobytes()
    out = samples(Resampler24to16().convert(square))
    assert out.max() <= 32767 and out.min() >= -32768
    # A wrapped sample would jump from the top to the bottom in one step.
    assert np.max(np.abs(np.diff(out))) < 60000
