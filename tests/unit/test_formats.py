"""Result formats; subtitles are checked by FFmpeg's own SRT and WebVTT demuxers (as players do)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from gateway.formats import ResultFormat, render, timestamp, to_verbose_json
from stt_daemon.common.protocol import Segment, TranscriptResult, VoicePrintsWire, Word
from stt_daemon.diarize import merge

RESULT = TranscriptResult(
    text="Hello there. Second line.",
    language="en",
    language_probability=0.99,
    duration=3725.5,
    model="tiny.en",
    segments=[
        Segment(
            id=0,
            start=0.0,
            end=2.5,
            text=" Hello\n\nthere.",
            words=[Word(start=0.0, end=1.0, word=" Hello", probability=0.9)],
        ),
        Segment(id=1, start=2.5, end=5.0, text="   ", speaker=None),
        Segment(id=2, start=3723.25, end=3725.5, text=" Second line.", speaker="channel_1"),
    ],
)


def _demux(text: str, suffix: str, tmp_path: Path) -> list[tuple[float, float, str]]:
    path = tmp_path / f"subs.{suffix}"
    path.write_text(text)
    cues = []
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None and packet.duration is not None:
                base = packet.time_base
                start, length = float(packet.pts * base), float(packet.duration * base)
                cues.append((start, start + length, bytes(packet).decode()))
    return cues


def test_timestamps() -> None:
    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(3723.2504, ".") == "01:02:03.250"
    assert timestamp(-1, ",") == "00:00:00,000"


def test_srt_is_read_by_ffmpeg_with_the_right_cues(tmp_path: Path) -> None:
    body, media_type = render(RESULT, ResultFormat.SRT)
    assert media_type.startswith("application/x-subrip")
    assert body.startswith("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n")
    assert "\n2\n01:02:03,250 --> 01:02:05,500\nchannel_1: Second line.\n" in body
    cues = _demux(body, "srt", tmp_path)
    assert cues == [(0.0, 2.5, "Hello there."), (3723.25, 3725.5, "channel_1: Second line.")]


def test_vtt_is_read_by_ffmpeg_with_the_right_cues(tmp_path: Path) -> None:
    body, media_type = render(RESULT, ResultFormat.VTT)
    assert media_type.startswith("text/vtt")
    assert body.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\n")
    cues = _demux(body, "vtt", tmp_path)
    assert [c[:2] for c in cues] == [(0.0, 2.5), (3723.25, 3725.5)]
    assert cues[1][2] == "<v channel_1>Second line."


def test_tsv_text_and_json() -> None:
    tsv, _ = render(RESULT, ResultFormat.TSV)
    assert tsv.splitlines() == [
        "start\tend\tspeaker\ttext",
        "0\t2500\t\tHello there.",
        "3723250\t3725500\tchannel_1\tSecond line.",
    ]
    text, _ = render(RESULT, ResultFormat.TEXT)
    # Channels are speakers too: one line per change of speaker, with its prefix.
    assert text == "Hello there.\nchannel_1: Second line.\n"
    full, _ = render(RESULT, ResultFormat.JSON)
    assert TranscriptResult.model_validate_json(full) == RESULT
    assert "voiceprints" not in json.loads(full)


def test_json_never_shows_voice_prints() -> None:
    # They travel between daemons on part results; a result that kept them by mistake
    # must not hand them (or a null where they go) to users.
    prints = VoicePrintsWire(windows=[(0.0, 1.5)], dim=1, embeddings="ADw=")
    full, _ = render(RESULT.model_copy(update={"voiceprints": prints}), ResultFormat.JSON)
    assert "voiceprints" not in json.loads(full)


def test_verbose_json_has_openai_shape() -> None:
    body = json.loads(render(RESULT, ResultFormat.VERBOSE_JSON)[0])
    assert body == to_verbose_json(RESULT)
    assert (body["task"], body["language"], body["duration"]) == ("transcribe", "en", 3725.5)
    assert [s["id"] for s in body["segments"]] == [0, 1, 2]
    assert body["segments"][2]["speaker"] == "channel_1"
    assert body["words"] == [{"word": " Hello", "start": 0.0, "end": 1.0}]


def test_channel_merge_orders_by_time_and_labels_speakers() -> None:
    def result(*spans: tuple[float, str]) -> TranscriptResult:
        segments = [Segment(id=i, start=s, end=s + 1, text=t) for i, (s, t) in enumerate(spans)]
        text = " ".join(t for _, t in spans)
        return TranscriptResult(text=text, language="en", duration=10, model="m", segments=segments)

    merged = merge([result((0, "a"), (5, "c")), result((2, "b"), (6, " "))], duration=10)
    assert [(s.id, s.text, s.speaker) for s in merged.segments] == [
        (0, "a", "channel_0"),
        (1, "b", "channel_1"),
        (2, "c", "channel_0"),
    ]
    assert merged.text == "a b c"
    with pytest.raises(ValueError):
        merge([], duration=0)
