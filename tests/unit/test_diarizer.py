"""The diarizer on real voices: tiny.en's words, CAM++ voice prints, speakers (no broker).

The issue's accuracy targets, measured as the benchmark's ``diarization`` section
measures them (the scoring of tests/speakerscore.py): pyannote's two-speaker sample,
three people taking turns, JFK and hotwords.mp3 alone, and the sample cut in halves
that are transcribed and embedded apart, as the parts of a split recording are. Needs
the prepared speaker model and fetches the speaker audio once (tests/speakeraudio.py).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest

from speakeraudio import JFK, ROOT, pyannote_sample, three_voices
from speakerscore import as_reference, diarization_error_rate, transcribe, word_accuracy
from stt_daemon.audio import SAMPLE_RATE, ArraySamples, PcmFile, decode
from stt_daemon.common.protocol import (
    Diarize,
    JobOptions,
    Segment,
    SpeakerTurn,
    TranscriptResult,
    VoicePrintsWire,
    Word,
)
from stt_daemon.speakers import diarizer as diarizer_module
from stt_daemon.speakers.diarizer import Diarizer, VoicePrints
from stt_daemon.speakers.embedder import SpeakerEmbedder
from stt_daemon.speakers.model import SpeakerModelMissing

SPEAKERS = JobOptions(diarize=Diarize.SPEAKERS)
#: Where the two-speaker sample is cut into two parts (mid-sentence, as a split
#: recording's part limit may fall when nobody pauses).
CUT = 15.0


def hints(**bounds: int) -> JobOptions:
    return JobOptions.model_validate({"diarize": Diarize.SPEAKERS, **bounds})


@pytest.fixture(scope="module")
def diarizer() -> Diarizer:
    try:
        return Diarizer(SpeakerEmbedder())
    except SpeakerModelMissing as exc:
        pytest.fail(f"the speaker model is not prepared: {exc}")


@pytest.fixture(scope="module")
def whisper() -> Any:
    from faster_whisper import WhisperModel

    from stt_daemon.models import resolve

    return WhisperModel(
        str(resolve("tiny.en").path), device="cpu", compute_type="int8", cpu_threads=1
    )


@dataclass(frozen=True)
class Transcribed:
    """A recording's audio and tiny.en's segments of it."""

    audio: np.ndarray
    segments: list[Segment]

    @classmethod
    def by(cls, model: Any, audio: np.ndarray) -> Transcribed:
        return cls(audio, transcribe(model, audio))


@pytest.fixture(scope="module")
def sample(whisper: Any) -> Transcribed:
    return Transcribed.by(whisper, pyannote_sample().samples())


@pytest.fixture(scope="module")
def three(whisper: Any) -> Transcribed:
    return Transcribed.by(whisper, three_voices().samples())


@pytest.fixture(scope="module")
def halves(whisper: Any, sample: Transcribed) -> list[tuple[float, Transcribed]]:
    """The sample's two parts, each transcribed on its own: (offset, part)."""
    at = round(CUT * SAMPLE_RATE)
    return [
        (0.0, Transcribed.by(whisper, sample.audio[:at])),
        (CUT, Transcribed.by(whisper, sample.audio[at:])),
    ]


def shifted(segments: list[Segment], offset: float) -> list[Segment]:
    """A part's segments in whole-recording time, as the merge of a split job shifts them."""
    return [
        s.model_copy(
            update={
                "start": s.start + offset,
                "end": s.end + offset,
                "words": [
                    w.model_copy(update={"start": w.start + offset, "end": w.end + offset})
                    for w in s.words or []
                ],
            }
        )
        for s in segments
    ]


def diarize(
    diarizer: Diarizer, recording: Transcribed, options: JobOptions = SPEAKERS
) -> tuple[list[Segment], list[SpeakerTurn]]:
    prints = diarizer.voiceprints(ArraySamples(recording.audio), recording.segments)
    return diarizer.label(recording.segments, [prints], options)


def speakers(turns: list[SpeakerTurn]) -> int:
    return len({t.speaker for t in turns})


def word_speakers(segments: list[Segment]) -> list[str | None]:
    return [w.speaker for s in segments for w in s.words or []]


# --- accuracy on real voices --------------------------------------------------------


def test_two_people_on_a_phone_line(diarizer: Diarizer, sample: Transcribed) -> None:
    labelled, turns = diarize(diarizer, sample)
    reference = pyannote_sample().turns
    assert speakers(turns) == 2
    assert word_accuracy(labelled, reference) >= 0.95
    # The standard 0.25 s collar; without one the overlapped speech alone (one
    # label per instant) costs about 7 points.
    assert diarization_error_rate(reference, as_reference(turns)) <= 0.15


def test_three_people_taking_turns_are_counted_without_hints(
    diarizer: Diarizer, three: Transcribed
) -> None:
    labelled, turns = diarize(diarizer, three)
    assert speakers(turns) == 3
    assert word_accuracy(labelled, three_voices().turns) >= 0.90


@pytest.mark.parametrize(
    "path", [JFK, ROOT / "tests" / "data" / "hotwords.mp3"], ids=["jfk", "hotwords"]
)
def test_one_voice_alone_is_one_speaker(diarizer: Diarizer, whisper: Any, path: Path) -> None:
    recording = Transcribed.by(whisper, decode(path, max_seconds=60))
    labelled, turns = diarize(diarizer, recording)
    assert speakers(turns) == 1
    assert set(word_speakers(labelled)) == {"SPEAKER_00"}
    assert all(s.speaker == "SPEAKER_00" for s in labelled)


def test_hints_are_honoured(diarizer: Diarizer, sample: Transcribed, three: Transcribed) -> None:
    labelled, turns = diarize(diarizer, sample, hints(num_speakers=2))
    assert speakers(turns) == 2
    assert word_accuracy(labelled, pyannote_sample().turns) >= 0.95
    labelled, turns = diarize(diarizer, three, hints(min_speakers=2, max_speakers=4))
    assert speakers(turns) == 3
    assert word_accuracy(labelled, three_voices().turns) >= 0.90
    assert speakers(diarize(diarizer, three, hints(max_speakers=2))[1]) == 2


def test_a_recording_joined_to_itself_keeps_its_speakers(
    diarizer: Diarizer, sample: Transcribed
) -> None:
    # Each phrase three times: the repeats must not become "speakers" of their own.
    length = sample.audio.size / SAMPLE_RATE
    repeated = Transcribed(
        np.concatenate([sample.audio] * 3),
        [s for i in range(3) for s in shifted(sample.segments, i * length)],
    )
    labelled, turns = diarize(diarizer, repeated)
    reference = [
        (start + i * length, end + i * length, who)
        for i in range(3)
        for start, end, who in pyannote_sample().turns
    ]
    assert speakers(turns) == 2
    assert word_accuracy(labelled, reference) >= 0.95


# --- split recordings ----------------------------------------------------------------


def part_prints(diarizer: Diarizer, halves: list[tuple[float, Transcribed]]) -> list[VoicePrints]:
    return [
        diarizer.voiceprints(ArraySamples(part.audio), part.segments, offset)
        for offset, part in halves
    ]


def merged(halves: list[tuple[float, Transcribed]]) -> list[Segment]:
    return [s for offset, part in halves for s in shifted(part.segments, offset)]


def test_parts_labelled_together_keep_one_label_per_person(
    diarizer: Diarizer, halves: list[tuple[float, Transcribed]]
) -> None:
    prints = part_prints(diarizer, halves)
    assert all(a >= CUT for a, _ in prints[1].windows)
    labelled, turns = diarizer.label(merged(halves), prints, SPEAKERS)
    assert speakers(turns) == 2
    assert word_accuracy(labelled, pyannote_sample().turns) >= 0.95
    # Both people speak in both parts, under the same names.
    first = {w.speaker for s in labelled if s.end <= CUT for w in s.words or []}
    second = {w.speaker for s in labelled if s.start >= CUT for w in s.words or []}
    assert first == second == {"SPEAKER_00", "SPEAKER_01"}


def test_parts_in_any_order_give_the_same_labels(
    diarizer: Diarizer, halves: list[tuple[float, Transcribed]]
) -> None:
    prints = part_prints(diarizer, halves)
    segments = merged(halves)
    in_order = diarizer.label(segments, prints, SPEAKERS)
    reversed_ = diarizer.label(segments, prints[::-1], SPEAKERS)
    assert in_order == reversed_


# --- voice prints on the wire --------------------------------------------------------


def test_voice_prints_survive_the_wire_as_float16(diarizer: Diarizer, sample: Transcribed) -> None:
    prints = diarizer.voiceprints(ArraySamples(sample.audio), sample.segments)
    wire = prints.to_wire()
    result = TranscriptResult(
        text="", duration=30.0, model="tiny.en", segments=[], voiceprints=wire
    )
    body = result.model_dump_json()
    back = VoicePrints.from_wire(TranscriptResult.model_validate_json(body).voiceprints)  # type: ignore[arg-type]
    assert back.embeddings.dtype == np.float32
    assert back.embeddings.shape == prints.embeddings.shape == (len(prints.windows), 192)
    assert np.allclose(back.windows, prints.windows, atol=5e-4)
    # float16 keeps 11 significant bits: components of a unit vector in 192
    # dimensions (|x| < 0.5) lose less than 2.5e-4, cosines between windows 1e-3.
    assert np.max(np.abs(back.embeddings - prints.embeddings)) < 2.5e-4
    cosines = prints.embeddings @ prints.embeddings.T
    assert np.max(np.abs(back.embeddings @ back.embeddings.T - cosines)) < 1e-3
    # ... far below what tells voices apart: the labels do not change.
    assert diarizer.label(sample.segments, [back], SPEAKERS) == diarizer.label(
        sample.segments, [prints], SPEAKERS
    )
    # 30 s of speech: about 22 KB of JSON (a 60 s part about 45 KB).
    assert len(wire.model_dump_json()) < 800 * len(prints.windows)


def test_the_wire_refuses_embeddings_of_the_wrong_size() -> None:
    three_rows = base64.b64encode(np.zeros((3, 4), dtype="<f2").tobytes()).decode()
    VoicePrintsWire(windows=[(0, 1.5), (0.5, 2), (1, 2.5)], dim=4, embeddings=three_rows)
    with pytest.raises(pydantic.ValidationError, match="2 windows of 4 float16 need"):
        VoicePrintsWire(windows=[(0, 1.5), (0.5, 2)], dim=4, embeddings=three_rows)


def test_results_without_voice_prints_say_so() -> None:
    result = TranscriptResult(text="", duration=1.0, model="tiny.en", segments=[])
    assert result.voiceprints is None
    assert TranscriptResult.model_validate_json(result.model_dump_json()).voiceprints is None


# --- reading the audio ----------------------------------------------------------------


class MeasuredSamples:
    """Audio behind the Samples interface that remembers its longest read."""

    def __init__(self, audio: np.ndarray) -> None:
        self.audio = audio
        self.longest = 0

    @property
    def samples(self) -> int:
        return int(self.audio.size)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.samples if stop is None else min(stop, self.samples)
        self.longest = max(self.longest, stop - start)
        return self.audio[start:stop]


def test_audio_is_read_a_bounded_window_at_a_time(diarizer: Diarizer, sample: Transcribed) -> None:
    # Two minutes: the sample, a minute and a half of silence, nothing more.
    audio = np.concatenate([sample.audio, np.zeros(90 * SAMPLE_RATE, dtype=np.float32)])
    measured = MeasuredSamples(audio)
    prints = diarizer.voiceprints(measured, sample.segments, offset=60.0)
    assert measured.longest <= diarizer_module.MAX_READ_S * SAMPLE_RATE < audio.size / 3
    whole = diarizer.voiceprints(ArraySamples(sample.audio), sample.segments)
    assert prints.windows == [(a + 60.0, b + 60.0) for a, b in whole.windows]
    assert np.allclose(prints.embeddings, whole.embeddings, atol=1e-5)


def test_a_recording_on_disk(diarizer: Diarizer, sample: Transcribed, tmp_path: Path) -> None:
    pcm = PcmFile.write(sample.audio, tmp_path)
    labelled, turns = diarizer.label(
        sample.segments, [diarizer.voiceprints(pcm, sample.segments)], SPEAKERS
    )
    assert speakers(turns) == 2
    assert word_accuracy(labelled, pyannote_sample().turns) >= 0.95


def test_nothing_transcribed_nothing_embedded(diarizer: Diarizer, sample: Transcribed) -> None:
    prints = diarizer.voiceprints(ArraySamples(sample.audio), [])
    assert prints.windows == [] and prints.embeddings.shape == (0, 192)
    assert VoicePrints.from_wire(prints.to_wire()).embeddings.shape == (0, 192)
    assert diarizer.label([], [prints], SPEAKERS) == ([], [])


def test_silence_with_words_is_one_speaker(diarizer: Diarizer) -> None:
    # Whisper heard words where the VAD hears nobody: no window, one speaker.
    words = [Word(start=0.5, end=1.0, word=" you", probability=0.2)]
    segments = [Segment(id=0, start=0.0, end=2.0, text=" you", words=words)]
    silence = ArraySamples(np.zeros(2 * SAMPLE_RATE, dtype=np.float32))
    prints = diarizer.voiceprints(silence, segments)
    labelled, turns = diarizer.label(segments, [prints], SPEAKERS)
    assert prints.windows == []
    assert [s.speaker for s in labelled] == ["SPEAKER_00"]
    assert turns == [SpeakerTurn(start=0.0, end=2.0, speaker="SPEAKER_00")]
