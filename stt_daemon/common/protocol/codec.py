"""Each message on the wire, encoded and decoded in one place.

Each encoder sits beside its decoder: body, content type, headers and the other AMQP
properties are written here once, and every publisher uses them; a message that will
not decode is a :class:`DecodeError` naming what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import aio_pika
from pydantic import ValidationError

from stt_daemon.common.protocol.base import SCHEMA_VERSION, EventType
from stt_daemon.common.protocol.events import CancelRequest, DaemonAnnouncement, JobEvent
from stt_daemon.common.protocol.jobs import InboundJob, JobMessage, JobOptions

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
            return _decode_raw_audio(body, message_id, headers, default_model)
        if ctype not in {"", JSON_CONTENT_TYPE}:
            raise DecodeError(
                f"unsupported content_type {content_type!r}: send application/json "
                "(claim check) or audio/* (raw audio body)"
            )
        message = _decode_claim_check(body)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ValidationError):
            raise DecodeError(f"invalid job message: {_summarise(exc)}") from None
        raise DecodeError(f"job body is not valid JSON: {exc}") from None
    if message.audio is None:
        raise DecodeError("job message has no audio reference")
    return InboundJob(message=message)


def _decode_raw_audio(
    body: bytes, message_id: str | None, headers: Mapping[str, Any], default_model: str | None
) -> InboundJob:
    """A raw ``audio/*`` body: the options come from its headers, the job id is its message_id."""
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


def _decode_claim_check(body: bytes) -> JobMessage:
    """A JSON claim check of this schema version (ValueError when it is not one)."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise DecodeError("job body must be a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DecodeError(
            f"unsupported schema_version {version!r}; this daemon speaks {SCHEMA_VERSION}"
        )
    return JobMessage.model_validate(data)


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
