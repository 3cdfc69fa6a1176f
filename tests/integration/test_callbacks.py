"""Webhooks: signed, retried with backoff, delivered even across a gateway restart."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway.callbacks import RetryPlan
from stack import JFK, JFK_WORDS, Stack, normalise
from webhooks import forget_delay_queues

pytestmark = pytest.mark.integration

SECRET = "s3cret-for-tests"
#: The receivers of these tests listen on loopback, which webhooks may only call when allowed.
CALLBACK_ENV = {
    "STT_CALLBACK_SECRET": SECRET,
    "STT_CALLBACK_BACKOFF": "0.2",
    "STT_CALLBACK_ALLOW": "127.0.0.0/8",
}


@pytest.fixture(autouse=True)
async def _forget_delay_queues(stack: Stack, amqp_url: str) -> AsyncIterator[None]:
    yield
    await stack.stop_all()  # no gateway may declare them while they go
    await forget_delay_queues(amqp_url, stack.names, RetryPlan(10, 0.2))


@dataclass
class Receiver:
    """A webhook receiver on loopback that fails the first ``fail_first`` calls."""

    fail_first: int = 0
    calls: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    def delivered(self) -> list[tuple[int, dict[str, str], bytes]]:
        return [c for c in self.calls if c[0] == 200]

    async def wait_delivered(self, timeout: float = 120) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done := self.delivered():
                return done[0][1], done[0][2]
            await asyncio.sleep(0.1)
        raise AssertionError(f"no callback delivered; calls: {self.calls}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = 503 if len(state.calls) < state.fail_first else 200
            state.calls.append((status, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


def _verify(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-stt-signature"], expected)
    decoded: dict[str, Any] = json.loads(body)
    return decoded


async def test_callback_is_signed_and_retried_until_delivered(
    stack: Stack, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    gw = await stack.gateway(environ=CALLBACK_ENV)
    await stack.daemon()
    job = await gw.submit(JFK, callback_url=receiver.url)
    headers, body = await receiver.wait_delivered()
    payload = _verify(headers, body)
    assert payload["id"] == job["id"] and payload["status"] == "succeeded"
    assert JFK_WORDS in normalise(payload["result"]["text"])
    assert headers["x-stt-event"] == "job.succeeded"
    assert [c[0] for c in receiver.calls] == [503, 503, 200]
    # Every retry is the same delivery, byte for byte, so receivers can de-duplicate.
    assert len({c[2] for c in receiver.calls}) == 1
    assert len({c[1]["x-stt-delivery"] for c in receiver.calls}) == 1


async def test_failed_jobs_call_back_too_and_tampering_is_detectable(
    stack: Stack, receiver: Receiver
) -> None:
    gw = await stack.gateway(environ=CALLBACK_ENV)
    await stack.daemon()
    job = await gw.submit(b"definitely not audio" * 40, callback_url=receiver.url)
    headers, body = await receiver.wait_delivered()
    payload = _verify(headers, body)
    assert (payload["id"], payload["status"]) == (job["id"], "failed")
    assert payload["error"]["code"] == "bad_audio"
    with pytest.raises(AssertionError):
        _verify(headers, body.replace(b"failed", b"succeeded"))


async def test_callback_due_while_no_gateway_runs_is_sent_later(
    stack: Stack, receiver: Receiver
) -> None:
    gw = await stack.gateway(environ=CALLBACK_ENV)
    job = await gw.submit(JFK, callback_url=receiver.url)
    await gw.proc.stop()
    await stack.daemon()
    await asyncio.sleep(6)  # the job finishes while no gateway is up
    assert receiver.calls == []
    await stack.gateway(environ=CALLBACK_ENV)
    headers, body = await receiver.wait_delivered(timeout=30)
    assert _verify(headers, body)["id"] == job["id"]


async def test_callback_urls_are_validated(stack: Stack) -> None:
    unsigned = await stack.gateway()
    async with unsigned.client() as client:
        response = await client.post(
            "/v1/jobs",
            files={"file": ("a.flac", JFK.read_bytes())},
            data={"callback_url": "http://127.0.0.1:9/hook"},
        )
        assert response.status_code == 400
        assert "STT_CALLBACK_SECRET" in response.json()["detail"]
    signed = await stack.gateway(environ=CALLBACK_ENV)
    async with signed.client() as client:
        response = await client.post(
            "/v1/jobs",
            files={"file": ("a.flac", JFK.read_bytes())},
            data={"callback_url": "ftp://example.org/x"},
        )
        assert response.status_code == 422
        assert "callback_url" in response.json()["detail"]
        # Credentials are refused even where the host is allowed, and not echoed back.
        response = await client.post(
            "/v1/jobs",
            files={"file": ("a.flac", JFK.read_bytes())},
            data={"callback_url": "http://guest:guest@127.0.0.1:15679/api/definitions"},
        )
        assert response.status_code == 422
        assert "credentials" in response.json()["detail"]
        assert "guest" not in response.text
