"""DELETE /v1/jobs/{id}: daemons are told, and the status reaches the store through the recorder.

The fake broker hands what the gateway publishes on the results exchange to a real
recorder (and feed and webhook sender), as the message RabbitMQ would deliver: the
gateway's own broker user in ``user_id``. Nothing else writes the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from structlog.testing import capture_logs

from gateway import services as services_module
from gateway.broker import BrokerUnavailable
from gateway.callbacks import CallbackSender
from gateway.config import GatewaySettings
from gateway.errors import install_error_handlers
from gateway.fleet import Fleet
from gateway.jobfeed import JobFeed
from gateway.recorder import Recorder
from gateway.routes import jobs
from gateway.services import Services
from gateway.store import StatusStore, open_store
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import (
    CancelRequest,
    EventType,
    JobEvent,
    JobMessage,
    encode_event,
)
from stt_daemon.common.settings import AmqpUrls

GATEWAY_URL = AmqpUrls("amqp://stt-gateway:pw@127.0.0.1:5672/")


@dataclass
class Delivery:
    """A delivery of a published message, as a consumer of the results exchange gets it."""

    body: bytes
    user_id: str | None
    routing_key: str
    message_id: str | None
    headers: dict[str, Any]
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append("nack")

    async def reject(self, requeue: bool = False) -> None:
        self.settled.append("reject")


class FakeBroker:
    """Takes jobs and cancellations; delivers result events to the recorder (and others)."""

    ready = True

    def __init__(self, settings: GatewaySettings, recorder: Recorder) -> None:
        self._user = settings.broker_user
        self.recorder = recorder
        self.cancels: list[CancelRequest] = []
        self.deliveries: list[Delivery] = []
        #: Seconds the recorder takes to get to an event; None: it never does.
        self.recorder_lag: float | None = 0.0
        self.cancel_refusal: Exception | None = None

    async def publish_job(self, job: JobMessage) -> None:
        pass

    async def publish_cancel(self, request: CancelRequest) -> None:
        if self.cancel_refusal is not None:
            raise self.cancel_refusal
        self.cancels.append(request)

    async def publish_result_event(self, event: JobEvent) -> None:
        message = encode_event(event, user_id=self._user)
        delivery = Delivery(
            message.body,
            message.user_id,
            event.event.value,
            message.message_id,
            dict(message.headers or {}),
        )
        self.deliveries.append(delivery)
        if self.recorder_lag is not None:
            asyncio.get_running_loop().call_later(
                self.recorder_lag,
                lambda: asyncio.ensure_future(self.recorder._on_event(delivery)),  # type: ignore[arg-type]
            )


@dataclass
class Gateway:
    client: httpx.AsyncClient
    store: StatusStore
    broker: FakeBroker
    recorder: Recorder
    settings: GatewaySettings

    async def submit(self) -> str:
        files = {"file": ("call.wav", b"RIFF....WAVE")}
        response = await self.client.post("/v1/jobs", files=files)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    async def status(self, job_id: str) -> str:
        status: str = (await self.client.get(f"/v1/jobs/{job_id}")).json()["status"]
        return status


@pytest.fixture
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = GatewaySettings(data_dir=tmp_path, models=["tiny.en"], amqp_url=GATEWAY_URL)
    store = open_store(settings.resolved_status_url)
    recorder = Recorder.from_settings(store, settings)
    broker = FakeBroker(settings, recorder)
    app = FastAPI()
    app.include_router(jobs.router)
    install_error_handlers(app, retry_after=settings.retry_after)
    app.state.services = Services(
        settings=settings,
        blobs=BlobStore(settings.resolved_blob_url),
        store=store,
        broker=broker,  # type: ignore[arg-type]
        fleet=Fleet(settings.names),
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield Gateway(client, store, broker, recorder, settings)
    finally:
        await store.close()


async def test_cancel_tells_the_daemons_and_the_recorder_writes_the_status(
    gateway: Gateway,
) -> None:
    job_id = await gateway.submit()
    response = await gateway.client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["error"]["code"] == "cancelled"
    assert [c.job_id for c in gateway.broker.cancels] == [job_id]
    # The status came in as an event the recorder believed, from the gateway's own user.
    [delivery] = gateway.broker.deliveries
    assert (delivery.routing_key, delivery.user_id) == ("job.cancelled", "stt-gateway")
    assert delivery.settled == ["ack"] and gateway.recorder.applied == 1
    assert await gateway.status(job_id) == "cancelled"
    again = await gateway.client.delete(f"/v1/jobs/{job_id}")
    assert (again.status_code, again.json()) == (409, {"detail": "job is already cancelled"})


async def test_the_answer_waits_for_a_recorder_that_lags(gateway: Gateway) -> None:
    gateway.broker.recorder_lag = 0.3
    job_id = await gateway.submit()
    assert (await gateway.client.delete(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"
    # A poll right after the answer sees what the answer said.
    assert await gateway.status(job_id) == "cancelled"


async def test_past_the_wait_the_answer_is_the_job_as_the_event_leaves_it(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services_module, "CANCEL_WAIT_S", 0.1)
    gateway.broker.recorder_lag = None  # the recorder is far behind: it never gets there here
    job_id = await gateway.submit()
    with capture_logs() as logs:
        response = await gateway.client.delete(f"/v1/jobs/{job_id}")
    assert (response.status_code, response.json()["status"]) == (200, "cancelled")
    assert any(e["event"] == "cancel.not_yet_recorded" for e in logs)
    # Only the recorder writes the store: until it applies the event, the job is queued.
    assert await gateway.status(job_id) == "queued"
    await gateway.recorder._on_event(gateway.broker.deliveries[0])  # type: ignore[arg-type]
    assert await gateway.status(job_id) == "cancelled"


async def test_a_final_status_that_beats_the_cancellation_is_the_answer(
    gateway: Gateway,
) -> None:
    job_id = await gateway.submit()
    record = await gateway.store.get(job_id)
    assert record is not None
    original = gateway.broker.publish_cancel

    async def finishing(request: CancelRequest) -> None:
        # The daemon's failure is recorded while the cancellation is on its way.
        failed = JobEvent(event=EventType.FAILED, job_id=job_id, producer=record.producer)
        await gateway.store.apply(failed)
        await original(request)

    gateway.broker.publish_cancel = finishing  # type: ignore[method-assign]
    response = await gateway.client.delete(f"/v1/jobs/{job_id}")
    assert (response.status_code, response.json()["status"]) == (200, "failed")
    assert await gateway.status(job_id) == "failed"


async def test_daemons_out_of_reach_change_nothing(gateway: Gateway) -> None:
    gateway.broker.cancel_refusal = BrokerUnavailable("down")
    job_id = await gateway.submit()
    response = await gateway.client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 503
    assert gateway.broker.deliveries == []
    assert await gateway.status(job_id) == "queued"


async def test_the_feed_and_the_webhook_sender_believe_the_gateways_cancellation(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services_module, "CANCEL_WAIT_S", 0.05)
    gateway.broker.recorder_lag = None  # the delivery goes to the feed and sender instead
    job_id = await gateway.submit()
    feed = JobFeed.from_settings(gateway.settings)
    stream = feed.open(job_id)
    await gateway.client.delete(f"/v1/jobs/{job_id}")
    [delivery] = gateway.broker.deliveries
    await feed._on_message(delivery)  # type: ignore[arg-type]
    assert feed.untrusted == 0
    heard = await stream.get(0)
    assert heard is not None and heard.event is EventType.CANCELLED
    settings = gateway.settings.model_copy(update={"callback_secret": SecretStr("k")})
    sender = CallbackSender.from_settings(settings)
    try:
        await sender._on_event(delivery)  # type: ignore[arg-type]
    finally:
        await sender.close()
    # Believed, and acked without a call: the daemon's own cancelled event carries the
    # job's options (and its callback_url), the gateway's none.
    assert sender.untrusted == 0 and delivery.settled[-1] == "ack"
