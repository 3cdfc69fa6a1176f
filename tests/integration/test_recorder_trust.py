"""Forged events change nothing: the status store and the webhooks believe trusted publishers only.

RabbitMQ refuses a ``user_id`` that is not the publisher's own, so the forgery open
to a client is an event with no ``user_id`` at all. The genuine events are published
as a daemon would: on the daemons' broker user (or, on a test broker without the
shipped users, the administrator's, which is then the gateway's own and trusted).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from gateway.callbacks import RetryPlan
from stack import JFK, Stack
from stt_daemon.common.amqp import broker_user
from stt_daemon.common.protocol import (
    JSON_CONTENT_TYPE,
    EventType,
    JobEvent,
    JobOptions,
    TranscriptResult,
)
from webhooks import forget_delay_queues

pytestmark = pytest.mark.integration

CALLBACK_ENV = {
    "STT_CALLBACK_SECRET": "s3cret-for-tests",
    "STT_CALLBACK_BACKOFF": "0.2",
    "STT_CALLBACK_ALLOW": "127.0.0.0/8",
}
RESULT = TranscriptResult(text="forged", language="en", duration=1.0, model="tiny.en", segments=[])


@dataclass
class Receiver:
    """A webhook receiver on loopback that answers 503 to its first ``fail_first`` calls."""

    fail_first: int = 0
    calls: list[int] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            status = 503 if len(state.calls) < state.fail_first else 200
            state.calls.append(status)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()


@pytest.fixture(autouse=True)
async def _forget_delay_queues(stack: Stack, amqp_url: str) -> AsyncIterator[None]:
    yield
    await stack.stop_all()  # no gateway may declare them while they go
    await forget_delay_queues(amqp_url, stack.names, RetryPlan(10, 0.2))


def _message(event: JobEvent, user_id: str | None) -> aio_pika.Message:
    return aio_pika.Message(
        event.model_dump_json(exclude_none=True).encode(),
        content_type=JSON_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=f"{event.job_id}:{event.event.value}",
        type=event.event.value,
        user_id=user_id,
    )


def _url_of(stack: Stack, role: str) -> str:
    """The URL a process of ``role`` connects with (the stack's broker users, if it has them)."""
    url_of = getattr(stack, "url_of", None)
    return str(url_of(role)) if url_of is not None else stack.amqp_url


async def _status(gw: Any, job_id: str) -> str:
    async with gw.client() as client:
        response = await client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


async def test_events_without_a_trusted_user_id_change_nothing(
    stack: Stack, channel: AbstractChannel, amqp_url: str, receiver: Receiver
) -> None:
    receiver.fail_first = 1
    gw = await stack.gateway(environ=CALLBACK_ENV)
    # Ready before the webhook sender has declared its queue: wait for it.
    await gw.proc.wait_for_log("callbacks.started", timeout=30)
    # No daemon: the job waits in its queue, and only the events below speak of it.
    job_id = (await gw.submit(JFK, callback_url=receiver.url))["id"]
    results = await channel.get_exchange(stack.names.results_exchange)
    options = JobOptions(callback_url=receiver.url)

    def event(kind: EventType) -> JobEvent:
        result = RESULT if kind is EventType.SUCCEEDED else None
        return JobEvent(
            event=kind,
            job_id=job_id,
            model="tiny.en",
            attempt=1,
            worker="forger",
            result=result,
            options=options if kind.status.is_final else None,
            # The gateway published the job: its user is the job's producer.
            producer=broker_user(_url_of(stack, "gateway")),
        )

    # A user_id that is not the connection's own is refused by the broker itself.
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        liar = await connection.channel(publisher_confirms=True)
        exchange = await liar.get_exchange(stack.names.results_exchange)
        with pytest.raises(aio_pika.exceptions.AMQPError):
            await exchange.publish(
                _message(event(EventType.SUCCEEDED), "stt-daemon"), routing_key="job.succeeded"
            )
    # What is left to a forger: no user_id at all.
    for kind in (EventType.STARTED, EventType.SUCCEEDED):
        await results.publish(_message(event(kind), None), routing_key=kind.value)
    await gw.proc.wait_for_log("recorder.untrusted_event", timeout=30)
    await gw.proc.wait_for_log("callbacks.untrusted_event", timeout=30)
    await asyncio.sleep(1.0)
    assert await _status(gw, job_id) == "queued"
    assert receiver.calls == []
    refused = [line for line in gw.proc.log_lines() if line["event"] == "recorder.untrusted_event"]
    assert len(refused) == 2 and {line["user_id"] for line in refused} == {None}
    assert "forged" not in gw.proc.output()  # bodies are never logged

    # The same events from the daemons' user are believed; the webhook's retry passes
    # through a delay queue and keeps the gateway's own user_id.
    daemon_url = _url_of(stack, "daemon")
    connection = await aio_pika.connect(daemon_url)
    async with connection:
        daemon = await connection.channel(publisher_confirms=True)
        exchange = await daemon.get_exchange(stack.names.results_exchange)
        for kind in (EventType.STARTED, EventType.SUCCEEDED):
            message = _message(event(kind), broker_user(daemon_url))
            await exchange.publish(message, routing_key=kind.value)
    assert (await gw.wait_final(job_id, timeout=30))["status"] == "succeeded"
    for _ in range(300):
        if len(receiver.calls) == 2:
            break
        await asyncio.sleep(0.1)
    assert receiver.calls == [503, 200]
