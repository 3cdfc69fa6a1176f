"""Scoring speakers against a reference: word accuracy and DER, and tiny.en's words to score.

Shared by the benchmark's ``diarization`` section (tests/benchmark/diarization.py) and
tests/unit/test_diarizer.py, so the unit tests hold the figures the benchmark reports.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from stt_daemon.common.protocol import Segment, SpeakerTurn, Word

#: DER's forgiveness collar around each reference boundary (NIST's standard).
COLLAR = 0.25
#: DER's frame, seconds.
DER_FRAME = 0.01

Reference = Sequence[tuple[float, float, str]]


def _best_mapping(overlap: dict[tuple[str, str], float]) -> dict[str, str]:
    """The one-to-one mapping of found labels to reference speakers with the most overlap."""
    found = sorted({f for f, _ in overlap})
    true = sorted({t for _, t in overlap})
    # Few speakers: every assignment is tried (None where there are more labels).
    slots: list[str | None] = [*true, *([None] * max(0, len(found) - len(true)))]
    best: dict[str, str] = {}
    best_score = -1.0
    for chosen in itertools.permutations(slots, len(found)):
        score = sum(overlap.get((f, t), 0.0) for f, t in zip(found, chosen, strict=True) if t)
        if score > best_score:
            best_score = score
            best = {f: t for f, t in zip(found, chosen, strict=True) if t is not None}
    return best


def speakers_at(reference: Reference, instant: float) -> set[str]:
    """Who speaks at ``instant`` in the reference (several where they overlap)."""
    return {speaker for start, end, speaker in reference if start <= instant < end}


def word_accuracy(segments: Sequence[Segment], reference: Reference) -> float:
    """Share of words whose speaker, mapped to the reference, speaks at the word's middle."""
    words = [
        (word.speaker or "", truth)
        for segment in segments
        for word in segment.words or []
        if (truth := speakers_at(reference, (word.start + word.end) / 2))
    ]
    if not words:
        return float("nan")
    overlap: dict[tuple[str, str], float] = {}
    for found, truth in words:
        for speaker in truth:
            overlap[(found, speaker)] = overlap.get((found, speaker), 0.0) + 1.0
    mapping = _best_mapping(overlap)
    return sum(mapping.get(found) in truth for found, truth in words) / len(words)


def _frames(turns: Reference, names: list[str], times: np.ndarray) -> np.ndarray:
    active = np.zeros((len(times), len(names)), dtype=bool)
    for start, end, speaker in turns:
        active[(times >= start) & (times < end), names.index(speaker)] = True
    return active


def diarization_error_rate(reference: Reference, found: Reference, collar: float = COLLAR) -> float:
    """(missed + false alarm + confused speaker time) / reference speaker time."""
    end = max(e for _, e, _ in [*reference, *found])
    times = (np.arange(int(np.ceil(end / DER_FRAME))) + 0.5) * DER_FRAME
    keep = np.ones(len(times), dtype=bool)
    for start, stop, _ in reference:
        for edge in (start, stop):
            keep &= np.abs(times - edge) >= collar
    true_names = sorted({s for _, _, s in reference})
    found_names = sorted({s for _, _, s in found})
    truth = _frames(reference, true_names, times)[keep]
    guess = _frames(found, found_names, times)[keep]
    overlap = {
        (f, t): float(np.sum(guess[:, i] & truth[:, j]))
        for i, f in enumerate(found_names)
        for j, t in enumerate(true_names)
    }
    mapping = _best_mapping(overlap)
    correct = sum(
        guess[:, found_names.index(f)] & truth[:, true_names.index(t)] for f, t in mapping.items()
    )
    n_true, n_found = truth.sum(axis=1), guess.sum(axis=1)
    errors = np.maximum(n_true, n_found) - correct
    return float(np.sum(errors) / max(np.sum(n_true), 1))


def as_reference(turns: Sequence[SpeakerTurn]) -> list[tuple[float, float, str]]:
    """Our turns in the scoring's shape."""
    return [(t.start, t.end, t.speaker) for t in turns]


def transcribe(model: Any, audio: np.ndarray) -> list[Segment]:
    """tiny.en with word timestamps, as the daemon's engine turns a result into segments."""
    segments, _ = model.transcribe(audio, word_timestamps=True)
    return [
        Segment(
            id=i,
            start=s.start,
            end=s.end,
            text=s.text,
            words=[
                Word(start=w.start, end=w.end, word=w.word, probability=w.probability)
                for w in s.words
            ],
        )
        for i, s in enumerate(segments)
    ]
