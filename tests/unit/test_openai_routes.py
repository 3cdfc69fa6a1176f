"""The OpenAI-compatible routes with a fake broker and an in-memory status store (no RabbitMQ)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.broker import BrokerUnavailable, QueueFull
from gateway.config import GatewaySettings
from gateway.fleet import Fleet
from gateway.routes import openai
from gateway.services import Services
from gateway.store import JobRecord
from gateway.store.base import advance
from stt_daemon.blobs import BlobStore
from stt_daemon.protocol import (
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobMessage,
    Segment,
    Task,
    TranscriptResult,
    Word,
)

#: What the fake broker does with a job: an event to record at once, None (never
#: finishes), or an exception to raise instead of publishing.
Outcome = Callable[[JobMessage], JobEvent | None] | Exception


class MemoryStore:
    """The status store's interface over a dict."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}

    async def create(self, record: JobRecord) -> None:
        self.jobs.setdefault(record.id, record)

    async def discard(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    async def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    async def apply(self, event: JobEvent) -> bool:
        record = advance(self.jobs.get(event.job_id), event)
        if record is not None:
            self.jobs[event.job_id] = record
        return record is not None

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass


class FakeBroker:
    """Publishes nowhere: the job's outcome is recorded as soon as it is published."""

    ready = True

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.outcome: Outcome = succeed
        self.published: list[JobMessage] = []

    async def publish_job(self, job: JobMessage) -> None:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        self.published.append(job)
        event = self.outcome(job)
        if event is not None:
            await self.store.apply(event)


def succeed(job: JobMessage) -> JobEvent:
    """A result as the daemon would send it (words only when asked)."""
    words = [Word(start=0.0, end=0.5, word=" Hello", probability=0.9)]
    segment = Segment(
        id=0,
        start=0.0,
        end=1.0,
        text=" Hello world.",
        words=words if job.options.word_timestamps else None,
    )
    result = TranscriptResult(
        text="Hello world.",
        language="en",
        duration=1.0,
        model=job.options.model,
        task=job.options.task,
        segments=[segment],
    )
    return JobEvent(event=EventType.SUCCEEDED, job_id=job.job_id, result=result)


def fail(code: ErrorCode) -> Callable[[JobMessage], JobEvent]:
    """An outcome: the job failed with this code."""

    def outcome(job: JobMessage) -> JobEvent:
        error = ErrorInfo(code=code, message=f"it went wrong: {code.value}")
        return JobEvent(event=EventType.FAILED, job_id=job.job_id, error=error)

    return outcome


@pytest.fixture
async def gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeBroker, Path]]:
    """An app with only the OpenAI router, a memory store and a fake broker."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = GatewaySettings(data_dir=tmp_path, models=["tiny.en", "base"], sync_timeout=0.3)
    store = MemoryStore()
    broker = FakeBroker(store)
    app = FastAPI()
    app.include_router(openai.router)
    app.state.services = Services(
        settings=settings,
        blobs=BlobStore(settings.resolved_blob_url),
        store=store,  # type: ignore[arg-type]
        broker=broker,  # type: ignore[arg-type]
        fleet=Fleet(settings.names),  # hears no daemon: the configured models are accepted
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client, broker, tmp_path / "blobs"


async def post(
    client: httpx.AsyncClient, path: str = "transcriptions", **fields: Any
) -> httpx.Response:
    """POST an OpenAI form with a small file."""
    data = {"model": "whisper-1", **fields}
    files = {"file": ("a.wav", b"RIFF....WAVE")}
    return await client.post(f"/v1/audio/{path}", files=files, data=data)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object, checking OpenAI's shape on the way."""
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_json_is_openai_text_only(gateway: Any) -> None:
    client, broker, _ = gateway
    response = await post(client, model="gpt-4o-transcribe", temperature="0", language="en")
    assert response.status_code == 200
    assert response.json() == {"text": "Hello world."}
    options = broker.published[0].options
    assert options.model == "tiny.en" and options.task is Task.TRANSCRIBE
    # OpenAI's 0 means Whisper's fallback schedule: left unset.
    assert options.temperature is None and options.language == "en"
    assert response.headers["x-job-id"] == broker.published[0].job_id


async def test_translation_ignores_language_and_keeps_our_models(gateway: Any) -> None:
    client, broker, _ = gateway
    response = await post(client, "translations", model="base", language="fr", temperature="0.4")
    assert response.status_code == 200
    options = broker.published[0].options
    assert options.task is Task.TRANSLATE and options.language is None
    assert options.model == "base" and options.temperature == 0.4


@pytest.mark.parametrize(
    ("granularity", "has_words", "has_segments"),
    [(None, False, True), ("word", True, False), ("segment", False, True)],
)
async def test_verbose_json_follows_granularities(
    gateway: Any, granularity: str | None, has_words: bool, has_segments: bool
) -> None:
    client, broker, _ = gateway
    fields = {"response_format": "verbose_json"}
    if granularity:
        fields["timestamp_granularities[]"] = granularity
    body = (await post(client, **fields)).json()
    assert body["task"] == "transcribe" and body["language"] == "en"
    assert ("words" in body) is has_words
    assert ("segments" in body) is has_segments
    assert broker.published[0].options.word_timestamps is has_words


async def test_subtitles_and_text(gateway: Any) -> None:
    client, _, _ = gateway
    srt = await post(client, response_format="srt")
    assert srt.text.startswith("1\n00:00:00,000 --> 00:00:01,000\nHello world.")
    assert (await post(client, response_format="vtt")).text.startswith("WEBVTT")
    text = await post(client, response_format="text")
    assert text.text == "Hello world.\n" and text.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "large-v9"}, "model"),
        ({"response_format": "docx"}, "response_format"),
        ({"timestamp_granularities[]": "word"}, "timestamp_granularities"),
        ({"timestamp_granularities[]": "sentence", "response_format": "verbose_json"}, None),
        ({"temperature": "2"}, None),
        ({"stream": "true", "response_format": "vtt"}, "response_format"),
    ],
)
async def test_refused_forms_are_400_and_leave_nothing(
    gateway: Any, fields: dict[str, str], param: str | None
) -> None:
    client, broker, blobs = gateway
    response = await post(client, **fields)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert param is None or error["param"] == param
    assert not broker.published and not list(blobs.iterdir())


async def test_upload_errors_take_openai_shape(gateway: Any) -> None:
    client, _, _ = gateway
    no_file = await client.post("/v1/audio/transcriptions", files={"audio": ("a.wav", b"x")})
    assert no_file.status_code == 400 and "'file'" in error_of(no_file)["message"]
    not_multipart = await client.post("/v1/audio/transcriptions", content=b"x")
    assert not_multipart.status_code == 415
    assert error_of(not_multipart)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("code", "status", "retry"),
    [
        (ErrorCode.BAD_AUDIO, 400, None),
        (ErrorCode.AUDIO_TOO_LONG, 400, None),
        (ErrorCode.INTERNAL, 500, "false"),
        (ErrorCode.TOO_MANY_ATTEMPTS, 500, "false"),
    ],
)
async def test_failed_jobs(gateway: Any, code: ErrorCode, status: int, retry: str | None) -> None:
    client, broker, _ = gateway
    broker.outcome = fail(code)
    response = await post(client)
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code.value and code.value in error["message"]
    assert error["type"] == ("server_error" if status == 500 else "invalid_request_error")
    assert response.headers.get("x-should-retry") == retry


async def test_cancelled_job_is_409_not_retried(gateway: Any) -> None:
    client, broker, _ = gateway
    broker.outcome = lambda job: JobEvent(event=EventType.CANCELLED, job_id=job.job_id)
    response = await post(client)
    assert response.status_code == 409 and error_of(response)["code"] == "cancelled"
    # The official clients retry 409 unless told otherwise.
    assert response.headers["x-should-retry"] == "false"


async def test_timeout_is_504_naming_the_job(gateway: Any) -> None:
    client, broker, _ = gateway
    broker.outcome = lambda job: None
    response = await post(client)
    assert response.status_code == 504
    job_id = broker.published[0].job_id
    error = error_of(response)
    assert error["type"] == "server_error" and f"/v1/jobs/{job_id}" in error["message"]
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(("exc", "status"), [(QueueFull(), 429), (BrokerUnavailable("down"), 503)])
async def test_broker_refusals(gateway: Any, exc: Exception, status: int) -> None:
    client, broker, blobs = gateway
    broker.outcome = exc
    response = await post(client)
    assert response.status_code == status
    assert response.headers["retry-after"] == "5"
    assert error_of(response)["code"] in {"queue_full", "queue_unavailable"}
    assert not list(blobs.iterdir())


def test_comma_separated_granularities() -> None:
    form = {"timestamp_granularities": "word, segment", "response_format": "verbose_json"}
    asked = openai.parse_form(form, Task.TRANSCRIBE, "tiny.en")
    assert asked.granularities == {openai.Granularity.WORD, openai.Granularity.SEGMENT}
    assert asked.fields["word_timestamps"] is True
