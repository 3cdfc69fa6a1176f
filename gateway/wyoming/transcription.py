"""One Wyoming transcription: its request, its audio format, its session and its streamed text."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from wyoming.audio import AudioChunk, AudioChunkConverter

from gateway.agreement import TimedWord
from gateway.livesession import SAMPLE_RATE, LiveSession
from gateway.wyoming.framing import BadEvent

#: Sample widths audioop converts (bytes); 1 is unsigned 8-bit.
WIDTHS = (1, 2, 3, 4)
#: AudioChunkConverter mixes stereo down to mono; it has no rule for more channels.
CHANNELS = (1, 2)
MIN_RATE, MAX_RATE = 4000, 192_000
#: Longest model name or language a transcribe may carry, and its names and terms.
MAX_FIELD_CHARS = 128
MAX_LIST_ITEMS = 100


@dataclass(frozen=True)
class Request:
    """The fields of a ``transcribe`` event this server uses."""

    name: str | None = None
    language: str | None = None
    names: list[str] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Request:
        """Validate a transcribe's ``data`` (BadEvent when a field has the wrong type)."""
        return cls(
            name=_optional_str(data, "name"),
            language=_optional_str(data, "language"),
            names=_str_list(data, "transcript_names"),
            terms=_str_list(data, "transcript_terms"),
        )


@dataclass(frozen=True)
class AudioFormat:
    """Rate (Hz), sample width (bytes) and channels of a transcription's audio."""

    rate: int
    width: int
    channels: int

    @classmethod
    def from_data(cls, data: dict[str, Any], what: str) -> AudioFormat:
        """The format in an ``audio-start`` or ``audio-chunk``; BadEvent if unusable."""
        rate, width, channels = (_int(data, key, what) for key in ("rate", "width", "channels"))
        if not MIN_RATE <= rate <= MAX_RATE:
            raise BadEvent(f"{what}: rate must be {MIN_RATE} to {MAX_RATE} Hz")
        if width not in WIDTHS:
            raise BadEvent(f"{what}: width must be 1 to 4 bytes")
        if channels not in CHANNELS:
            raise BadEvent(f"{what}: channels must be 1 or 2")
        return cls(rate, width, channels)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample of every channel."""
        return self.width * self.channels


class StreamedText:
    """Committed words as ``transcript-chunk`` texts that add up to the transcript exactly.

    The transcript is the utterances' texts, each stripped, joined by one space
    (LiveSession.transcript): so the first word of an utterance loses its leading
    space and gains one separator, and trailing spaces wait for the next word.
    """

    def __init__(self) -> None:
        self._any = False
        self._at_start = True
        self._pending = ""

    def add(self, words: Iterable[TimedWord]) -> str:
        """The text these newly committed words add."""
        parts: list[str] = []
        for word in words:
            text = word.text
            if self._at_start:
                text = text.lstrip()
                if not text:
                    continue
                text = (" " if self._any else "") + text
                self._any, self._at_start = True, False
            else:
                text = self._pending + text
            body = text.rstrip()
            self._pending = text[len(body) :]
            parts.append(body)
        return "".join(parts)

    def end_utterance(self) -> None:
        """The utterance is complete: the next word starts another."""
        self._at_start = True
        self._pending = ""


@dataclass
class Transcription:
    """The transcription in progress on a connection (between audio-start and audio-stop)."""

    #: Leaving it closes the session and records it as a job (LiveSessions.open).
    exits: AsyncExitStack
    session: LiveSession
    format: AudioFormat
    #: The client's protocol has transcript-start/-chunk/-stop (wyoming 1.7.0 and later).
    streaming: bool
    converter: AudioChunkConverter = field(
        default_factory=lambda: AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)
    )
    text: StreamedText = field(default_factory=StreamedText)
    #: Sends the session's committed words as they come (and ends with the session).
    pump: asyncio.Task[None] | None = None

    def pcm(self, data: dict[str, Any], payload: bytes | None) -> bytes:
        """An ``audio-chunk`` as 16 kHz 16-bit mono (BadEvent if it is not like audio-start)."""
        fmt = AudioFormat.from_data(data, "audio-chunk")
        if fmt != self.format:
            raise BadEvent("audio-chunk: rate, width and channels differ from audio-start's")
        audio = payload or b""
        if len(audio) % fmt.frame_bytes:
            raise BadEvent("audio-chunk: not a whole number of samples")
        chunk = AudioChunk(rate=fmt.rate, width=fmt.width, channels=fmt.channels, audio=audio)
        return self.converter.convert(chunk).audio


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
        raise BadEvent(f"transcribe: {key} must be a string of at most {MAX_FIELD_CHARS} chars")
    return value or None


def _str_list(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or len(value) > MAX_LIST_ITEMS
        or not all(isinstance(v, str) and len(v) <= MAX_FIELD_CHARS for v in value)
    ):
        raise BadEvent(f"transcribe: {key} must be a list of at most {MAX_LIST_ITEMS} strings")
    return value


def _int(data: dict[str, Any], key: str, what: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadEvent(f"{what}: {key} must be an integer")
    return value
