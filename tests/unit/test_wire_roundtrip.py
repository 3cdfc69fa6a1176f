"""Every kind of message on the wire: encoded, then decoded as its consumer decodes it.

Each test checks both halves of the contract: the decoder gives the message back,
and the AMQP properties are the ones its consumers read (content type, headers,
message_id, delivery mode). The bodies pinned here as text are what outside
producers and consumers rely on: a change to them is a change of the wire format.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest

from stt_daemon.common.amqp import copy_delivery
from stt_daemon.common.claims import ClaimSigner
from stt_daemon.common.liveprotocol import (
    HEADER_DEADLINE,
    WINDOW_CONTENT_TYPE,
    LiveReply,
    LiveWord,
    SessionEvent,
    WindowOptions,
    decode_reply,
    decode_session_event,
    encode_reply,
    encode_session_event,
    encode_window,
    window_refusal,
)
from stt_daemon.common.protocol import (
    JSON_CONTENT_TYPE,
    AudioRef,
    CancelRequest,
    DaemonAnnouncement,
    DecodeError,
    Diarize,
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobMessage,
    JobOptions,
    PartInfo,
    Segment,
    Task,
    TranscriptResult,
    decode_announcement,
    decode_cancel,
    decode_event,
    decode_job,
    encode_announcement,
    encode_audio_job,
    encode_cancel,
    encode_event,
    encode_hello,
    encode_job,
)
from stt_daemon.provenance import PRODUCER_HEADER

PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
AUDIO = AudioRef(url="file:///blobs/j1", sha256="0" * 64, size=3)
SIGNER = ClaimSigner("s3cret")


def _job(**fields: Any) -> JobMessage:
    return JobMessage(
        job_id="j1", options=JobOptions(model="base"), audio=AUDIO, submitted_at=WHEN, **fields
    )


def _decode_job(message: aio_pika.Message, default_model: str | None = None) -> JobMessage:
    """What the daemon's handler does with a delivery."""
    return decode_job(
        message.body,
        content_type=message.content_type,
        message_id=message.message_id,
        headers=message.headers,
        default_model=default_model,
    ).message


def test_a_gateway_job_is_a_signed_persistent_json_claim_check() -> None:
    job = _job(request_id="r1")
    message = encode_job(job, user_id="stt-gateway", sign=SIGNER.sign)
    assert _decode_job(message) == job
    assert message.body == (
        b'{"schema_version":1,"job_id":"j1","options":{"model":"base","task":"transcribe",'
        b'"word_timestamps":false,"vad_filter":false,"diarize":"none","split":true},'
        b'"audio":{"url":"file:///blobs/j1","sha256":"' + b"0" * 64 + b'","size":3},'
        b'"submitted_at":"2024-01-02T03:04:05Z","request_id":"r1"}'
    )
    assert (message.content_type, message.message_id, message.type) == (
        JSON_CONTENT_TYPE,
        "j1",
        "stt.job",
    )
    assert message.delivery_mode is PERSISTENT and message.user_id == "stt-gateway"
    assert message.timestamp == WHEN
    assert SIGNER.verify(message.body, message.reply_to, message.headers) is None


def test_an_unsigned_job_carries_no_signature_header() -> None:
    message = encode_job(_job(), user_id=None)
    assert message.headers == {}
    assert ClaimSigner("s3cret").verify(message.body, None, message.headers) is not None


def test_a_part_names_its_index_its_producer_and_signs_its_reply_to() -> None:
    job = _job(part=PartInfo(index=1, count=3, offset=30.0))
    message = encode_job(
        job,
        user_id="stt-daemon",
        sign=SIGNER.sign,
        headers={PRODUCER_HEADER: "alice"},
        reply_to="amq.rabbitmq.reply-to.abc",
        correlation_id="c1",
    )
    assert _decode_job(message) == job
    assert (message.message_id, message.type) == ("j1#1", "stt.job.part")
    assert (message.reply_to, message.correlation_id) == ("amq.rabbitmq.reply-to.abc", "c1")
    # The signature first, then the producer (the order the daemons always wrote).
    assert list(message.headers) == ["x-stt-signature", PRODUCER_HEADER]
    assert message.headers[PRODUCER_HEADER] == "alice"
    assert SIGNER.verify(message.body, message.reply_to, message.headers) is None
    assert SIGNER.verify(message.body, "elsewhere", message.headers) is not None


def test_a_copy_of_a_delivery_decodes_as_the_original_and_keeps_its_signature() -> None:
    original = encode_job(_job(), user_id="stt-gateway", sign=SIGNER.sign, reply_to="q")
    # aio_pika.Message has every property an incoming message has.
    copy = copy_delivery(
        original,  # type: ignore[arg-type]
        headers={**original.headers, "x-stt-attempts": 2},
        user_id="stt-daemon",
    )
    assert _decode_job(copy) == _decode_job(original)
    assert copy.user_id == "stt-daemon" and copy.headers["x-stt-attempts"] == 2
    assert SIGNER.verify(copy.body, copy.reply_to, copy.headers) is None
    kept = ("content_type", "message_id", "timestamp", "type", "reply_to", "delivery_mode")
    assert {p: getattr(copy, p) for p in kept} == {p: getattr(original, p) for p in kept}


def test_an_audio_job_carries_its_set_options_as_text_headers() -> None:
    options = JobOptions(
        model="small",
        language="de",
        task=Task.TRANSLATE,
        word_timestamps=True,
        split=False,
        beam_size=3,
        temperature=0.2,
        diarize=Diarize.SPEAKERS,
        num_speakers=2,
    )
    message = encode_audio_job("a1", b"RIFF....", content_type="audio/wav", options=options)
    decoded = decode_job(
        message.body,
        content_type=message.content_type,
        message_id=message.message_id,
        headers=message.headers,
    )
    assert decoded.message.options == options
    assert decoded.job_id == "a1" and decoded.inline_audio == b"RIFF...."
    assert message.headers["word_timestamps"] == "true" and message.headers["split"] == "false"
    assert all(isinstance(value, str) for value in message.headers.values())
    assert message.delivery_mode is PERSISTENT


def test_an_audio_job_without_a_model_takes_the_queue_s() -> None:
    message = encode_audio_job("a2", b"\x00\x01", content_type="audio/x-raw")
    assert message.headers == {}
    assert _decode_job(message, default_model="medium").options.model == "medium"


def _events() -> list[JobEvent]:
    result = TranscriptResult(
        text="hi",
        duration=1.0,
        model="tiny.en",
        segments=[Segment(id=0, start=0, end=1, text="hi")],
    )
    return [
        JobEvent(event=EventType.STARTED, job_id="j1", model="tiny.en", attempt=1, worker="w"),
        JobEvent(event=EventType.PROGRESS, job_id="j1", progress=0.5, segments=result.segments),
        JobEvent(event=EventType.REQUEUED, job_id="j1", model="tiny.en"),
        JobEvent(event=EventType.SUCCEEDED, job_id="j1", model="tiny.en", result=result),
        JobEvent(
            event=EventType.FAILED,
            job_id="j1",
            error=ErrorInfo(code=ErrorCode.BAD_AUDIO, message="no"),
            options=JobOptions(callback_url="https://example.com/hook"),
            producer="alice",
        ),
        JobEvent(event=EventType.CANCELLED, job_id="j1", model="tiny.en"),
    ]


@pytest.mark.parametrize("event", _events(), ids=lambda e: e.event.value)
def test_every_event_comes_back_with_the_properties_its_consumers_read(event: JobEvent) -> None:
    message = encode_event(event, user_id="stt-daemon", correlation_id="c1")
    assert decode_event(message.body) == event
    assert message.content_type == JSON_CONTENT_TYPE
    # The job feed skips events by this header; the recorder trusts by user_id.
    assert message.headers == {"job_id": "j1", "model": event.model or ""}
    assert message.user_id == "stt-daemon" and message.correlation_id == "c1"
    assert message.type == event.event.value
    final = event.event.status.is_final
    assert message.message_id == (f"j1:{event.event.value}" if final else event.event_id)
    progress = event.event is EventType.PROGRESS
    assert message.delivery_mode is (
        aio_pika.DeliveryMode.NOT_PERSISTENT if progress else PERSISTENT
    )


def test_a_cancellation_comes_back_and_is_named_by_its_job() -> None:
    request = CancelRequest(job_id="j1", timestamp=WHEN)
    message = encode_cancel(request, user_id="stt-gateway")
    assert decode_cancel(message.body) == request
    assert message.body == b'{"schema_version":1,"job_id":"j1","timestamp":"2024-01-02T03:04:05Z"}'
    assert (message.message_id, message.content_type) == ("j1:cancel", JSON_CONTENT_TYPE)
    assert message.delivery_mode is PERSISTENT and message.user_id == "stt-gateway"


def test_an_announcement_comes_back_and_expires_after_three_intervals() -> None:
    announcement = DaemonAnnouncement(
        worker="host:1", models=["tiny.en"], multilingual=[], prefetch=2, interval=5.0
    )
    message = encode_announcement(announcement, user_id="stt-daemon")
    assert decode_announcement(message.body) == announcement
    assert message.content_type == JSON_CONTENT_TYPE and message.user_id == "stt-daemon"
    assert message.delivery_mode is aio_pika.DeliveryMode.NOT_PERSISTENT
    assert message.expiration == 15.0


def test_bad_control_messages_are_named_without_quoting_their_bodies() -> None:
    for decode in (decode_cancel, decode_announcement):
        with pytest.raises(DecodeError) as caught:
            decode(b"secret-ish")
        assert "secret-ish" not in str(caught.value)


def test_a_hello_is_an_empty_json_object() -> None:
    message = encode_hello()
    assert json.loads(message.body) == {} and message.content_type == JSON_CONTENT_TYPE


def test_a_window_is_the_pcm_itself_with_its_options_and_deadline_in_headers() -> None:
    pcm = bytes(32000)
    options = WindowOptions(session="s1", language="de", task=Task.TRANSLATE, prompt="Hallo")
    before = time.time()
    message = encode_window(
        pcm, options, wait=2.0, reply_to="amq.rabbitmq.reply-to", correlation_id="c1", user_id="g"
    )
    # The latency path: the body is the caller's bytes, not a copy.
    assert message.body is pcm
    assert window_refusal(message.body, content_type=message.content_type, reply_to="x") is None
    decoded = WindowOptions.from_headers(message.headers)
    # Now plus the wait, to the millisecond the header carries.
    assert decoded.deadline is not None
    assert before + 2.0 - 0.001 <= decoded.deadline <= time.time() + 2.0 + 0.001
    assert decoded.model_copy(update={"deadline": None}) == options
    assert message.content_type == WINDOW_CONTENT_TYPE and message.expiration == 2.0
    assert (message.reply_to, message.correlation_id) == ("amq.rabbitmq.reply-to", "c1")
    assert list(message.headers)[-1] == HEADER_DEADLINE


def test_a_window_the_daemon_cannot_take_is_named() -> None:
    assert window_refusal(b"\x00", content_type=WINDOW_CONTENT_TYPE, reply_to="r") is not None
    assert window_refusal(b"\x00\x00", content_type="audio/wav", reply_to="r") is not None
    assert window_refusal(b"\x00\x00", content_type=WINDOW_CONTENT_TYPE, reply_to=None) is not None


def test_a_live_reply_comes_back_without_its_defaults_on_the_wire() -> None:
    reply = LiveReply(
        duration=1.5,
        words=[LiveWord(start=0, end=0.5, word=" hi", probability=0.9)],
        speech=[(0.0, 0.5)],
        worker="w",
    )
    message = encode_reply(reply, correlation_id="c1", user_id="stt-daemon")
    assert decode_reply(message.body) == reply
    assert b"schema_version" not in message.body and b"error" not in message.body
    assert (message.correlation_id, message.content_type) == ("c1", JSON_CONTENT_TYPE)
    assert message.user_id == "stt-daemon"
    with pytest.raises(DecodeError):
        decode_reply(b'{"duration": "long"}')


def test_session_news_comes_back_named_by_session_and_utterance() -> None:
    segment = SessionEvent(
        event="session.segment",
        session_id="s1",
        model="tiny.en",
        segment=Segment(id=4, start=1.0, end=2.0, text="hi"),
    )
    ended = SessionEvent(
        event="session.ended",
        session_id="s1",
        model="tiny.en",
        result=TranscriptResult(text="", duration=3.0, model="tiny.en", segments=[]),
    )
    for news, message_id in ((segment, "s1:segment:4"), (ended, "s1:ended")):
        message = encode_session_event(news, user_id="stt-gateway")
        assert decode_session_event(message.body) == news
        assert (message.message_id, message.type) == (message_id, news.event)
        assert message.content_type == JSON_CONTENT_TYPE and message.delivery_mode is PERSISTENT
        assert message.user_id == "stt-gateway"
