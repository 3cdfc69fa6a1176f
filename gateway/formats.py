"""Result formats: JSON, OpenAI's verbose_json and diarized_json, text, SRT, WebVTT, TSV, RTTM.

Subtitles follow what common players accept: SRT numbers cues from 1 with
``HH:MM:SS,mmm`` times; WebVTT starts with a ``WEBVTT`` header and uses
``HH:MM:SS.mmm``; TSV is Whisper's own (milliseconds, tab-separated); RTTM is
NIST's turn list, as diarization scorers (pyannote-metrics, dscore) read it.

Speakers, whether voices (``SPEAKER_00``, ``diarize=speakers``) or channels
(``channel_0``, ``diarize=channels``), show the same way in every format: a
``SPEAKER_00: `` prefix in SRT and text, a voice span in WebVTT, a column in TSV.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import StrEnum
from itertools import groupby
from typing import Any

from stt_daemon.common.protocol import Segment, SpeakerTurn, TranscriptResult


class ResultFormat(StrEnum):
    """Formats a result can be fetched in (``?format=``)."""

    JSON = "json"
    VERBOSE_JSON = "verbose_json"
    TEXT = "text"
    SRT = "srt"
    VTT = "vtt"
    TSV = "tsv"
    #: NIST RTTM: one ``SPEAKER`` line per speaker turn.
    RTTM = "rttm"
    #: OpenAI's shape for speaker-labelled segments (``gpt-4o-transcribe-diarize``).
    DIARIZED_JSON = "diarized_json"


MEDIA_TYPES = {
    ResultFormat.JSON: "application/json",
    ResultFormat.VERBOSE_JSON: "application/json",
    ResultFormat.TEXT: "text/plain; charset=utf-8",
    ResultFormat.SRT: "application/x-subrip; charset=utf-8",
    ResultFormat.VTT: "text/vtt; charset=utf-8",
    ResultFormat.TSV: "text/tab-separated-values; charset=utf-8",
    # RTTM has no registered media type; it is plain text, one turn a line.
    ResultFormat.RTTM: "text/plain; charset=utf-8",
    ResultFormat.DIARIZED_JSON: "application/json",
}

#: Formats that only mean something when the result has speakers.
SPEAKER_FORMATS = frozenset({ResultFormat.RTTM, ResultFormat.DIARIZED_JSON})
#: RTTM's file id when the caller names none (it may not contain whitespace).
DEFAULT_FILE_ID = "audio"


class NoSpeakers(ValueError):
    """A format made of speakers, asked of a result that has none."""

    def __init__(self, fmt: ResultFormat) -> None:
        super().__init__(
            f"format {fmt.value} lists speakers, and this result has none: submit the job "
            "with diarize=speakers (or diarize=channels for one speaker per channel)"
        )


def timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS<sep>mmm`` (hours are not wrapped: a 30-hour file stays readable)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _one_line(text: str) -> str:
    # A cue must not contain a blank line: it would end the cue early.
    return " ".join(text.split())


def _cue_text(segment: Segment) -> str:
    text = _one_line(segment.text)
    return f"{segment.speaker}: {text}" if segment.speaker else text


def _cues(result: TranscriptResult) -> list[Segment]:
    return [s for s in result.segments if s.text.strip()]


def has_speakers(result: TranscriptResult) -> bool:
    """True when the result says who spoke (even "nobody": diarized silence has no turns)."""
    return result.speaker_turns is not None or any(s.speaker for s in result.segments)


def speaker_turns(result: TranscriptResult) -> list[SpeakerTurn]:
    """Who spoke when: the result's turns, else one per segment with a speaker (channels)."""
    if result.speaker_turns is not None:
        return list(result.speaker_turns)
    # diarize=channels labels segments only; two channels may overlap, as RTTM allows.
    turns = [
        SpeakerTurn(start=s.start, end=s.end, speaker=s.speaker) for s in _cues(result) if s.speaker
    ]
    return sorted(turns, key=lambda t: (t.start, t.end))


def to_srt(result: TranscriptResult) -> str:
    """SubRip subtitles (speakers as a ``SPEAKER_00: `` prefix)."""
    blocks = [
        f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{_cue_text(s)}\n"
        for i, s in enumerate(_cues(result), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(result: TranscriptResult) -> str:
    """WebVTT subtitles (speakers as voice spans, ``<v SPEAKER_00>``)."""
    blocks = ["WEBVTT\n"]
    for s in _cues(result):
        text = _one_line(s.text)
        if s.speaker:
            text = f"<v {s.speaker}>{text}"
        blocks.append(f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{text}\n")
    return "\n".join(blocks)


def to_text(result: TranscriptResult) -> str:
    """The text; with speakers, one ``SPEAKER_00: ...`` line per change of speaker."""
    if not any(s.speaker for s in result.segments):
        return result.text + "\n"
    lines = []
    for speaker, run in groupby(_cues(result), key=lambda s: s.speaker):
        text = " ".join(_one_line(s.text) for s in run)
        lines.append(f"{speaker}: {text}" if speaker else text)
    return "".join(f"{line}\n" for line in lines)


def to_tsv(result: TranscriptResult) -> str:
    """Whisper's TSV: start and end in integer milliseconds, then the text."""
    has_speaker_column = any(s.speaker for s in result.segments)
    header = "start\tend\tspeaker\ttext" if has_speaker_column else "start\tend\ttext"
    rows = [header]
    for s in _cues(result):
        text = _one_line(s.text).replace("\t", " ")
        fields = [str(round(s.start * 1000)), str(round(s.end * 1000))]
        if has_speaker_column:
            fields.append(s.speaker or "")
        rows.append("\t".join([*fields, text]))
    return "\n".join(rows) + "\n"


def to_rttm(result: TranscriptResult, file_id: str | None = None) -> str:
    """NIST RTTM, one line per turn: ``SPEAKER <file> 1 <onset> <duration> <NA> <NA> <who>
    <NA> <NA>``, seconds to 3 decimals. Raises NoSpeakers for a result without speakers."""
    if not has_speakers(result):
        raise NoSpeakers(ResultFormat.RTTM)
    # Fields are separated by spaces: none may contain whitespace.
    file_id = "_".join((file_id or DEFAULT_FILE_ID).split()) or DEFAULT_FILE_ID
    lines = [
        f"SPEAKER {file_id} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> "
        f"{'_'.join(t.speaker.split())} <NA> <NA>\n"
        for t in speaker_turns(result)
        if t.end > t.start
    ]
    return "".join(lines)


def _words(result: TranscriptResult) -> Iterator[dict[str, Any]]:
    for segment in result.segments:
        for w in segment.words or []:
            word: dict[str, Any] = {"word": w.word, "start": w.start, "end": w.end}
            if w.speaker:
                word["speaker"] = w.speaker
            yield word


def to_verbose_json(result: TranscriptResult) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` shape: task, language, duration, text, segments, words.

    Plus ``warnings`` when the result has any, ``speaker`` on segments and words and
    ``speaker_turns`` when it has speakers.
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
    words = list(_words(result))
    if words:
        body["words"] = words
    # Not OpenAI's keys, but its clients ignore keys they do not know.
    if result.speaker_turns is not None:
        body["speaker_turns"] = [t.model_dump() for t in result.speaker_turns]
    if result.warnings:
        # Speech left out of the text must not go unsaid (e.g. another language on tiny.en).
        body["warnings"] = [w.model_dump(exclude_none=True) for w in result.warnings]
    return body


def letter_label(index: int) -> str:
    """``A``, ``B``... ``Z``, ``AA``, ``AB``...: OpenAI's speaker labels."""
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def to_diarized_json(result: TranscriptResult) -> dict[str, Any]:
    """OpenAI's ``diarized_json``: task, duration, text, speaker-labelled segments, usage.

    Speakers are lettered ``A``, ``B``... in order of first appearance, as OpenAI labels
    them when it is given no known speakers. Raises NoSpeakers without speakers.
    """
    if not has_speakers(result):
        raise NoSpeakers(ResultFormat.DIARIZED_JSON)
    letters: dict[str, str] = {}
    segments = []
    for s in _cues(result):
        # The shape needs a label on every segment; the daemon gives one to every word,
        # so "unknown" is for a segment it could not place, never a made-up speaker.
        label = "unknown"
        if s.speaker:
            label = letters.setdefault(s.speaker, letter_label(len(letters)))
        segments.append(
            {
                "type": "transcript.text.segment",
                "id": f"seg_{s.id}",
                "start": s.start,
                "end": s.end,
                "text": _one_line(s.text),
                "speaker": label,
            }
        )
    return {
        "task": "transcribe",
        "duration": result.duration,
        "text": result.text,
        "segments": segments,
        "usage": {"type": "duration", "seconds": result.duration},
    }


def render(
    result: TranscriptResult, fmt: ResultFormat, *, file_id: str | None = None
) -> tuple[str, str]:
    """The body and media type of a result in ``fmt`` (json is our full result).

    ``file_id`` names the recording in RTTM (the job id). Raises NoSpeakers for a
    speaker format asked of a result without speakers.
    """
    if fmt is ResultFormat.JSON:
        # Voice prints travel between daemons only (part results); never to users.
        body = result.model_dump_json(exclude={"voiceprints"})
    elif fmt is ResultFormat.VERBOSE_JSON:
        body = json.dumps(to_verbose_json(result), ensure_ascii=False)
    elif fmt is ResultFormat.DIARIZED_JSON:
        body = json.dumps(to_diarized_json(result), ensure_ascii=False)
    elif fmt is ResultFormat.RTTM:
        body = to_rttm(result, file_id)
    else:
        body = _TEXT_RENDERERS[fmt](result)
    return body, MEDIA_TYPES[fmt]


_TEXT_RENDERERS = {
    ResultFormat.TEXT: to_text,
    ResultFormat.SRT: to_srt,
    ResultFormat.VTT: to_vtt,
    ResultFormat.TSV: to_tsv,
}
