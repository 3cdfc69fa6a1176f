"""Speech the transcript misses: the time arithmetic, the warnings, when the check keeps quiet."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stt_daemon import coverage, vad
from stt_daemon.audio import SAMPLE_RATE
from stt_daemon.common.protocol import Segment, TranscriptResult, WarningCode, Word
from stt_daemon.coverage import Span
from stt_daemon.standin import StandInEngine


def seg(
    start: float, end: float, text: str = " words", probs: list[float] | None = None
) -> Segment:
    """A segment, with one word per probability when given."""
    words = None
    if probs is not None:
        step = (end - start) / len(probs)
        words = [
            Word(start=start + i * step, end=start + (i + 1) * step, word=" w", probability=p)
            for i, p in enumerate(probs)
        ]
    return Segment(id=0, start=start, end=end, text=text, words=words)


def result(*segments: Segment, language: str = "en", model: str = "tiny.en") -> TranscriptResult:
    return TranscriptResult(
        text="".join(s.text for s in segments).strip(),
        language=language,
        duration=30.0,
        model=model,
        segments=list(segments),
    )


def spans(*pairs: tuple[float, float]) -> list[Span]:
    return [Span(a, b) for a, b in pairs]


class FakeEngine:
    """Detects whatever language it is told to; counts the calls."""

    def __init__(self, name: str, multilingual: bool, heard: tuple[str, float] = ("es", 0.9)):
        self.name = name
        self.multilingual = multilingual
        self.heard = heard
        self.detected: list[float] = []

    def transcribe(self, *args: Any, **kwargs: Any) -> TranscriptResult:
        raise AssertionError("the check never transcribes")

    def detect_language(self, audio: Any) -> tuple[str, float]:
        self.detected.append(audio.samples / SAMPLE_RATE)
        return self.heard


# English (0-10.7 s, four stretches), then Spanish (11.9-22.6 s) that tiny.en dropped:
# Silero VAD's spans and tiny.en's segments for jfk.flac followed by espeak-ng Spanish.
BILINGUAL_SPEECH = spans((0.1, 2.4), (3.1, 4.6), (5.2, 7.8), (8.0, 10.7), (11.9, 22.6))
ENGLISH_ONLY = (seg(0.0, 11.0),)


def test_spans_merge_subtract_and_intersect() -> None:
    assert coverage.merge(spans((5, 6), (0, 1), (1.5, 2), (0.5, 1.2)), gap=0.2) == spans(
        (0, 1.2), (1.5, 2), (5, 6)
    )
    assert coverage.merge(spans((0, 1), (1.5, 2)), gap=0.5) == spans((0, 2))
    assert coverage.subtract(spans((0, 10), (12, 14)), spans((1, 2), (9, 13))) == spans(
        (0, 1), (2, 9), (13, 14)
    )
    assert coverage.subtract(spans((0, 5)), []) == spans((0, 5))
    assert coverage.subtract(spans((0, 5)), spans((0, 5))) == []
    assert coverage.intersect(spans((0, 2), (3, 6), (8, 9)), Span(1, 4)) == spans((1, 2), (3, 4))


def test_speech_no_segment_covers_is_reported_where_it_is() -> None:
    assert coverage.uncovered(BILINGUAL_SPEECH, ENGLISH_ONLY) == spans((11.9, 22.6))


def test_fully_covered_speech_is_not_reported() -> None:
    whole = (seg(0.0, 11.0), seg(11.5, 22.6))
    assert coverage.uncovered(BILINGUAL_SPEECH, whole) == []


def test_segment_times_are_given_some_slack() -> None:
    # Whisper's segments start late and end early by a few hundred ms: not speech lost.
    speech = spans((0.0, 5.0), (6.0, 12.0))
    assert coverage.uncovered(speech, (seg(0.4, 4.6), seg(6.45, 11.6))) == []


def test_a_short_or_small_loss_is_normal_whisper() -> None:
    # 1.5 s missed: under the 2 s floor.
    assert coverage.uncovered(spans((0, 10), (11, 12.5)), (seg(0, 10),)) == []
    # 3 s missed out of 30 s of speech: under the 15 % floor.
    assert coverage.uncovered(spans((0, 27), (28, 31)), (seg(0, 27),)) == []
    # 3 s out of 13 s: reported.
    assert coverage.uncovered(spans((0, 10), (11, 14)), (seg(0, 10),)) == spans((11, 14))


def test_no_speech_means_no_warning() -> None:
    # Whisper's "You" over silence is its business; no speech was lost.
    assert coverage.uncovered([], (seg(0, 2, " You"),)) == []
    assert coverage.uncovered([], ()) == []


def test_holes_close_together_are_one_stretch_and_specks_are_dropped() -> None:
    speech = spans((0, 4), (5, 8), (9, 12), (20, 20.5), (30, 31))
    got = coverage.uncovered(speech, (seg(29.8, 31),))
    # 0-12 s is one stretch (gaps under 2 s); the half-second speck is no stretch of its own.
    assert got == spans((0, 12))


def test_invented_words_do_not_cover() -> None:
    # tiny.en over Spanish with word_timestamps: words averaging 0.1-0.45.
    garbage = seg(11.9, 22.6, " it will rain in the afternoon", probs=[0.01, 0.3, 0.6, 0.1])
    english = seg(0.0, 11.0, probs=[0.9, 0.7, 0.95])
    assert coverage.uncovered(BILINGUAL_SPEECH, (english, garbage)) == spans((11.9, 22.6))
    sure = seg(11.9, 22.6, probs=[0.6, 0.8, 0.4])
    assert coverage.uncovered(BILINGUAL_SPEECH, (english, sure)) == []


def test_empty_segments_do_not_cover() -> None:
    assert coverage.uncovered(spans((0, 5)), (seg(0, 5, text=" "),)) == spans((0, 5))


@pytest.fixture
def bilingual(monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """23 s of audio whose speech is BILINGUAL_SPEECH (the VAD is replaced)."""
    monkeypatch.setattr(coverage, "speech_spans", lambda audio: BILINGUAL_SPEECH)
    return np.zeros(23 * SAMPLE_RATE, dtype=np.float32)


def test_english_only_model_warns_and_names_a_multilingual_one(bilingual: np.ndarray) -> None:
    tiny = FakeEngine("tiny.en", multilingual=False)
    got = coverage.annotate(bilingual, result(*ENGLISH_ONLY), tiny)
    assert [(w.code, w.start, w.end, w.language) for w in got.warnings] == [
        (WarningCode.UNTRANSCRIBED_SPEECH, 11.9, 22.6, None)
    ]
    message = got.warnings[0].message
    assert "English-only" in message and "'base'" in message and "11.9 s" in message
    assert got.text == result(*ENGLISH_ONLY).text  # the transcript itself is untouched


def test_a_served_multilingual_model_names_the_language(bilingual: np.ndarray) -> None:
    tiny, base = FakeEngine("tiny.en", False), FakeEngine("base", True, ("es", 0.97))
    got = coverage.annotate(bilingual, result(*ENGLISH_ONLY), tiny, {"tiny.en": tiny, "base": base})
    assert got.warnings[0].language == "es"
    assert "'es'" in got.warnings[0].message
    # Detection ran on the uncovered speech only, not on the whole recording.
    assert base.detected == [pytest.approx(10.7, abs=0.01)]


def test_an_unsure_detection_names_nothing(bilingual: np.ndarray) -> None:
    tiny, base = FakeEngine("tiny.en", False), FakeEngine("base", True, ("pt", 0.3))
    got = coverage.annotate(bilingual, result(*ENGLISH_ONLY), tiny, {"base": base})
    assert got.warnings[0].language is None


def test_english_heard_where_an_english_model_wrote_nothing(bilingual: np.ndarray) -> None:
    tiny, base = FakeEngine("tiny.en", False), FakeEngine("base", True, ("en", 0.9))
    got = coverage.annotate(bilingual, result(*ENGLISH_ONLY), tiny, {"base": base})
    assert "English-only" not in got.warnings[0].message


def test_multilingual_model_says_which_language_it_skipped(bilingual: np.ndarray) -> None:
    base = FakeEngine("base", True, ("es", 0.95))
    got = coverage.annotate(bilingual, result(*ENGLISH_ONLY, model="base"), base)
    assert "language=es" in got.warnings[0].message


def test_covered_results_come_back_as_they_were(bilingual: np.ndarray) -> None:
    full = result(seg(0.0, 11.0), seg(11.5, 22.6))
    assert coverage.annotate(bilingual, full, FakeEngine("tiny.en", False)) is full


def test_channels_and_the_stand_in_are_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_vad(audio: Any) -> list[Span]:
        raise AssertionError("the VAD must not run")

    monkeypatch.setattr(coverage, "speech_spans", no_vad)
    empty = result()
    channels = np.zeros((2, SAMPLE_RATE), dtype=np.float32)
    assert coverage.annotate(channels, empty, FakeEngine("tiny.en", False)) is empty
    mono = np.zeros(SAMPLE_RATE, dtype=np.float32)
    assert coverage.annotate(mono, empty, StandInEngine("tiny.en", rtf=0.0)) is empty


class Windows:
    """A recording read by windows, as the daemon's decoded files are."""

    def __init__(self, audio: np.ndarray, channels: int = 1) -> None:
        self.audio = audio
        self.channels = channels
        self.reads: list[tuple[int, int | None]] = []

    @property
    def samples(self) -> int:
        return len(self.audio)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        self.reads.append((start, stop))
        return self.audio[start:stop]


def test_a_recording_read_by_windows_is_read_by_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vad, "BLOCK_S", 4.0)
    recording = Windows(np.zeros(10 * SAMPLE_RATE, dtype=np.float32))
    assert coverage.speech_spans(recording) == []
    block = 4 * SAMPLE_RATE
    assert recording.reads == [(0, block), (block, 2 * block), (2 * block, 3 * block)]
    stereo, empty = Windows(np.zeros(SAMPLE_RATE, dtype=np.float32), channels=2), result()
    assert coverage.annotate(stereo, empty, FakeEngine("tiny.en", False)) is empty
    assert stereo.reads == []  # channels are not checked


def test_detection_reads_only_the_uncovered_speech(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coverage, "speech_spans", lambda audio: BILINGUAL_SPEECH)
    recording = Windows(np.zeros(23 * SAMPLE_RATE, dtype=np.float32))
    base = FakeEngine("base", True, ("es", 0.9))
    got = coverage.annotate(
        recording, result(*ENGLISH_ONLY), FakeEngine("tiny.en", False), {"base": base}
    )
    assert got.warnings[0].language == "es"
    assert recording.reads == [(int(11.9 * SAMPLE_RATE), int(22.6 * SAMPLE_RATE))]


def test_silence_and_tones_are_not_speech() -> None:
    t = np.arange(10 * SAMPLE_RATE) / SAMPLE_RATE
    chord = 0.1 * np.sin(2 * np.pi * np.outer([220.0, 277.2, 329.6], t)).sum(axis=0)
    assert coverage.speech_spans(np.zeros(10 * SAMPLE_RATE, dtype=np.float32)) == []
    assert coverage.speech_spans(chord.astype(np.float32)) == []


def test_a_failing_check_leaves_the_result_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(audio: Any) -> list[Span]:
        raise RuntimeError("onnxruntime fell over")

    monkeypatch.setattr(coverage, "speech_spans", broken)
    english = result(*ENGLISH_ONLY)
    mono = np.zeros(SAMPLE_RATE, dtype=np.float32)
    assert coverage.annotate(mono, english, FakeEngine("tiny.en", False)) is english


def test_a_failing_detection_keeps_the_warning(bilingual: np.ndarray) -> None:
    base = FakeEngine("base", True)
    base.detect_language = None  # type: ignore[assignment,method-assign]
    got = coverage.annotate(
        bilingual, result(*ENGLISH_ONLY), FakeEngine("tiny.en", False), {"b": base}
    )
    assert [(w.start, w.end, w.language) for w in got.warnings] == [(11.9, 22.6, None)]


def test_a_segment_whisper_was_unsure_of_covers_nothing() -> None:
    sure = Segment(id=0, start=0.0, end=5.0, text=" Ask not.", avg_logprob=-0.3)
    made_up = Segment(id=1, start=5.0, end=10.0, text=" The guy.", avg_logprob=-1.4)
    assert coverage.covering(sure) and not coverage.covering(made_up)
    speech = [Span(0.0, 5.0), Span(5.0, 10.0)]
    assert coverage.uncovered(speech, [sure, made_up]) == [Span(5.5, 10.0)]
    assert (
        coverage.uncovered(speech, [sure, sure.model_copy(update={"start": 5.0, "end": 10.0})])
        == []
    )
