"""The wire contract: job messages, result events and their JSON encoding.

The daemon owns the protocol it consumes; the gateway and outside producers
import it. Each message has its encoder beside its decoder: body, content type,
headers and the other AMQP properties are written here once, and every publisher
uses them. This module imports nothing else of ours and never faster-whisper.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import aio_pika
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION: Literal[1] = 1
JSON_CONTENT_TYPE = "application/json"
#: Routing keys on the control exchange: a cancellation, and a gateway asking every
#: daemon to announce itself now (announcements go as ``daemon.up`` / ``daemon.down``).
CANCEL_ROUTING_KEY = "job.cancel"
HELLO_ROUTING_KEY = "gateway.hello"

#: Headers an AMQP-only producer may set on a raw ``audio/*`` message body.
INLINE_OPTION_HEADERS = (
    "model",
    "language",
    "task",
    "word_timestamps",
    "prompt",
    "hotwords",
    "vad_filter",
    "beam_size",
    "temperature",
    "diarize",
    "num_speakers",
    "min_speakers",
    "max_speakers",
    "callback_url",
    "split",
)


class JobStatus(StrEnum):
    """Where a job is. Final: succeeded, failed, cancelled.

    It only moves forward, but for one step back: a job handed back by a daemon
    that stopped (``job.requeued``) is queued again.
    """

    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def rank(self) -> int:
        """Order used to refuse regressions (both final states share the top rank)."""
        return _RANK[self]

    @property
    def is_final(self) -> bool:
        """True for succeeded, failed and cancelled."""
        return self.rank == 2


_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.PROCESSING: 1,
    JobStatus.SUCCEEDED: 2,
    JobStatus.FAILED: 2,
    JobStatus.CANCELLED: 2,
}


class Task(StrEnum):
    """What Whisper does with the speech."""

    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


class EventType(StrEnum):
    """Event names; each is also the routing key on the results exchange."""

    STARTED = "job.started"
    PROGRESS = "job.progress"
    #: A daemon that stopped handed the job back, unharmed: it waits in the queue
    #: again (no attempt used), and resumes from its checkpoint.
    REQUEUED = "job.requeued"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"

    @property
    def status(self) -> JobStatus:
        """The job status this event reports."""
        return {
            EventType.STARTED: JobStatus.PROCESSING,
            EventType.PROGRESS: JobStatus.PROCESSING,
            EventType.REQUEUED: JobStatus.QUEUED,
            EventType.SUCCEEDED: JobStatus.SUCCEEDED,
            EventType.FAILED: JobStatus.FAILED,
            EventType.CANCELLED: JobStatus.CANCELLED,
        }[self]


class ErrorCode(StrEnum):
    """Machine-readable failure reasons; each event also carries a sentence for people."""

    BAD_MESSAGE = "bad_message"
    BAD_AUDIO = "bad_audio"
    AUDIO_TOO_LONG = "audio_too_long"
    BLOB_MISSING = "blob_missing"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    UNKNOWN_MODEL = "unknown_model"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    CANCELLED = "cancelled"
    UNSUPPORTED = "unsupported"
    #: A claim check without a valid signature, where claim checks must be signed.
    FORBIDDEN = "forbidden"
    INTERNAL = "internal"


def utcnow() -> datetime:
    """Timezone-aware now, the only clock format on the wire."""
    return datetime.now(UTC)


class _Wire(BaseModel):
    # Unknown fields are ignored so that newer producers can add optional fields
    # without breaking older daemons; breaking changes bump SCHEMA_VERSION.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Diarize(StrEnum):
    """How speakers are told apart."""

    NONE = "none"
    #: Each channel of a multi-channel recording is one speaker.
    CHANNELS = "channels"
    #: Voices told apart in one channel (speaker embeddings, clustered).
    SPEAKERS = "speakers"


#: The most speakers a hint may name: more than any meeting we expect, and a bound on
#: the clustering's work.
MAX_SPEAKERS = 32


class JobOptions(_Wire):
    """How to transcribe. Every field is optional; Whisper's defaults apply when absent."""

    model: str = "tiny.en"
    #: ISO 639-1 code; absent = detect (reported with its probability).
    language: str | None = Field(default=None, min_length=2, max_length=8)
    task: Task = Task.TRANSCRIBE
    word_timestamps: bool = False
    #: Initial prompt: spelling, names, style of the previous context.
    prompt: str | None = Field(default=None, max_length=2000)
    #: Words or phrases to favour (comma-separated), e.g. product names.
    hotwords: str | None = Field(default=None, max_length=1000)
    #: Skip silence with Silero VAD before decoding.
    vad_filter: bool = False
    beam_size: int | None = Field(default=None, ge=1, le=10)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    diarize: Diarize = Diarize.NONE
    #: With ``diarize=speakers``: how many speakers there are, when known; or bounds
    #: on the estimate. Absent: estimated (one voice alone comes out as one speaker).
    num_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    min_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    max_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    #: Where the gateway POSTs the final result (signed); see docs/api/webhooks.md.
    callback_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://")
    #: Let a long recording be split at pauses and its parts run on several daemons
    #: (see ``STT_SPLIT_SECONDS``); false keeps it one job, in one daemon.
    split: bool = True

    @model_validator(mode="after")
    def _speaker_hints_agree(self) -> JobOptions:
        # Checked here, so a producer on the broker gets the same answer as an HTTP caller.
        hints = [
            name
            for name in ("num_speakers", "min_speakers", "max_speakers")
            if getattr(self, name) is not None
        ]
        if hints and self.diarize is not Diarize.SPEAKERS:
            raise ValueError(f"{', '.join(hints)} needs diarize=speakers")
        if self.num_speakers is not None and (
            self.min_speakers is not None or self.max_speakers is not None
        ):
            raise ValueError("give num_speakers, or min_speakers/max_speakers, not both")
        low, high = self.min_speakers, self.max_speakers
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_speakers ({low}) is more than max_speakers ({high})")
        return self


class AudioRef(_Wire):
    """Claim check: where the audio lies in the blob store and how to verify it."""

    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    content_type: str | None = None
    filename: str | None = None


class PartInfo(_Wire):
    """Which part of a fanned-out recording a job message carries."""

    index: int = Field(ge=0)
    count: int = Field(ge=2)
    #: Where the part starts in the whole recording, seconds.
    offset: float = Field(ge=0)


class JobMessage(_Wire):
    """A job on the request exchange (JSON body)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str = Field(min_length=1, max_length=128)
    options: JobOptions = JobOptions()
    audio: AudioRef | None = None
    submitted_at: datetime = Field(default_factory=utcnow)
    #: The gateway request that submitted the job (``X-Request-ID``), for the daemon's logs.
    request_id: str | None = Field(default=None, max_length=128)
    #: Set by daemons on the parts of a long recording: ``job_id`` is then the whole
    #: recording's, and its events report on that job.
    part: PartInfo | None = None


class InboundJob(BaseModel):
    """A decoded job: the message plus its audio bytes when they came inline."""

    model_config = ConfigDict(frozen=True)

    message: JobMessage
    inline_audio: bytes | None = None
    #: The broker user that published the job, as RabbitMQ validated it (``user_id``),
    #: carried across the daemons' own copies; "" when the publisher did not say.
    producer: str | None = None

    @property
    def job_id(self) -> str:
        """The job's id (also the AMQP message_id)."""
        return self.message.job_id


class Word(_Wire):
    """One word with its timing."""

    start: float
    end: float
    word: str
    probability: float
    #: With ``diarize=speakers``: who said it (``SPEAKER_00``...).
    speaker: str | None = None


class SpeakerTurn(_Wire):
    """One stretch of time in which one speaker talks (``diarize=speakers``)."""

    start: float
    end: float
    speaker: str


class Segment(_Wire):
    """One stretch of speech."""

    id: int
    start: float
    end: float
    text: str
    words: list[Word] | None = None
    #: Whisper's mean token log probability for the segment: how sure it was.
    avg_logprob: float | None = None
    #: Who spoke: ``channel_0``, ``channel_1``... with ``diarize=channels``;
    #: ``SPEAKER_00``, ``SPEAKER_01``... (in order of first appearance) with
    #: ``diarize=speakers``, where a segment never spans a change of speaker.
    speaker: str | None = None


class WarningCode(StrEnum):
    """The warning codes daemons write."""

    #: Speech (Silero VAD) that no segment covers: another language than the model's
    #: or the detected one, most likely.
    UNTRANSCRIBED_SPEECH = "untranscribed_speech"


class ResultWarning(_Wire):
    """Something a user should know about a result that succeeded."""

    #: A ``WarningCode`` value, typed as a plain string so that consumers keep decoding
    #: results when a newer daemon adds a code.
    code: str
    #: For people: what happened and what to do.
    message: str
    #: Where in the audio, seconds (absent when it concerns the whole result).
    start: float | None = None
    end: float | None = None
    #: The language heard there, when a multilingual model could tell.
    language: str | None = None


class VoicePrintsWire(_Wire):
    """Speaker embeddings of one part of a split recording, for the merge (internal).

    A part's daemon embeds its own speech; the merge clusters the windows of all
    parts together, so one person keeps one label across parts. Never in a final
    result: daemons strip it.
    """

    #: ``(start, end)`` of each window, seconds in the whole recording.
    windows: list[tuple[float, float]]
    #: Numbers per embedding.
    dim: int = Field(ge=1, le=4096)
    #: base64 of the embeddings as little-endian float16, one row per window
    #: (``len(windows) x dim``): a minute of speech is about 40 KB.
    embeddings: str

    @model_validator(mode="after")
    def _sizes_agree(self) -> VoicePrintsWire:
        # base64 gives 4 characters for every 3 bytes, the last group padded.
        expected = 4 * -(-(2 * self.dim * len(self.windows)) // 3)
        if len(self.embeddings) != expected:
            raise ValueError(
                f"embeddings hold {len(self.embeddings)} base64 characters; "
                f"{len(self.windows)} windows of {self.dim} float16 need {expected}"
            )
        return self


class TranscriptResult(_Wire):
    """The full result of a job."""

    text: str
    language: str | None = None
    language_probability: float | None = None
    duration: float
    model: str
    task: Task = Task.TRANSCRIBE
    segments: list[Segment]
    #: Empty when there is nothing to say; e.g. speech the transcript misses.
    warnings: list[ResultWarning] = []
    #: With ``diarize=speakers``: who spoke when, in time order (absent otherwise).
    speaker_turns: list[SpeakerTurn] | None = None
    #: Internal, on part results of a split ``diarize=speakers`` job only: the part's
    #: speaker embeddings for the merge. Daemons strip it from final results.
    voiceprints: VoicePrintsWire | None = None


class ErrorInfo(_Wire):
    """Why a job failed."""

    code: ErrorCode
    message: str


class JobEvent(_Wire):
    """An event on the results exchange; the routing key is ``event``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event: EventType
    job_id: str
    #: Made once with the event: a retried publish or a redelivery keeps it, the next
    #: event gets another. The AMQP message_id of every event but a job's final one.
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    model: str | None = None
    timestamp: datetime = Field(default_factory=utcnow)
    attempt: int | None = None
    worker: str | None = None
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    #: On ``job.progress``: the segments finished since the attempt's previous progress
    #: event (ids count from the recording's start), so that a transcript can be shown
    #: as it grows. Absent elsewhere, and for split recordings and ``diarize=channels``,
    #: whose segments come with the final result only. With ``diarize=speakers`` they
    #: have no speakers yet (those are found after the transcription, and may cut
    #: segments). The final ``result`` is the truth.
    segments: list[Segment] | None = None
    result: TranscriptResult | None = None
    error: ErrorInfo | None = None
    #: The job's options, on final events: consumers (webhooks, outside producers'
    #: jobs in the status store) need them without a lookup.
    options: JobOptions | None = None
    #: The broker user that published the job ("" when it did not set ``user_id``).
    #: A status store lets events change only records of the same producer, so an
    #: outside producer reusing a gateway job's id cannot touch that job.
    producer: str | None = None

    @property
    def status(self) -> JobStatus:
        """The job status this event reports."""
        return self.event.status


class DaemonAnnouncement(_Wire):
    """A daemon saying it is alive and what it serves (``daemon.up`` / ``daemon.down``)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    worker: str
    models: list[str]
    #: The models among ``models`` that detect languages and translate.
    multilingual: list[str] = []
    #: Whether it runs ``diarize=speakers`` jobs (its speaker model loaded); False
    #: from daemons that predate the field.
    speakers: bool = False
    prefetch: int
    in_flight: int = 0
    state: Literal["up", "down"] = "up"
    #: Seconds until the next announcement; silence for three of them means gone.
    interval: float
    timestamp: datetime = Field(default_factory=utcnow)


class CancelRequest(_Wire):
    """Ask the daemons to skip (queued) or stop (running) a job."""

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    timestamp: datetime = Field(default_factory=utcnow)


class DecodeError(Exception):
    """A message that is not a valid job or event; never worth a retry."""


def _header_str(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _inline_options(headers: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in INLINE_OPTION_HEADERS:
        value = _header_str(headers, name)
        if value is not None:
            options[name] = value
    for flag in ("word_timestamps", "vad_filter", "split"):
        if flag in options:
            options[flag] = options[flag].lower() in {"1", "true", "yes"}
    return options


def decode_job(
    body: bytes,
    *,
    content_type: str | None,
    message_id: str | None,
    headers: Mapping[str, Any] | None = None,
    default_model: str | None = None,
) -> InboundJob:
    """Decode a job from an AMQP delivery, raising DecodeError with a reason a person can act on.

    ``default_model`` is the model of the queue the raw-audio message came from,
    used when the producer set no ``model`` header.
    """
    headers = headers or {}
    ctype = (content_type or "").split(";")[0].strip().lower()
    try:
        if ctype.startswith(("audio/", "video/")) or ctype == "application/octet-stream":
            if not body:
                raise DecodeError("empty audio body")
            if not message_id:
                # Without it every redelivery would report under a new id.
                raise DecodeError("raw audio messages need a message_id: it is the job id")
            options = _inline_options(headers)
            if default_model and "model" not in options:
                options["model"] = default_model
            message = JobMessage(job_id=message_id, options=JobOptions.model_validate(options))
            return InboundJob(message=message, inline_audio=body)
        if ctype not in {"", JSON_CONTENT_TYPE}:
            raise DecodeError(
                f"unsupported content_type {content_type!r}: send application/json "
                "(claim check) or audio/* (raw audio body)"
            )
        data = json.loads(body)
        if not isinstance(data, dict):
            raise DecodeError("job body must be a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DecodeError(
                f"unsupported schema_version {version!r}; this daemon speaks {SCHEMA_VERSION}"
            )
        message = JobMessage.model_validate(data)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ValidationError):
            raise DecodeError(f"invalid job message: {_summarise(exc)}") from None
        raise DecodeError(f"job body is not valid JSON: {exc}") from None
    if message.audio is None:
        raise DecodeError("job message has no audio reference")
    return InboundJob(message=message)


#: Signs a claim check: the headers for its body and ``reply_to`` (``ClaimSigner.sign``).
SignClaim = Callable[[bytes, str | None], Mapping[str, Any]]


def encode_job(
    job: JobMessage,
    *,
    user_id: str | None,
    sign: SignClaim | None = None,
    headers: Mapping[str, Any] | None = None,
    reply_to: str | None = None,
    correlation_id: str | None = None,
) -> aio_pika.Message:
    """A claim-check job as a persistent JSON message, signed when ``sign`` is given.

    Its message_id is the job id; a part's is ``<job_id>#<index>``, so that the
    parts of one recording are not duplicates of each other. ``headers`` come
    after the signature (a daemon's copy names the job's producer there).
    """
    body = job.model_dump_json(exclude_none=True).encode()
    part = job.part
    return aio_pika.Message(
        body,
        headers={**(sign(body, reply_to) if sign else {}), **(headers or {})},
        user_id=user_id,
        content_type=JSON_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=job.job_id if part is None else f"{job.job_id}#{part.index}",
        timestamp=job.submitted_at,
        type="stt.job" if part is None else "stt.job.part",
        reply_to=reply_to,
        correlation_id=correlation_id,
    )


def encode_audio_job(
    job_id: str,
    audio: bytes,
    *,
    content_type: str,
    options: JobOptions | None = None,
    user_id: str | None = None,
) -> aio_pika.Message:
    """A job with its audio in the body (the outside producers' path), its options in headers.

    Only the options set on ``options`` travel: without a ``model`` header a daemon
    uses the model of the queue the job was routed to.
    """
    headers: dict[str, Any] = {}
    if options is not None:
        for name in INLINE_OPTION_HEADERS:
            value = getattr(options, name)
            if name in options.model_fields_set and value is not None:
                headers[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return aio_pika.Message(
        audio,
        headers=headers,
        user_id=user_id,
        content_type=content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=job_id,
    )


def decode_event(body: bytes) -> JobEvent:
    """Decode an event from the results exchange."""
    try:
        return JobEvent.model_validate_json(body)
    except ValueError as exc:
        raise DecodeError(f"invalid event: {exc}") from None


def event_message_id(event: JobEvent) -> str:
    """The AMQP ``message_id`` consumers de-duplicate on.

    A job has one final event, so that one is named by the job: a daemon that dies
    after publishing it but before its ack transcribes the job again, and the second
    result must read as a duplicate of the first. Other events (``job.started`` each
    attempt, ``job.progress`` many times) are each new: their own ``event_id``, made
    once with the event, so a retried publish or a redelivery keeps it.
    """
    if event.event.status.is_final:
        return f"{event.job_id}:{event.event.value}"
    return event.event_id


def encode_event(
    event: JobEvent, *, user_id: str | None = None, correlation_id: str | None = None
) -> aio_pika.Message:
    """The AMQP message of an event: persistent, except progress (superseded within seconds).

    Its routing key on the results exchange is ``event.event``. ``user_id`` is the
    publisher's broker user: RabbitMQ checks it, and the status store and webhook
    sender accept events only from the users they trust. The ``job_id`` header lets
    a consumer skip events of jobs it does not follow without decoding them.
    """
    persistent = event.event is not EventType.PROGRESS
    return aio_pika.Message(
        event.model_dump_json(exclude_none=True).encode(),
        content_type=JSON_CONTENT_TYPE,
        delivery_mode=(
            aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
        ),
        message_id=event_message_id(event),
        correlation_id=correlation_id,
        user_id=user_id,
        type=event.event.value,
        timestamp=event.timestamp,
        headers={"job_id": event.job_id, "model": event.model or ""},
    )


def decode_cancel(body: bytes) -> CancelRequest:
    """Decode a cancellation from the control exchange."""
    try:
        return CancelRequest.model_validate_json(body)
    except ValidationError as exc:
        raise DecodeError(f"invalid cancel request: {_summarise(exc)}") from None


def encode_cancel(request: CancelRequest, *, user_id: str | None) -> aio_pika.Message:
    """A cancellation (routing key :data:`CANCEL_ROUTING_KEY`): persistent, its stream keeps it."""
    return aio_pika.Message(
        request.model_dump_json().encode(),
        content_type=JSON_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=f"{request.job_id}:cancel",
        user_id=user_id,
    )


def decode_announcement(body: bytes) -> DaemonAnnouncement:
    """Decode a daemon's announcement; the error quotes none of the body (anyone may send one)."""
    try:
        return DaemonAnnouncement.model_validate_json(body)
    except ValidationError as exc:
        raise DecodeError(f"invalid announcement: {_summarise(exc)}") from None


def encode_announcement(
    announcement: DaemonAnnouncement, *, user_id: str | None
) -> aio_pika.Message:
    """An announcement (routing key ``daemon.<state>``): transient, and gone after three intervals.

    An old announcement is worthless: a gateway that hears none for three intervals
    drops the daemon anyway.
    """
    return aio_pika.Message(
        announcement.model_dump_json().encode(),
        content_type=JSON_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        expiration=announcement.interval * 3,
        user_id=user_id,
    )


def encode_hello() -> aio_pika.Message:
    """A gateway's hello (routing key :data:`HELLO_ROUTING_KEY`); daemons read no body."""
    return aio_pika.Message(b"{}", content_type=JSON_CONTENT_TYPE)


def _summarise(exc: ValidationError) -> str:
    # Locations and messages only: never the input, which may be anyone's bytes.
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
