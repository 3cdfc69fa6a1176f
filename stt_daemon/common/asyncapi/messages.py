"""The AsyncAPI message objects: each kind of AMQP message, its body, headers and properties.

Bodies and option headers are the generated schemas of
:mod:`stt_daemon.common.asyncapi.wireschema`. The AMQP properties each message carries
(``message_id``, ``user_id``, ``delivery_mode``...) have no field in AsyncAPI's
AMQP binding, so each message lists them under ``x-amqp-properties``.
"""

from __future__ import annotations

from typing import Any

from stt_daemon.common.asyncapi.wireschema import INLINE_OPTIONS, WINDOW_OPTIONS, ref
from stt_daemon.common.claims import SIGNATURE_HEADER
from stt_daemon.common.liveprotocol import MAX_WINDOW_BYTES, MAX_WINDOW_SECONDS, WINDOW_CONTENT_TYPE
from stt_daemon.common.protocol import JSON_CONTENT_TYPE, EventType

#: Headers of the daemons' own copies of a job (quarantine, hand-back, replay), named
#: here because their owners are daemon modules that this package may not import
#: (``stt_daemon.provenance.PRODUCER_HEADER``, ``stt_daemon.quarantine.ATTEMPTS_HEADER``).
PRODUCER_HEADER = "x-stt-producer"
ATTEMPTS_HEADER = "x-stt-attempts"
#: Headers of a webhook call waiting in a delay queue (``gateway.callbacks``).
CALLBACK_HEADERS = ("x-stt-callback-attempts", "x-stt-callback-deferrals")


def _user_id(whose: str = "The publisher's") -> str:
    """What ``user_id`` says on a message published by ``whose`` connection."""
    return (
        f"{whose} broker user. RabbitMQ refuses a user_id that is not the connection's "
        "user, so consumers can trust it."
    )


_CORRELATION_ID = {
    "description": "The AMQP correlation_id property (not an application header).",
    "location": "$message.header#/correlation_id",
}


def messages() -> dict[str, Any]:
    """Every kind of message on the broker, by message id."""
    return {
        "jobClaimCheck": _job_claim_check(),
        "jobRawAudio": _job_raw_audio(),
        "jobEvent": _job_event(),
        "sessionEvent": _session_event(),
        "cancelRequest": _cancel_request(),
        "daemonAnnouncement": _daemon_announcement(),
        "gatewayHello": _gateway_hello(),
        "liveWindow": _live_window(),
        "liveReply": _live_reply(),
    }


def _job_copy_headers() -> dict[str, Any]:
    """The headers daemons add to their own copies of a job."""
    return {
        PRODUCER_HEADER: {
            "type": "string",
            "description": (
                "On a daemon's copy of a job: the broker user that published the original "
                "(believed only when the copy's user_id is the daemon's)."
            ),
        },
        ATTEMPTS_HEADER: {
            "type": "integer",
            "minimum": 0,
            "description": "On a daemon's copy of a job: deliveries before the copy.",
        },
    }


def _job_claim_check() -> dict[str, Any]:
    headers = {
        SIGNATURE_HEADER: {
            "type": "string",
            "pattern": "^v1=[0-9a-f]{64}$",
            "description": (
                "`v1=` + HMAC-SHA256 (key STT_CLAIM_SECRET) over the reply_to property and "
                "the body. Required when the daemons have a claim secret."
            ),
        },
        **_job_copy_headers(),
    }
    return {
        "name": "JobMessage",
        "title": "A job: a claim check on audio in the blob store",
        "contentType": JSON_CONTENT_TYPE,
        "headers": {"type": "object", "properties": headers},
        "payload": ref("JobMessage"),
        "correlationId": _CORRELATION_ID,
        "x-amqp-properties": {
            "message_id": (
                "The job id (`job_id`); `<job_id>#<index>` on a part of a long recording."
            ),
            "user_id": _user_id(),
            "delivery_mode": "2 (persistent).",
            "type": "`stt.job` from a gateway, `stt.job.part` on a part a daemon cut.",
            "timestamp": "`submitted_at`.",
            "reply_to": "Optional: where the final event is also sent (see the reply).",
            "correlation_id": "Optional: copied onto the reply.",
        },
    }


def _job_raw_audio() -> dict[str, Any]:
    return {
        "name": "RawAudioJob",
        "title": "A job with its audio in the body",
        "description": (
            "The outside producers' path: the body is the audio file itself, the options are "
            "headers. Any `audio/*` or `video/*` content type, or `application/octet-stream`, "
            "is accepted; set the real one. The body is bounded by the broker's maximum "
            "message size."
        ),
        "contentType": "application/octet-stream",
        "headers": {
            "allOf": [ref(INLINE_OPTIONS), {"type": "object", "properties": _job_copy_headers()}]
        },
        "payload": {
            "title": "AudioFile",
            "type": "string",
            "format": "binary",
            "description": "The audio file.",
        },
        "correlationId": _CORRELATION_ID,
        "x-amqp-properties": {
            "message_id": "Required: it is the job id (without it the job fails, bad_message).",
            "user_id": _user_id() + " Set it: events name it as the job's `producer`.",
            "delivery_mode": "2 (persistent).",
            "content_type": "`audio/*`, `video/*` or `application/octet-stream`.",
            "reply_to": "Optional: where the final event is also sent (see the reply).",
            "correlation_id": "Optional: copied onto the reply.",
        },
    }


def _job_event() -> dict[str, Any]:
    final = ", ".join(f"`{e.value}`" for e in EventType if e.status.is_final)
    return {
        "name": "JobEvent",
        "title": "What happened to a job",
        "description": (
            "Published by daemons, and by a gateway for a job cancelled on request and for a "
            "live session's end. Fields that are null are left out. Delivery is at least "
            "once: deduplicate on message_id."
        ),
        "contentType": JSON_CONTENT_TYPE,
        "headers": {
            "type": "object",
            "description": "`job_id` lets a consumer skip events of other jobs undecoded.",
            "properties": {
                "job_id": {"type": "string"},
                "model": {"type": "string", "description": 'The model, or `""`.'},
            },
        },
        "payload": ref("JobEvent"),
        "correlationId": _CORRELATION_ID,
        "x-amqp-properties": {
            "message_id": (
                f"On a final event ({final}): `<job_id>:<event>`, the same for every run "
                "of the job; on the others, their `event_id`."
            ),
            "type": "The event name (the routing key).",
            "user_id": _user_id() + " Believe only your daemons' and gateways' users.",
            "delivery_mode": "2 (persistent); 1 for `job.progress`, superseded within seconds.",
            "timestamp": "`timestamp`.",
            "correlation_id": "On an RPC reply: the job's correlation_id.",
        },
    }


def _session_event() -> dict[str, Any]:
    return {
        "name": "SessionEvent",
        "title": "A live session's news",
        "contentType": JSON_CONTENT_TYPE,
        "payload": ref("SessionEvent"),
        "x-amqp-properties": {
            "message_id": "`<session_id>:segment:<n>` or `<session_id>:ended`.",
            "type": "The event name (the routing key).",
            "user_id": _user_id("The gateway's"),
            "delivery_mode": "2 (persistent).",
        },
    }


def _cancel_request() -> dict[str, Any]:
    return {
        "name": "CancelRequest",
        "title": "Skip or stop a job",
        "contentType": JSON_CONTENT_TYPE,
        "payload": ref("CancelRequest"),
        "x-amqp-properties": {
            "message_id": "`<job_id>:cancel`.",
            "user_id": _user_id("The gateway's"),
            "delivery_mode": "2 (persistent).",
        },
    }


def _daemon_announcement() -> dict[str, Any]:
    return {
        "name": "DaemonAnnouncement",
        "title": "A daemon is up (or going down), and what it serves",
        "contentType": JSON_CONTENT_TYPE,
        "payload": ref("DaemonAnnouncement"),
        "x-amqp-properties": {
            "user_id": _user_id("The daemon's"),
            "delivery_mode": "1 (transient: an old announcement is worthless).",
            "expiration": "Three times `interval`.",
        },
    }


def _gateway_hello() -> dict[str, Any]:
    return {
        "name": "GatewayHello",
        "title": "A gateway asks every daemon to announce itself now",
        "contentType": JSON_CONTENT_TYPE,
        "payload": {
            "title": "GatewayHello",
            "type": "object",
            "description": "`{}`; daemons do not read it.",
        },
        "x-amqp-properties": {"delivery_mode": "Not set (transient)."},
    }


def _live_window() -> dict[str, Any]:
    return {
        "name": "LiveWindow",
        "title": "A live session's current window of audio",
        "contentType": WINDOW_CONTENT_TYPE,
        "headers": ref(WINDOW_OPTIONS),
        "payload": {
            "title": "PcmWindow",
            "type": "string",
            "format": "binary",
            "description": (
                "Raw PCM: signed 16-bit little-endian, mono, 16 kHz; an even number of bytes, "
                f"at most {MAX_WINDOW_BYTES} ({MAX_WINDOW_SECONDS:g} s)."
            ),
        },
        "correlationId": _CORRELATION_ID,
        "x-amqp-properties": {
            "reply_to": "Required: direct reply-to (`amq.rabbitmq.reply-to`).",
            "correlation_id": "Copied onto the reply.",
            "expiration": "How long the session waits for the answer (the queue's TTL bounds it).",
            "user_id": _user_id("The gateway's"),
        },
    }


def _live_reply() -> dict[str, Any]:
    return {
        "name": "LiveReply",
        "title": "A daemon's answer to one window",
        "description": "Fields at their default value are left out.",
        "contentType": JSON_CONTENT_TYPE,
        "payload": ref("LiveReply"),
        "correlationId": _CORRELATION_ID,
        "x-amqp-properties": {
            "correlation_id": "The window's.",
            "user_id": _user_id("The daemon's"),
        },
    }
