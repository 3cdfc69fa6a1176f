"""Result formats: JSON, OpenAI's verbose_json, plain text, SRT, WebVTT and TSV.

Subtitles follow what common players accept: SRT numbers cues from 1 with
``HH:MM:SS,mmm`` times; WebVTT starts with a ``WEBVTT`` header and uses
``HH:MM:SS.mmm``; TSV is Whisper's own (milliseconds, tab-separated).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from stt_daemon.protocol import Segment, TranscriptResult


class ResultFormat(StrEnum):
    """Formats a result can be fetched in (``?format=``)."""

    JSON = "json"
    VERBOSE_JSON = "verbose_json"
    TEXT = "text"
    SRT = "srt"
    VTT = "vtt"
    TSV = "tsv"


MEDIA_TYPES = {
    ResultFormat.JSON: "application/json",
    ResultFormat.VERBOSE_JSON: "application/json",
    ResultFormat.TEXT: "text/plain; charset=utf-8",
    ResultFormat.SRT: "application/x-subrip; charset=utf-8",
    ResultFormat.VTT: "text/vtt; charset=utf-8",
    ResultFormat.TSV: "text/tab-separated-values; charset=utf-8",
}


def timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS<sep>mmm`` (hours are not wrapped: a 30-hour file stays readable)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cue_text(segment: Segment) -> str:
    # A cue must not contain a blank line: it would end the cue early.
    text = " ".join(segment.text.split())
    return f"[{segment.speaker}] {text}" if segment.speaker else text


def _cues(result: TranscriptResult) -> list[Segment]:
    return [s for s in result.segments if s.text.strip()]


def to_srt(result: TranscriptResult) -> str:
    """SubRip subtitles."""
    blocks = [
        f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{_cue_text(s)}\n"
        for i, s in enumerate(_cues(result), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(result: TranscriptResult) -> str:
    """WebVTT subtitles (speakers as voice spans)."""
    blocks = ["WEBVTT\n"]
    for s in _cues(result):
        text = " ".join(s.text.split())
        if s.speaker:
            text = f"<v {s.speaker}>{text}"
        blocks.append(f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{text}\n")
    return "\n".join(blocks)


def to_tsv(result: TranscriptResult) -> str:
    """Whisper's TSV: start and end in integer milliseconds, then the text."""
    has_speakers = any(s.speaker for s in result.segments)
    header = "start\tend\tspeaker\ttext" if has_speakers else "start\tend\ttext"
    rows = [header]
    for s in _cues(result):
        text = " ".join(s.text.split()).replace("\t", " ")
        fields = [str(round(s.start * 1000)), str(round(s.end * 1000))]
        if has_speakers:
            fields.append(s.speaker or "")
        rows.append("\t".join([*fields, text]))
    return "\n".join(rows) + "\n"


def to_verbose_json(result: TranscriptResult) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` shape: task, language, duration, text, segments, words.

    Plus ``warnings`` when the result has any.
    """
    body: dict[str, Any] = {
        "task": result.task.value,
        "language": result.language,
        "duration": result.duration,
        "text": result.text,
        "segments": [
            {
                "id": s.id,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                **({"speaker": s.speaker} if s.speaker else {}),
            }
            for s in result.segments
        ],
    }
    words = [w for s in result.segments for w in (s.words or [])]
    if words:
        body["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in words]
    if result.warnings:
        # Not OpenAI's, but its clients ignore keys they do not know, and speech left
        # out of the text must not go unsaid (e.g. another language on tiny.en).
        body["warnings"] = [w.model_dump(exclude_none=True) for w in result.warnings]
    return body


def render(result: TranscriptResult, fmt: ResultFormat) -> tuple[str, str]:
    """The body and media type of a result in ``fmt`` (json is our full result)."""
    if fmt is ResultFormat.JSON:
        body = result.model_dump_json()
    elif fmt is ResultFormat.VERBOSE_JSON:
        body = json.dumps(to_verbose_json(result), ensure_ascii=False)
    elif fmt is ResultFormat.TEXT:
        body = result.text + "\n"
    elif fmt is ResultFormat.SRT:
        body = to_srt(result)
    elif fmt is ResultFormat.VTT:
        body = to_vtt(result)
    else:
        body = to_tsv(result)
    return body, MEDIA_TYPES[fmt]
