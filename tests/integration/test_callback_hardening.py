"""Webhook attacks replayed against a real gateway and broker, with loopback receivers only.

Most final events here are published straight onto the results exchange, as an
outside producer's daemon would: the sender must hold its ground even for
callback URLs the gateway's own submit check never saw. No request leaves the
machine: the refusal of link-local, private and public destinations is tested
in tests/unit/test_egress.py, with a fake resolver.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aio_pika
import pytest

from gateway.callbacks import RetryPlan
from stack import JFK, Gateway, Stack
from stt_daemon.common.amqp import broker_user
from stt_daemon.common.protocol import EventType, JobEvent, JobOptions
from webhooks import forget_delay_queues as forget_delay_queues_of

SECRET = "s3cret-for-tests"
BASE_ENV = {"STT_CALLBACK_SECRET": SECRET, "STT_CALLBACK_BACKOFF": "0.2"}
ALLOW_LOOPBACK = {**BASE_ENV, "STT_CALLBACK_ALLOW": "127.0.0.0/8"}


@dataclass
class Receiver:
    """A webhook receiver on a loopback address: ``status`` after ``delay`` seconds."""

    host: str = "127.0.0.1"
    delay: float = 0.0
    status: int = 200
    port: int = 0
    #: (when, path) of every request that got through.
    calls: list[tuple[float, str]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"


@contextmanager
def receiving(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with receiver.lock:
                receiver.in_flight += 1
                receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
            try:
                time.sleep(receiver.delay)
                receiver.calls.append((time.monotonic(), self.path))
                self.send_response(receiver.status)
                self.end_headers()
            finally:
                with receiver.lock:
                    receiver.in_flight -= 1

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((receiver.host, 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving(Receiver()) as r:
        yield r


async def _sender_up(stack: Stack, **env: str) -> Gateway:
    gw = await stack.gateway(environ=env)
    # The callbacks queue exists once the sender consumes: events before it would be lost.
    await gw.proc.wait_for_log("callbacks.started")
    return gw


async def _publish_final(stack: Stack, url: str) -> str:
    """What a daemon publishes when a job ends: a final event naming the callback."""
    job_id = str(uuid.uuid4())
    event = JobEvent(
        event=EventType.SUCCEEDED,
        job_id=job_id,
        model="tiny.en",
        options=JobOptions(callback_url=url),
    )
    # As a daemon: the webhook sender believes only its broker user's events.
    url_of_daemon = stack.url_of("daemon")
    connection = await aio_pika.connect(url_of_daemon)
    async with connection:
        daemon_channel = await connection.channel()
        exchange = await daemon_channel.get_exchange(stack.names.results_exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                event.model_dump_json().encode(),
                message_id=f"{job_id}:final",
                user_id=broker_user(url_of_daemon),
            ),
            routing_key=event.event.value,
        )
    return job_id


async def _wait_log(gw: Gateway, event: str, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in gw.proc.log_lines() if line.get("event") == event]
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {count} {event!r} lines:\n{gw.proc.output()[-3000:]}")


@pytest.fixture
async def forget_delay_queues(stack: Stack, amqp_url: str) -> AsyncIterator[None]:
    yield
    await stack.stop_all()  # no gateway may declare them while they go
    await forget_delay_queues_of(amqp_url, stack.names, RetryPlan(10, 0.2), RetryPlan(2, 0.2))


pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("forget_delay_queues")]


async def test_literal_loopback_and_odd_spellings_are_refused_at_submit(stack: Stack) -> None:
    gw = await stack.gateway(environ=BASE_ENV)
    async with gw.client() as client:
        for host in ("127.0.0.1", "0x7f000001", "2130706433", "0177.0.0.1", "[::ffff:127.0.0.1]"):
            response = await client.post(
                "/v1/jobs",
                files={"file": ("a.flac", JFK.read_bytes())},
                data={"callback_url": f"http://{host}:15679/api?token=abc"},
            )
            assert response.status_code == 422, (host, response.text)
            detail = response.json()["detail"]
            assert "loopback" in detail and "STT_CALLBACK_ALLOW" in detail
        response = await client.post(
            "/v1/jobs",
            files={"file": ("a.flac", JFK.read_bytes())},
            data={"callback_url": "http://169.254.169.254/latest/meta-data/"},
        )
        assert response.status_code == 422 and "link-local" in response.json()["detail"]


async def test_a_name_for_loopback_is_refused_when_sending(
    stack: Stack, receiver: Receiver
) -> None:
    gw = await _sender_up(stack, **BASE_ENV)
    # ``localhost`` passes the submit check (names are not resolved there) ...
    job_id = await _publish_final(stack, receiver.url(host="localhost"))
    # ... and is refused once resolved, before any connection.
    refused = await _wait_log(gw, "callback.refused", 1, timeout=20)
    assert refused[0]["job_id"] == job_id and "loopback" in refused[0]["reason"]
    await asyncio.sleep(1)
    assert receiver.calls == []


async def test_an_allow_listed_loopback_receiver_gets_its_call(
    stack: Stack, receiver: Receiver
) -> None:
    gw = await _sender_up(stack, **{**BASE_ENV, "STT_CALLBACK_ALLOW": "127.0.0.0/8,::1"})
    job_id = await _publish_final(stack, receiver.url(host="localhost"))
    delivered = await _wait_log(gw, "callback.delivered", 1, timeout=20)
    assert delivered[0]["job_id"] == job_id and len(receiver.calls) == 1


async def test_credentials_in_a_callback_url_are_neither_used_nor_logged(
    stack: Stack, receiver: Receiver
) -> None:
    """Replays the call that POSTed to a broker's management API as guest:guest."""
    gw = await _sender_up(stack, **ALLOW_LOOPBACK)
    url = f"http://guest:guest@127.0.0.1:{receiver.port}/api/definitions?token=abc"
    await _publish_final(stack, url)
    refused = await _wait_log(gw, "callback.refused", 1, timeout=20)
    assert "credentials" in refused[0]["reason"]
    assert refused[0]["url"] == f"http://127.0.0.1:{receiver.port}/api/definitions?…"
    await asyncio.sleep(1)
    assert receiver.calls == []
    output = gw.proc.output()
    assert "guest:guest" not in output and "token=abc" not in output


async def test_a_slow_receiver_does_not_delay_another_tenants_webhook(stack: Stack) -> None:
    """Replays the incident: one tenant's slow receiver delayed everyone's webhooks.

    More calls to the slow, failing receiver than the sender takes from the queue
    at once: each used to hold a sender while it retried inline.
    """
    env = {
        **ALLOW_LOOPBACK,
        "STT_CALLBACK_PER_HOST": "2",
        "STT_CALLBACK_MAX_ATTEMPTS": "2",
    }
    with (
        receiving(Receiver(host="127.0.0.2", delay=1.5, status=503)) as slow,
        receiving(Receiver(host="127.0.0.1")) as fast,
    ):
        gw = await _sender_up(stack, **env)
        for i in range(100):
            await _publish_final(stack, slow.url(f"/a{i}"))
        await asyncio.sleep(0.5)  # the slow tenant's calls are under way
        sent = time.monotonic()
        job_id = await _publish_final(stack, fast.url("/b"))
        delivered = await _wait_log(gw, "callback.delivered", 1, timeout=10)
        assert delivered[0]["job_id"] == job_id
        assert fast.calls[0][0] - sent < 3
        # The slow receiver never had more than its share at once, and its calls
        # end, after their two tries, with a line that says so.
        gave_up = await _wait_log(gw, "callback.gave_up", 3, timeout=60)
        assert slow.most_in_flight <= 2
        assert {(line["attempt"], line["reason"]) for line in gave_up} == {(2, "HTTP 503")}
