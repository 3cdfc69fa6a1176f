"""Server-sent events: the wire format, OpenAI's transcript deltas, and the streaming routes
with a fake broker, a memory store and events handed to the feed by hand (no RabbitMQ)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway import sse
from gateway.config import GatewaySettings
from gateway.fleet import Fleet
from gateway.jobfeed import JobFeed
from gateway.openai_stream import TranscriptSoFar
from gateway.routes import jobs, openai
from gateway.services import Services
from gateway.store import JobRecord
from gateway.store.base import advance
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import (
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobMessage,
    Segment,
    TranscriptResult,
)

SEGMENTS = [
    Segment(id=0, start=0.0, end=2.0, text=" And so my fellow Americans"),
    Segment(id=1, start=2.0, end=5.0, text=" ask not what your country"),
    Segment(id=2, start=5.0, end=8.0, text=" can do for you."),
]
TEXT = "And so my fellow Americans ask not what your country can do for you."


def parse(body: str) -> list[dict[str, Any]]:
    """Events as a client reads them: ``event`` and ``data`` (comments dropped)."""
    events = []
    for block in body.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = fields[name] + "\n" + value if name in fields else value
        if fields:
            events.append(fields)
    return events


def result(segments: list[Segment] = SEGMENTS) -> TranscriptResult:
    """What the daemon makes of these segments."""
    text = "".join(s.text for s in segments).strip()
    return TranscriptResult(text=text, duration=8.0, model="tiny.en", segments=segments)


# --- the wire format ---------------------------------------------------------------------


def test_an_event_is_named_data_lines_and_a_blank_line() -> None:
    assert sse.event({"a": 1, "b": "x y"}) == b'data: {"a":1,"b":"x y"}\n\n'
    assert sse.event("{}", "job.started") == b"event: job.started\ndata: {}\n\n"


def test_lines_of_data_stay_data_and_names_cannot_add_fields() -> None:
    body = sse.event("one\ntwo\r\nthree", "bad\nid: 7").decode()
    assert body == "event: bad id: 7\ndata: one\ndata: two\ndata: three\n\n"
    assert parse(body) == [{"event": "bad id: 7", "data": "one\ntwo\nthree"}]
    assert sse.comment("why\nnot") == b": why not\n\n"
    assert sse.KEEP_ALIVE == b": keep-alive\n\n"


# --- OpenAI's deltas -------------------------------------------------------------------------


def test_deltas_add_up_to_the_final_text() -> None:
    transcript = TranscriptSoFar()
    deltas = [transcript.add(SEGMENTS[:1]), transcript.add(SEGMENTS[1:2])]
    deltas.append(transcript.rest(result()))
    assert deltas == [
        "And so my fellow Americans",
        " ask not what your country",
        " can do for you.",
    ]
    assert "".join(deltas) == TEXT


def test_a_missing_segment_holds_back_the_later_ones_until_the_result() -> None:
    transcript = TranscriptSoFar()
    assert transcript.add([SEGMENTS[0]]) == "And so my fellow Americans"
    assert transcript.add([SEGMENTS[2]]) == ""  # segment 1 was in a dropped event
    assert transcript.rest(result()) == " ask not what your country can do for you."


def test_segments_come_in_any_order_and_repeats_are_sent_once() -> None:
    transcript = TranscriptSoFar()
    assert transcript.add([SEGMENTS[1]]) == ""
    assert transcript.add([SEGMENTS[0]]) == "And so my fellow Americans ask not what your country"
    # A second attempt of the job reports its segments again.
    assert transcript.add(SEGMENTS[:2]) == ""
    assert transcript.rest(result()) == " can do for you."


def test_nothing_streamed_means_the_result_in_one_delta() -> None:
    assert TranscriptSoFar().rest(result()) == TEXT
    assert TranscriptSoFar().rest(result([])) == ""


# --- the routes ---------------------------------------------------------------------------


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


class FakeBroker:
    """Publishes nowhere; the test plays the daemon through the feed."""

    ready = True

    def __init__(self) -> None:
        self.published: list[JobMessage] = []

    async def publish_job(self, job: JobMessage) -> None:
        self.published.append(job)


class Gateway:
    """An app with the OpenAI and jobs routers, a memory store, a fake broker and a feed."""

    def __init__(self, tmp_path: Path, max_streams: int) -> None:
        settings = GatewaySettings(data_dir=tmp_path, models=["tiny.en"], sync_timeout=5)
        self.store = MemoryStore()
        self.broker = FakeBroker()
        self.feed = JobFeed(settings.names, trusted=(), max_streams=max_streams)
        self.app = FastAPI()
        self.app.include_router(openai.router)
        self.app.include_router(jobs.router)
        self.app.state.jobfeed = self.feed
        self.app.state.services = Services(
            settings=settings,
            blobs=BlobStore(settings.resolved_blob_url),
            store=self.store,  # type: ignore[arg-type]
            broker=self.broker,  # type: ignore[arg-type]
            fleet=Fleet(settings.names),
        )

    async def play(self, *events: JobEvent) -> None:
        """Once a stream follows the job, deliver these events to the feed (and the store)."""
        job_id = events[0].job_id
        for _ in range(500):
            if job_id in self.feed._followers:
                break
            await asyncio.sleep(0.01)
        for event in events:
            await self.store.apply(event)
            self.feed.dispatch(event)
            await asyncio.sleep(0)

    async def published_job(self) -> str:
        for _ in range(500):
            if self.broker.published:
                break
            await asyncio.sleep(0.01)
        return self.broker.published[0].job_id


@pytest.fixture
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    yield Gateway(tmp_path, max_streams=2)


def client(gw: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url="http://gw")


async def post_stream(gw: Gateway, **fields: str) -> httpx.Response:
    async with client(gw) as http:
        return await http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", b"RIFF....WAVE")},
            data={"model": "whisper-1", "stream": "true", **fields},
        )


def progress(job_id: str, *segments: Segment) -> JobEvent:
    return JobEvent(event=EventType.PROGRESS, job_id=job_id, progress=0.5, segments=list(segments))


async def test_stream_true_answers_deltas_then_done(gateway: Gateway) -> None:
    async def daemon() -> None:
        job_id = await gateway.published_job()
        started = JobEvent(event=EventType.STARTED, job_id=job_id)
        final = JobEvent(event=EventType.SUCCEEDED, job_id=job_id, result=result())
        await gateway.play(started, progress(job_id, SEGMENTS[0]), progress(job_id), final)

    task = asyncio.create_task(daemon())
    response = await post_stream(gateway)
    await task
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-job-id"] == gateway.broker.published[0].job_id
    events = [json.loads(e["data"]) for e in parse(response.text)]
    assert [e["type"] for e in events] == [
        "transcript.text.delta",
        "transcript.text.delta",
        "transcript.text.done",
    ]
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"] == TEXT
    assert gateway.feed.open_streams == 0


async def test_a_failed_job_ends_the_stream_with_an_openai_error(gateway: Gateway) -> None:
    async def daemon() -> None:
        job_id = await gateway.published_job()
        error = ErrorInfo(code=ErrorCode.BAD_AUDIO, message="not a readable audio file")
        await gateway.play(JobEvent(event=EventType.FAILED, job_id=job_id, error=error))

    task = asyncio.create_task(daemon())
    response = await post_stream(gateway)
    await task
    (event,) = [json.loads(e["data"]) for e in parse(response.text)]
    assert event["type"] == "error"
    assert event["error"] == {
        "message": "not a readable audio file",
        "type": "invalid_request_error",
        "param": "file",
        "code": "bad_audio",
    }


async def test_streams_past_the_limit_are_503_and_make_no_job(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, max_streams=0)
    response = await post_stream(gw)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "too_many_streams"
    assert "retry-after" in response.headers
    assert not gw.broker.published and not list((tmp_path / "blobs").iterdir())
    async with client(gw) as http:
        record = JobRecord(id="j1", status=EventType.STARTED.status)
        await gw.store.create(record)
        refused = await http.get("/v1/jobs/j1/events")
    assert refused.status_code == 503 and "STT_MAX_EVENT_STREAMS" in refused.json()["detail"]


async def test_stream_needs_a_text_format(gateway: Gateway) -> None:
    response = await post_stream(gateway, response_format="srt")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "response_format"
    assert not gateway.broker.published


async def test_job_events_begin_with_the_status_and_end_with_the_final_event(
    gateway: Gateway,
) -> None:
    await gateway.store.create(JobRecord(id="j1", status=EventType.STARTED.status))
    final = JobEvent(event=EventType.SUCCEEDED, job_id="j1", result=result(), worker="host:1")
    task = asyncio.create_task(gateway.play(progress("j1", SEGMENTS[0]), final))
    async with client(gateway) as http:
        response = await http.get("/v1/jobs/j1/events")
    await task
    events = parse(response.text)
    assert [e["event"] for e in events] == ["job.status", "job.progress", "job.succeeded"]
    assert json.loads(events[0]["data"])["status"] == "processing"
    assert json.loads(events[1]["data"])["segments"][0]["text"] == SEGMENTS[0].text
    succeeded = json.loads(events[2]["data"])
    assert succeeded["result"]["text"] == TEXT
    assert "worker" not in succeeded and "producer" not in succeeded
    assert gateway.feed.open_streams == 0

    # A client that comes after the end gets the final event at once.
    async with client(gateway) as http:
        late = parse((await http.get("/v1/jobs/j1/events")).text)
    assert [e["event"] for e in late] == ["job.status", "job.succeeded"]
    assert json.loads(late[1]["data"])["result"]["text"] == TEXT


async def test_job_events_of_an_unknown_job_are_404(gateway: Gateway) -> None:
    async with client(gateway) as http:
        response = await http.get("/v1/jobs/nope/events")
    assert response.status_code == 404 and response.json() == {"detail": "job not found"}
    assert gateway.feed.open_streams == 0


def test_the_api_description_shows_the_streams(gateway: Gateway) -> None:
    paths = gateway.app.openapi()["paths"]
    events = paths["/v1/jobs/{job_id}/events"]["get"]["responses"]
    assert "text/event-stream" in events["200"]["content"] and "503" in events
    transcriptions = paths["/v1/audio/transcriptions"]["post"]["responses"]["200"]
    assert "text/event-stream" in transcriptions["content"]
