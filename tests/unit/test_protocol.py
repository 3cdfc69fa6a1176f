"""The wire contract: decoding jobs and events, and naming what is wrong."""

from __future__ import annotations

import json

import pytest

from stt_daemon.common.protocol import (
    SCHEMA_VERSION,
    DecodeError,
    EventType,
    JobEvent,
    JobStatus,
    Task,
    decode_event,
    decode_job,
)

SHA = "0" * 64


def _job(**overrides: object) -> bytes:
    body = {
        "schema_version": SCHEMA_VERSION,
        "job_id": "j1",
        "options": {"model": "tiny.en", "task": "translate", "language": "de"},
        "audio": {"url": "file:///blobs/j1", "sha256": SHA, "size": 3},
    }
    body.update(overrides)
    return json.dumps(body).encode()


def test_json_job_decodes_with_options_and_claim_check() -> None:
    job = decode_job(_job(), content_type="application/json", message_id="j1")
    assert job.job_id == "j1"
    assert job.message.options.task is Task.TRANSLATE
    assert job.message.options.language == "de"
    assert job.message.audio is not None and job.message.audio.size == 3
    assert job.inline_audio is None


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    job = decode_job(_job(future_field=1), content_type="application/json", message_id="j1")
    assert job.job_id == "j1"


def test_raw_audio_body_takes_options_from_headers() -> None:
    job = decode_job(
        b"RIFF....",
        content_type="audio/wav",
        message_id="abc",
        headers={"language": b"fr", "word_timestamps": "true", "task": "translate"},
    )
    assert job.job_id == "abc"
    assert job.inline_audio == b"RIFF...."
    assert job.message.options.language == "fr"
    assert job.message.options.word_timestamps is True
    assert job.message.options.task is Task.TRANSLATE


def test_raw_audio_needs_a_message_id_and_defaults_to_its_queue_model() -> None:
    with pytest.raises(DecodeError, match="message_id"):
        decode_job(b"x", content_type="audio/ogg", message_id=None)
    job = decode_job(b"x", content_type="audio/ogg", message_id="m", default_model="base")
    assert job.message.options.model == "base"
    job = decode_job(
        b"x",
        content_type="audio/ogg",
        message_id="m",
        headers={"model": "tiny.en"},
        default_model="base",
    )
    assert job.message.options.model == "tiny.en"


@pytest.mark.parametrize(
    ("body", "content_type", "needle"),
    [
        (b"{oops", "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "JSON object"),
        (_job(schema_version=2), "application/json", "schema_version 2"),
        (_job(audio=None), "application/json", "no audio reference"),
        (_job(audio={"url": "x", "sha256": "nothex", "size": 1}), None, "audio.sha256"),
        (_job(options={"task": "summarise"}), None, "options.task"),
        (b"", "audio/wav", "empty audio body"),
        (b"hi", "text/plain", "unsupported content_type"),
    ],
)
def test_bad_messages_raise_decode_error_with_a_reason(
    body: bytes, content_type: str | None, needle: str
) -> None:
    with pytest.raises(DecodeError, match=needle.replace("(", r"\(")):
        decode_job(body, content_type=content_type, message_id="m")


def test_event_round_trip_and_status() -> None:
    event = JobEvent(event=EventType.PROGRESS, job_id="j", progress=0.5)
    decoded = decode_event(event.model_dump_json().encode())
    assert decoded == event
    assert decoded.status is JobStatus.PROCESSING
    with pytest.raises(DecodeError):
        decode_event(b'{"event": "job.exploded", "job_id": "j"}')


def test_status_ranks_only_move_forward() -> None:
    assert JobStatus.QUEUED.rank < JobStatus.PROCESSING.rank < JobStatus.SUCCEEDED.rank
    assert JobStatus.SUCCEEDED.is_final and JobStatus.FAILED.is_final
    assert not JobStatus.PROCESSING.is_final


def test_a_result_without_a_language_survives_the_wire() -> None:
    # Silence per channel detects no language; events are sent without their None
    # fields, and the recorder once refused such a final event, leaving the job
    # "processing" for ever.
    from stt_daemon.common.protocol import (
        EventType,
        JobEvent,
        TranscriptResult,
        decode_event,
        encode_event,
    )

    result = TranscriptResult(text="", language=None, duration=600.0, model="tiny.en", segments=[])
    event = JobEvent(event=EventType.SUCCEEDED, job_id="j", result=result)
    decoded = decode_event(encode_event(event).body)
    assert decoded.result is not None and decoded.result.language is None
