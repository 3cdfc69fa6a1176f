"""Live transcription on the wire: a window of a session's audio, and the daemon's answer.

A live session lives in the gateway (or a protocol adapter), which about once a
second sends the session's current window, at most ~30 s of raw 16 kHz PCM, to
the live queue of a model (``<ns>.live.<model>``) with ``reply_to`` (RabbitMQ's
direct reply-to) and a short ``expiration``: a window that waits too long dies in
the queue instead of being transcribed late. Any daemon of that model answers
with words, timestamps, probabilities and where its voice-activity detector
heard speech. Daemons keep no state between windows: a daemon dying mid-session
costs one window, which the gateway sends again to any other.

The request is the PCM itself (``content_type`` :data:`WINDOW_CONTENT_TYPE`,
little-endian int16 mono at 16 kHz) with the options in headers; the answer is
:class:`LiveReply` as JSON. Both are bounded: a window longer than
:data:`MAX_WINDOW_SECONDS` or a prompt longer than :data:`MAX_PROMPT_CHARS` is
refused with an error reply. Each message's encoder sits beside its decoder.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import aio_pika
from pydantic import BaseModel, ConfigDict, Field

from stt_daemon.common.protocol import (
    JSON_CONTENT_TYPE,
    SCHEMA_VERSION,
    DecodeError,
    Segment,
    Task,
    TranscriptResult,
    utcnow,
)

#: Raw PCM: 16-bit little-endian signed, mono, 16 kHz.
WINDOW_CONTENT_TYPE = "audio/x-stt-pcm16; rate=16000"
SAMPLE_RATE = 16000
#: Whisper sees 30 s at once; a little more is tolerated (a session trims at commits).
MAX_WINDOW_SECONDS = 32.0
MAX_WINDOW_BYTES = int(MAX_WINDOW_SECONDS * SAMPLE_RATE) * 2
#: The prompt is the committed text's tail: Whisper reads at most 224 tokens of it.
MAX_PROMPT_CHARS = 1000
#: Header names of a window's options.
HEADER_SESSION = "x-stt-session"
HEADER_LANGUAGE = "x-stt-language"
HEADER_TASK = "x-stt-task"
HEADER_PROMPT = "x-stt-prompt"
#: Unix time (seconds) after which nobody waits for the answer any more: a daemon that
#: takes the window later skips it (expiration only drops messages at a queue's head).
HEADER_DEADLINE = "x-stt-deadline"


class WindowOptions(BaseModel):
    """What a window asks for (from its headers)."""

    model_config = ConfigDict(frozen=True)

    session: str = Field(default="", max_length=128)
    language: str | None = Field(default=None, max_length=16)
    task: Task = Task.TRANSCRIBE
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    deadline: float | None = None

    def headers(self) -> dict[str, Any]:
        """The AMQP headers that carry these options."""
        headers: dict[str, Any] = {HEADER_SESSION: self.session, HEADER_TASK: self.task.value}
        if self.language:
            headers[HEADER_LANGUAGE] = self.language
        if self.prompt:
            headers[HEADER_PROMPT] = self.prompt
        if self.deadline is not None:
            headers[HEADER_DEADLINE] = f"{self.deadline:.3f}"
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None) -> WindowOptions:
        """Options from a window's headers (raises ValueError when they are invalid)."""
        headers = headers or {}

        def text(name: str) -> str | None:
            value = headers.get(name)
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            return None if value is None else str(value)

        deadline = text(HEADER_DEADLINE)
        return cls.model_validate(
            {
                "session": text(HEADER_SESSION) or "",
                "language": text(HEADER_LANGUAGE) or None,
                "task": text(HEADER_TASK) or Task.TRANSCRIBE.value,
                "prompt": text(HEADER_PROMPT) or None,
                "deadline": float(deadline) if deadline else None,
            }
        )

    def expired(self, now: float | None = None) -> bool:
        """True once nobody waits for this window's answer."""
        return self.deadline is not None and (now or time.time()) > self.deadline


class LiveWord(BaseModel):
    """One word of a window's hypothesis, timed from the window's start."""

    start: float
    end: float
    word: str
    probability: float


class LiveReply(BaseModel):
    """A daemon's answer to one window."""

    schema_version: Literal[1] = SCHEMA_VERSION
    #: The window's length, seconds.
    duration: float = 0.0
    words: list[LiveWord] = []
    #: Where the voice-activity detector heard speech: ``[start, end]`` pairs, seconds.
    speech: list[tuple[float, float]] = []
    language: str | None = None
    #: Seconds the daemon spent on the window (transcription and VAD).
    compute_s: float = 0.0
    worker: str | None = None
    #: Set instead of a hypothesis when the window was refused (bad audio, options).
    error: str | None = None


class SessionEvent(BaseModel):
    """A live session's news on the results exchange (``session.segment``, ``session.ended``).

    ``session.segment`` carries one complete utterance as it is committed, so that
    downstream services can follow a meeting while it happens; ``session.ended``
    carries the whole transcript (the session is also a job: its id answers
    ``GET /v1/jobs/{id}`` and its result every format, like any job's).
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    event: Literal["session.segment", "session.ended"]
    session_id: str
    model: str
    timestamp: datetime = Field(default_factory=utcnow)
    segment: Segment | None = None
    result: TranscriptResult | None = None
    error: str | None = None


def window_refusal(body: bytes, *, content_type: str | None, reply_to: str | None) -> str | None:
    """Why a window cannot be taken (None when it can); its options are read apart."""
    ctype = (content_type or "").replace(" ", "").lower()
    if ctype != WINDOW_CONTENT_TYPE.replace(" ", "").lower():
        return f"live windows are {WINDOW_CONTENT_TYPE!r}, not {content_type!r}"
    if len(body) > MAX_WINDOW_BYTES:
        return f"window of {len(body)} bytes is over {MAX_WINDOW_BYTES}"
    if len(body) % 2:
        return "16-bit PCM has an even number of bytes"
    if not reply_to:
        return "a live window needs reply_to"
    return None


def encode_window(
    pcm: bytes,
    options: WindowOptions,
    *,
    wait: float,
    reply_to: str,
    correlation_id: str,
    user_id: str | None,
) -> aio_pika.Message:
    """A window for a live queue; the sender waits ``wait`` seconds for the answer.

    The window then expires in its queue, and its deadline header tells a daemon
    that takes it later to skip it. The PCM goes as it is, neither checked nor
    copied: this is every window's path, and the daemon checks it anyway.
    """
    headers = options.headers()
    headers[HEADER_DEADLINE] = f"{time.time() + wait:.3f}"
    return aio_pika.Message(
        pcm,
        content_type=WINDOW_CONTENT_TYPE,
        headers=headers,
        reply_to=reply_to,
        correlation_id=correlation_id,
        expiration=wait,
        user_id=user_id,
    )


def decode_reply(body: bytes) -> LiveReply:
    """Decode a daemon's answer to a window."""
    try:
        return LiveReply.model_validate_json(body)
    except ValueError as exc:
        raise DecodeError(f"invalid live reply: {exc}") from None


def encode_reply(
    reply: LiveReply, *, correlation_id: str | None, user_id: str | None
) -> aio_pika.Message:
    """The answer to a window (sent to its ``reply_to``), defaults left out: it is sent often."""
    return aio_pika.Message(
        reply.model_dump_json(exclude_defaults=True).encode(),
        content_type=JSON_CONTENT_TYPE,
        correlation_id=correlation_id,
        user_id=user_id,
    )


def decode_session_event(body: bytes) -> SessionEvent:
    """Decode a live session's news from the results exchange."""
    try:
        return SessionEvent.model_validate_json(body)
    except ValueError as exc:
        raise DecodeError(f"invalid session event: {exc}") from None


def session_event_message_id(news: SessionEvent) -> str:
    """The ``message_id`` of a session's news: one per utterance, one for the end."""
    if news.event == "session.segment":
        return f"{news.session_id}:segment:{news.segment.id if news.segment else ''}"
    return f"{news.session_id}:ended"


def encode_session_event(news: SessionEvent, *, user_id: str | None) -> aio_pika.Message:
    """A session's news for the results exchange (routing key ``news.event``), persistent."""
    return aio_pika.Message(
        news.model_dump_json(exclude_none=True).encode(),
        content_type=JSON_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=session_event_message_id(news),
        user_id=user_id,
        type=news.event,
    )
