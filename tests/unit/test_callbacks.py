"""Webhook delivery rules, with a mock HTTP transport."""

from __future__ import annotations

import hashlib
import hmac

import httpx
import pytest

from gateway.callbacks import CallbackSender, payload, sign
from stt_daemon.protocol import EventType, JobEvent, JobOptions
from stt_daemon.topology import Names

EVENT = JobEvent(
    event=EventType.CANCELLED,
    job_id="j1",
    model="tiny.en",
    options=JobOptions(callback_url="http://receiver/hook"),
)


def _sender(statuses: list[int], seen: list[httpx.Request]) -> CallbackSender:
    sender = CallbackSender(Names(), b"key", max_attempts=4, backoff=0)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(statuses[min(len(seen), len(statuses)) - 1])

    sender._http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    return sender


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = payload(EVENT)
    assert sign(b"key", body) == "sha256=" + hmac.new(b"key", body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("statuses", "delivered", "calls"),
    [
        ([200], True, 1),
        ([500, 502, 204], True, 3),
        ([429, 200], True, 2),
        ([404], False, 1),  # the receiver refuses: no point retrying
        ([503], False, 4),  # gives up after max_attempts
    ],
)
async def test_retry_rules(statuses: list[int], delivered: bool, calls: int) -> None:
    seen: list[httpx.Request] = []
    sender = _sender(statuses, seen)
    assert await sender.deliver("http://receiver/hook", EVENT, delivery_id="d1") is delivered
    assert len(seen) == calls
    request = seen[0]
    assert request.headers["x-stt-signature"] == sign(b"key", request.content)
    assert request.headers["x-stt-event"] == "job.cancelled"
    assert request.headers["x-stt-delivery"] == "d1"
    await sender.close()
