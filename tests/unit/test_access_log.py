"""One access line per request, naming the job it submitted; the /ws/test refusals' shape.

The real routers and middleware, a fake broker and an in-memory status store (no RabbitMQ).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from gateway.broker import QueueFull
from gateway.config import GatewaySettings
from gateway.errors import install_error_handlers
from gateway.fleet import Fleet
from gateway.requestid import RequestIdMiddleware
from gateway.routes import compat, jobs, openai
from gateway.services import Services
from gateway.store import JobRecord
from gateway.store.base import advance
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import EventType, JobEvent, JobMessage, TranscriptResult

AUDIO = ("a.wav", b"RIFF....WAVE")


class MemoryStore:
    """The parts of the status store the submitting routes use, over a dict."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.keys: dict[tuple[str | None, str], str] = {}

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

    async def claim_idempotency(self, owner: str | None, key: str, job_id: str) -> str | None:
        bound = self.keys.setdefault((owner, key), job_id)
        return None if bound == job_id else bound

    async def release_idempotency(self, owner: str | None, key: str) -> None:
        self.keys.pop((owner, key), None)


class FakeBroker:
    """Takes every job and finishes it at once, or refuses it with ``refusal``."""

    ready = True

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.refusal: Exception | None = None
        self.published: list[JobMessage] = []

    async def publish_job(self, job: JobMessage) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.published.append(job)
        result = TranscriptResult(
            text="Hello.", language="en", duration=1.0, model=job.options.model, segments=[]
        )
        await self.store.apply(
            JobEvent(event=EventType.SUCCEEDED, job_id=job.job_id, result=result)
        )


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Any]]:
    """The submitting routers behind the request-id middleware."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = GatewaySettings(data_dir=tmp_path, models=["tiny.en"], sync_timeout=2)
    store = MemoryStore()
    broker = FakeBroker(store)
    app = FastAPI()
    for router in (jobs.router, compat.router, openai.router):
        app.include_router(router)
    install_error_handlers(app, retry_after=settings.retry_after)
    app.add_middleware(RequestIdMiddleware)
    app.state.services = Services(
        settings=settings,
        blobs=BlobStore(settings.resolved_blob_url),
        store=store,  # type: ignore[arg-type]
        broker=broker,  # type: ignore[arg-type]
        fleet=Fleet(settings.names),
    )
    with TestClient(app) as client:
        yield client, broker
    structlog.contextvars.clear_contextvars()


def logged(post: Any) -> tuple[Any, list[MutableMapping[str, Any]]]:
    """What ``post()`` returned and the log lines it made, context included."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        result = post()
    return result, logs


def access_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [line for line in logs if line["event"] == "http.request"]


@pytest.mark.parametrize(
    ("path", "form", "job_id_of"),
    [
        ("/v1/jobs", {}, lambda r: r.json()["id"]),
        ("/translate", {}, lambda r: r.json()["task_id"]),
        ("/v1/audio/transcriptions", {"model": "whisper-1"}, lambda r: r.headers["x-job-id"]),
        ("/v1/audio/translations", {"model": "whisper-1"}, lambda r: r.headers["x-job-id"]),
    ],
)
def test_a_submission_has_one_access_line_with_its_job_id(
    gateway: tuple[TestClient, FakeBroker], path: str, form: dict[str, str], job_id_of: Any
) -> None:
    client, _ = gateway
    response, logs = logged(lambda: client.post(path, files={"file": AUDIO}, data=form))
    assert response.status_code in (200, 202), response.text
    [access] = access_lines(logs)
    assert access["job_id"] == job_id_of(response)
    assert access["request_id"] == response.headers["x-request-id"]


def test_the_next_request_does_not_inherit_the_job_id(
    gateway: tuple[TestClient, FakeBroker],
) -> None:
    client, _ = gateway
    client.post("/v1/jobs", files={"file": AUDIO})
    _, logs = logged(lambda: client.get("/v1/jobs/nope"))
    [access] = access_lines(logs)
    assert "job_id" not in access


def test_an_idempotent_repeat_names_the_first_job(gateway: tuple[TestClient, FakeBroker]) -> None:
    client, _ = gateway
    headers = {"Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs", files={"file": AUDIO}, headers=headers)
    again, logs = logged(lambda: client.post("/v1/jobs", files={"file": AUDIO}, headers=headers))
    assert again.json()["id"] == first.json()["id"]
    [access] = access_lines(logs)
    assert access["job_id"] == first.json()["id"]


def test_a_refused_submission_names_no_job(gateway: tuple[TestClient, FakeBroker]) -> None:
    client, broker = gateway
    broker.refusal = QueueFull("tiny.en")
    response, logs = logged(lambda: client.post("/v1/jobs", files={"file": AUDIO}))
    assert response.status_code == 429
    [access] = access_lines(logs)
    assert "job_id" not in access and access["status"] == 429


def test_a_websocket_submission_has_one_access_line_with_its_job_id(
    gateway: tuple[TestClient, FakeBroker],
) -> None:
    client, _ = gateway

    def submit() -> dict[str, Any]:
        with client.websocket_connect("/ws/test") as ws:
            ws.send_bytes(AUDIO[1])
            reply: dict[str, Any] = ws.receive_json()
        return reply

    reply, logs = logged(submit)
    [access] = access_lines(logs)
    assert access["job_id"] == reply["task_id"]
    assert (access["method"], access["route"], access["status"]) == ("WEBSOCKET", "/ws/test", 101)
    assert access["close_code"] == 1000


@pytest.mark.parametrize(
    ("send", "status"),
    [(lambda ws: ws.send_text("hello"), 415), (lambda ws: ws.send_bytes(b""), 422)],
)
def test_websocket_refusals_carry_a_status_code(
    gateway: tuple[TestClient, FakeBroker], send: Any, status: int
) -> None:
    client, broker = gateway
    with client.websocket_connect("/ws/test") as ws:
        send(ws)
        reply = ws.receive_json()
    assert reply == {"detail": reply["detail"], "status_code": status}
    assert reply["detail"] and not broker.published


def test_uvicorn_writes_no_access_line_of_its_own() -> None:
    # uvicorn's protocols log an access line whenever "uvicorn.access" has a handler
    # anywhere up the tree (hasHandlers), whatever access_log says.
    import logging

    from stt_daemon.common.logs import configure_logging

    configure_logging("INFO", "json")
    assert not logging.getLogger("uvicorn.access").hasHandlers()
    assert logging.getLogger("uvicorn.error").hasHandlers()
