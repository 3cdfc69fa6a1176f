"""Results with speakers in every format; subtitles read back by FFmpeg's demuxers, and
``diarized_json`` parsed by the official ``openai`` package's own type."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
from openai.types.audio import TranscriptionDiarized

from gateway.formats import (
    MEDIA_TYPES,
    NoSpeakers,
    ResultFormat,
    letter_label,
    render,
    speaker_turns,
    to_diarized_json,
    to_verbose_json,
)
from stt_daemon.common.protocol import Segment, SpeakerTurn, TranscriptResult, Word


def word(start: float, end: float, text: str, speaker: str) -> Word:
    return Word(start=start, end=end, word=text, probability=0.9, speaker=speaker)


#: Two voices, the first coming back; a blank segment in the middle (never a cue).
SPEAKERS = TranscriptResult(
    text="Hello there. How are you? Fine, thanks. Good.",
    language="en",
    duration=12.0,
    model="tiny.en",
    segments=[
        Segment(
            id=0,
            start=0.0,
            end=2.0,
            text=" Hello there.",
            speaker="SPEAKER_00",
            words=[word(0.0, 0.8, " Hello", "SPEAKER_00"), word(0.8, 2.0, " there.", "SPEAKER_00")],
        ),
        Segment(id=1, start=2.0, end=4.0, text=" How are you?", speaker="SPEAKER_00"),
        Segment(id=2, start=4.5, end=4.9, text="  ", speaker="SPEAKER_01"),
        Segment(id=3, start=5.0, end=7.25, text=" Fine,\n\nthanks.", speaker="SPEAKER_01"),
        Segment(id=4, start=8.0, end=9.0, text=" Good.", speaker="SPEAKER_00"),
    ],
    speaker_turns=[
        SpeakerTurn(start=0.0, end=4.2, speaker="SPEAKER_00"),
        SpeakerTurn(start=4.2, end=7.5, speaker="SPEAKER_01"),
        SpeakerTurn(start=7.9, end=9.0, speaker="SPEAKER_00"),
    ],
)
PLAIN = TranscriptResult(
    text="Hello.",
    duration=1.0,
    model="tiny.en",
    segments=[Segment(id=0, start=0.0, end=1.0, text=" Hello.")],
)
#: ``diarize=channels``: speakers on segments, no turns.
CHANNELS = TranscriptResult(
    text="a b",
    duration=4.0,
    model="tiny.en",
    segments=[
        Segment(id=0, start=1.0, end=3.0, text=" b", speaker="channel_1"),
        Segment(id=1, start=0.5, end=2.0, text=" a", speaker="channel_0"),
    ],
)
#: ``diarize=speakers`` on silence: nobody spoke, which is an answer, not "no speakers".
SILENCE = TranscriptResult(text="", duration=3.0, model="tiny.en", segments=[], speaker_turns=[])


def demux(text: str, suffix: str, tmp_path: Path) -> list[tuple[float, float, str]]:
    """The cues FFmpeg reads from a subtitle file, as players see them."""
    path = tmp_path / f"subs.{suffix}"
    path.write_text(text)
    cues = []
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None and packet.duration is not None:
                start = float(packet.pts * packet.time_base)
                cues.append(
                    (
                        start,
                        start + float(packet.duration * packet.time_base),
                        bytes(packet).decode(),
                    )
                )
    return cues


def test_json_carries_speakers_on_words_and_segments_and_the_turns() -> None:
    body = json.loads(render(SPEAKERS, ResultFormat.JSON)[0])
    assert [s["speaker"] for s in body["segments"]][:2] == ["SPEAKER_00", "SPEAKER_00"]
    assert body["segments"][0]["words"][1]["speaker"] == "SPEAKER_00"
    assert body["speaker_turns"][1] == {"start": 4.2, "end": 7.5, "speaker": "SPEAKER_01"}
    assert TranscriptResult.model_validate(body) == SPEAKERS


def test_verbose_json_carries_speakers_and_turns() -> None:
    body = to_verbose_json(SPEAKERS)
    assert [s.get("speaker") for s in body["segments"]] == [
        "SPEAKER_00", "SPEAKER_00", "SPEAKER_01", "SPEAKER_01", "SPEAKER_00"
    ]  # fmt: skip
    assert body["words"] == [
        {"word": " Hello", "start": 0.0, "end": 0.8, "speaker": "SPEAKER_00"},
        {"word": " there.", "start": 0.8, "end": 2.0, "speaker": "SPEAKER_00"},
    ]
    assert body["speaker_turns"][2] == {"start": 7.9, "end": 9.0, "speaker": "SPEAKER_00"}
    # Without speakers the shape stays OpenAI's alone.
    assert "speaker_turns" not in to_verbose_json(PLAIN)


def test_text_is_one_line_per_change_of_speaker() -> None:
    body, media_type = render(SPEAKERS, ResultFormat.TEXT)
    assert media_type.startswith("text/plain")
    assert body == (
        "SPEAKER_00: Hello there. How are you?\nSPEAKER_01: Fine, thanks.\nSPEAKER_00: Good.\n"
    )
    assert render(PLAIN, ResultFormat.TEXT)[0] == "Hello.\n"


def test_srt_prefixes_each_cue_with_its_speaker(tmp_path: Path) -> None:
    body, _ = render(SPEAKERS, ResultFormat.SRT)
    assert "3\n00:00:05,000 --> 00:00:07,250\nSPEAKER_01: Fine, thanks.\n" in body
    cues = demux(body, "srt", tmp_path)
    assert [c[2] for c in cues] == [
        "SPEAKER_00: Hello there.",
        "SPEAKER_00: How are you?",
        "SPEAKER_01: Fine, thanks.",
        "SPEAKER_00: Good.",
    ]
    assert cues[2][:2] == (5.0, 7.25)


def test_vtt_uses_voice_tags(tmp_path: Path) -> None:
    body, _ = render(SPEAKERS, ResultFormat.VTT)
    assert "00:00:05.000 --> 00:00:07.250\n<v SPEAKER_01>Fine, thanks.\n" in body
    cues = demux(body, "vtt", tmp_path)
    assert [c[2] for c in cues][::2] == [
        "<v SPEAKER_00>Hello there.",
        "<v SPEAKER_01>Fine, thanks.",
    ]


def test_tsv_has_a_speaker_column() -> None:
    rows = render(SPEAKERS, ResultFormat.TSV)[0].splitlines()
    assert rows[0] == "start\tend\tspeaker\ttext"
    assert rows[3] == "5000\t7250\tSPEAKER_01\tFine, thanks."


def test_rttm_lists_the_turns_in_nist_form() -> None:
    body, media_type = render(SPEAKERS, ResultFormat.RTTM, file_id="job-1")
    assert media_type.startswith("text/plain")
    assert body == (
        "SPEAKER job-1 1 0.000 4.200 <NA> <NA> SPEAKER_00 <NA> <NA>\n"
        "SPEAKER job-1 1 4.200 3.300 <NA> <NA> SPEAKER_01 <NA> <NA>\n"
        "SPEAKER job-1 1 7.900 1.100 <NA> <NA> SPEAKER_00 <NA> <NA>\n"
    )
    for line in body.splitlines():
        fields = line.split(" ")
        assert len(fields) == 10 and fields[0] == "SPEAKER"
    # No file id given (or one with spaces): still one token.
    assert render(SPEAKERS, ResultFormat.RTTM)[0].startswith("SPEAKER audio 1 0.000 ")
    assert render(SPEAKERS, ResultFormat.RTTM, file_id="my call")[0].startswith("SPEAKER my_call ")


def test_channels_are_speakers_in_every_format() -> None:
    assert speaker_turns(CHANNELS) == [
        SpeakerTurn(start=0.5, end=2.0, speaker="channel_0"),
        SpeakerTurn(start=1.0, end=3.0, speaker="channel_1"),
    ]
    rttm = render(CHANNELS, ResultFormat.RTTM, file_id="j")[0]
    assert rttm.splitlines()[0] == "SPEAKER j 1 0.500 1.500 <NA> <NA> channel_0 <NA> <NA>"
    assert render(CHANNELS, ResultFormat.TEXT)[0] == "channel_1: b\nchannel_0: a\n"
    assert "<v channel_1>b" in render(CHANNELS, ResultFormat.VTT)[0]
    assert "channel_0: a" in render(CHANNELS, ResultFormat.SRT)[0]
    diarized = TranscriptionDiarized.model_validate(to_diarized_json(CHANNELS))
    assert [s.speaker for s in diarized.segments] == ["A", "B"]


def test_diarized_json_is_openais_type() -> None:
    body, media_type = render(SPEAKERS, ResultFormat.DIARIZED_JSON)
    assert media_type == "application/json"
    parsed = TranscriptionDiarized.model_validate_json(body)
    assert parsed.task == "transcribe" and parsed.duration == 12.0
    assert parsed.text == SPEAKERS.text
    assert [(s.id, s.speaker, s.text) for s in parsed.segments] == [
        ("seg_0", "A", "Hello there."),
        ("seg_1", "A", "How are you?"),
        ("seg_3", "B", "Fine, thanks."),
        ("seg_4", "A", "Good."),
    ]
    assert all(s.type == "transcript.text.segment" for s in parsed.segments)
    assert (parsed.segments[2].start, parsed.segments[2].end) == (5.0, 7.25)
    assert parsed.usage is not None and parsed.usage.type == "duration"
    # The body has nothing the type does not know.
    assert parsed.model_dump(exclude_unset=True) == json.loads(body)


def test_letters_follow_openai_past_z() -> None:
    assert [letter_label(i) for i in (0, 1, 25, 26, 27, 31)] == ["A", "B", "Z", "AA", "AB", "AF"]


def test_silence_with_diarization_has_no_turns_and_is_no_error() -> None:
    assert render(SILENCE, ResultFormat.RTTM, file_id="j")[0] == ""
    parsed = TranscriptionDiarized.model_validate(to_diarized_json(SILENCE))
    assert parsed.segments == [] and parsed.text == ""


@pytest.mark.parametrize("fmt", [ResultFormat.RTTM, ResultFormat.DIARIZED_JSON])
def test_a_speaker_format_of_a_result_without_speakers_says_why(fmt: ResultFormat) -> None:
    with pytest.raises(NoSpeakers, match="diarize=speakers"):
        render(PLAIN, fmt)


def test_every_format_has_a_media_type() -> None:
    assert set(MEDIA_TYPES) == set(ResultFormat)
    for fmt in ResultFormat:
        assert render(SPEAKERS, fmt, file_id="j")[1] == MEDIA_TYPES[fmt]
