"""Cut planning: bounded parts that cover the recording, cut in the widest pauses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from stack import JFK
from stt_daemon.audio import SAMPLE_RATE, ArraySamples, decode
from stt_daemon.splitting import Span, pauses, plan_parts

S = SAMPLE_RATE


def assert_covers(parts: list[Span], total: int, longest: int) -> None:
    assert parts[0].start == 0 and parts[-1].end == total
    assert all(a.end == b.start for a, b in itertools.pairwise(parts))
    assert all(0 < p.end - p.start <= longest for p in parts)


def test_a_short_recording_is_one_part() -> None:
    assert plan_parts(50 * S, [], 60 * S) == [Span(0, 50 * S)]


def test_cuts_fall_in_the_widest_pause_of_the_last_third() -> None:
    gaps = [
        Span(30 * S, 33 * S),  # wide, but before the last third of the first part
        Span(42 * S, 42 * S + S // 2),
        Span(50 * S, 51 * S + S // 2),  # the widest in [40, 60]: cut at 50.75 s
        Span(58 * S, 58 * S + S // 4),
    ]
    parts = plan_parts(100 * S, gaps, 60 * S)
    assert parts[0] == Span(0, 50 * S + 3 * S // 4)
    assert_covers(parts, 100 * S, 60 * S)


def test_speech_without_pauses_is_cut_at_the_limit() -> None:
    parts = plan_parts(150 * S, [], 60 * S)
    assert parts == [Span(0, 60 * S), Span(60 * S, 120 * S), Span(120 * S, 150 * S)]


def test_a_long_silence_is_cut_inside_the_window() -> None:
    # Silence from 10 s to 90 s: its middle (50 s) lies in [40, 60], the window's middle too.
    parts = plan_parts(120 * S, [Span(10 * S, 90 * S)], 60 * S)
    assert parts[0] == Span(0, 50 * S)
    assert_covers(parts, 120 * S, 60 * S)


@pytest.mark.parametrize("longest_s", [10, 25, 60])
def test_parts_always_cover_the_recording_within_the_limit(longest_s: int) -> None:
    rng = np.random.default_rng(longest_s)
    starts = np.sort(rng.integers(0, 600 * S, 80))
    gaps = [Span(int(a), int(a) + int(rng.integers(1, 2 * S))) for a in starts]
    parts = plan_parts(600 * S, gaps, longest_s * S)
    assert_covers(parts, 600 * S, longest_s * S)
    assert plan_parts(600 * S, gaps, longest_s * S) == parts  # the same every time


def test_pauses_are_found_in_real_speech() -> None:
    speech = decode(JFK, max_seconds=60)
    silence = np.zeros(2 * S, dtype=np.float32)
    audio = np.concatenate([speech, silence, speech])
    gaps = pauses(ArraySamples(audio))
    # The two seconds of silence between the two speeches are one of the gaps.
    inserted = [
        g
        for g in gaps
        if g.start <= speech.shape[0] + S // 2 and g.end >= speech.shape[0] + 3 * S // 2
    ]
    assert len(inserted) == 1
    # Parts of at most 16 s look for a cut in [10.7 s, 16 s]: the silence is the widest there.
    first = plan_parts(audio.shape[0], gaps, 16 * S)[0]
    assert speech.shape[0] <= first.end <= speech.shape[0] + 2 * S
