"""The gateway's jobs belong to its broker user: events another producer sends about them
(a job published under a gateway job's id) change nothing.

The real jobs router and SQLite status store, a fake broker (no RabbitMQ).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from gateway.config import GatewaySettings
from gateway.errors import install_error_handlers
from gateway.fleet import Fleet
from gateway.routes import jobs
from gateway.services import Services
from gateway.store import StatusStore, open_store
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import (
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobMessage,
    TranscriptResult,
)
from stt_daemon.common.settings import AmqpUrls

AMQP_URL = "amqp://gw-user:secret@127.0.0.1:5672/"


class FakeBroker:
    """Takes every job (and does nothing with it)."""

    ready = True

    def __init__(self) -> None:
        self.published: list[JobMessage] = []

    async def publish_job(self, job: JobMessage) -> None:
        self.published.append(job)


@pytest.fixture
async def gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, StatusStore]]:
    """The jobs router on a SQLite store, its gateway connecting to RabbitMQ as ``gw-user``."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = GatewaySettings(data_dir=tmp_path, models=["tiny.en"], amqp_url=AmqpUrls(AMQP_URL))
    store = open_store(settings.resolved_status_url)
    app = FastAPI()
    app.include_router(jobs.router)
    install_error_handlers(app, retry_after=settings.retry_after)
    app.state.services = Services(
        settings=settings,
        blobs=BlobStore(settings.resolved_blob_url),
        store=store,
        broker=FakeBroker(),  # type: ignore[arg-type]
        fleet=Fleet(settings.names),
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client, store
    finally:
        await store.close()


async def test_a_submitted_job_records_the_gateways_broker_user(
    gateway: tuple[httpx.AsyncClient, StatusStore],
) -> None:
    client, store = gateway
    response = await client.post("/v1/jobs", files={"file": ("a.wav", b"RIFF....WAVE")})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    record = await store.get(job_id)
    assert record is not None and record.producer == "gw-user"

    # A body that failed, published by another user (or by one who gave no user_id)
    # with the job's id as its message_id: the daemon's failure event is not the job's.
    failure = ErrorInfo(code=ErrorCode.BAD_AUDIO, message="not audio")
    for producer in ("mallory", ""):
        event = JobEvent(event=EventType.FAILED, job_id=job_id, error=failure, producer=producer)
        assert not await store.apply(event)
    assert (await client.get(f"/v1/jobs/{job_id}")).json()["status"] == "queued"

    result = TranscriptResult(text="hi", language="en", duration=1.0, model="tiny.en", segments=[])
    done = JobEvent(event=EventType.SUCCEEDED, job_id=job_id, result=result, producer="gw-user")
    assert await store.apply(done)
    assert (await client.get(f"/v1/jobs/{job_id}")).json()["status"] == "succeeded"
