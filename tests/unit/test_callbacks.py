"""Webhook delivery rules, with a mock HTTP transport and fake broker messages."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from gateway.callbacks import (
    ATTEMPTS_HEADER,
    DEFERRALS_HEADER,
    CallbackSender,
    HostSlots,
    Outcome,
    RetryPlan,
    payload,
    sign,
)
from gateway.config import GatewaySettings
from gateway.egress import EgressPolicy
from gateway.webhook_http import GuardedTransport
from stt_daemon.common.protocol import EventType, JobEvent, JobOptions
from stt_daemon.common.topology import Names


def event_for(url: str, job_id: str = "j1") -> JobEvent:
    return JobEvent(
        event=EventType.CANCELLED,
        job_id=job_id,
        model="tiny.en",
        options=JobOptions(callback_url=url),
    )


EVENT = event_for("http://receiver/hook")


def _sender(
    handler: Any, *, max_attempts: int = 4, per_host: int = 4, timeout: float = 5.0
) -> CallbackSender:
    return CallbackSender(
        Names(),
        b"key",
        retry=RetryPlan(max_attempts=max_attempts, backoff=0.5),
        http=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        per_host=per_host,
        timeout=timeout,
    )


def _replying(statuses: list[int], seen: list[httpx.Request]) -> Any:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(statuses[min(len(seen), len(statuses)) - 1])

    return handle


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = payload(EVENT)
    assert sign(b"key", body) == "sha256=" + hmac.new(b"key", body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("status", "attempt", "outcome"),
    [
        (200, 1, Outcome.DELIVERED),
        (204, 3, Outcome.DELIVERED),
        (500, 1, Outcome.RETRY),
        (429, 2, Outcome.RETRY),
        (503, 4, Outcome.GAVE_UP),  # the last of max_attempts
        (404, 1, Outcome.GAVE_UP),  # the receiver refuses: no point retrying
        (302, 1, Outcome.GAVE_UP),  # redirects are not followed
    ],
)
async def test_one_try_per_delivery(status: int, attempt: int, outcome: Outcome) -> None:
    seen: list[httpx.Request] = []
    sender = _sender(_replying([status], seen))
    with capture_logs() as logs:
        assert await sender.attempt("http://receiver/hook", EVENT, "d1", attempt) is outcome
    assert len(seen) == 1
    request = seen[0]
    assert request.headers["x-stt-signature"] == sign(b"key", request.content)
    assert request.headers["x-stt-event"] == "job.cancelled"
    assert request.headers["x-stt-delivery"] == "d1"
    if outcome is Outcome.GAVE_UP:
        assert [e["event"] for e in logs] == ["callback.gave_up"]
        assert logs[0]["attempt"] == attempt
    await sender.close()


def test_retry_delays_double_and_every_one_has_a_queue() -> None:
    plan = RetryPlan(max_attempts=12, backoff=1.0)
    assert [plan.delay_ms(a) for a in (1, 2, 3, 9, 10, 11)] == [
        1000,
        2000,
        4000,
        256_000,
        300_000,
        300_000,
    ]
    # A call put off because its host is busy waits at least a second, never a backoff's tail.
    assert [RetryPlan(3, 0.2).defer_ms(d) for d in (1, 3, 5, 9)] == [1000, 1000, 3200, 3200]
    assert RetryPlan(3, 0.0).defer_ms(1) == 1000
    delays = plan.delays_ms()
    assert {plan.delay_ms(a) for a in range(1, 12)} <= delays
    assert {plan.defer_ms(d) for d in range(1, 30)} <= delays


@dataclass
class FakeMessage:
    """The parts of an incoming AMQP message the sender uses."""

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = "m1"
    acked: bool = False
    nacked: bool = False

    async def ack(self) -> None:
        self.acked = True

    async def nack(self, requeue: bool = True) -> None:
        self.nacked = True

    async def reject(self, requeue: bool = False) -> None:
        self.nacked = True


@dataclass
class FakeDelays:
    """Records what would wait in the broker's delay queues."""

    parked: list[tuple[dict[str, Any], int]] = field(default_factory=list)

    async def put(self, message: Any, headers: dict[str, Any], delay_ms: int) -> None:
        parked = {**message.headers, **headers}
        self.parked.append((parked, delay_ms))

    async def close(self) -> None:
        pass


def _with_delays(sender: CallbackSender) -> FakeDelays:
    delays = FakeDelays()
    sender._delays = delays  # type: ignore[assignment]
    return delays


async def test_a_failed_try_waits_in_a_delay_queue_not_in_the_sender() -> None:
    seen: list[httpx.Request] = []
    sender = _sender(_replying([503, 503, 200], seen))
    delays = _with_delays(sender)
    message = FakeMessage(payload_of(EVENT))
    started = time.monotonic()
    await sender._on_event(message)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1  # no backoff slept here
    assert message.acked and delays.parked == [({ATTEMPTS_HEADER: 1, DEFERRALS_HEADER: 0}, 500)]
    # The broker hands it back when due: the second try, then the third.
    again = FakeMessage(payload_of(EVENT), headers=delays.parked[-1][0])
    await sender._on_event(again)  # type: ignore[arg-type]
    assert delays.parked[-1] == ({ATTEMPTS_HEADER: 2, DEFERRALS_HEADER: 0}, 1000)
    last = FakeMessage(payload_of(EVENT), headers=delays.parked[-1][0])
    await sender._on_event(last)  # type: ignore[arg-type]
    assert last.acked and len(delays.parked) == 2 and len(seen) == 3
    await sender.close()


async def test_attempts_end_with_a_gave_up_line() -> None:
    sender = _sender(_replying([503], []), max_attempts=3)
    delays = _with_delays(sender)
    message = FakeMessage(payload_of(EVENT), headers={ATTEMPTS_HEADER: 2})
    with capture_logs() as logs:
        await sender._on_event(message)  # type: ignore[arg-type]
    assert message.acked and delays.parked == []
    gave_up = [e for e in logs if e["event"] == "callback.gave_up"]
    assert gave_up and gave_up[0]["attempt"] == 3 and gave_up[0]["reason"] == "HTTP 503"
    await sender.close()


async def test_credentials_and_queries_never_reach_the_log_nor_the_receiver() -> None:
    seen: list[httpx.Request] = []
    sender = _sender(_replying([200], seen))
    # What an outside producer could publish, past the gateway's submit check.
    url = "http://guest:guest@rabbit.internal:15672/api/definitions?token=abc"
    with capture_logs() as logs:
        outcome = await sender.attempt(url, event_for(url), "d1", 1)
    assert outcome is Outcome.GAVE_UP and seen == []
    assert [e["event"] for e in logs] == ["callback.refused"]
    text = repr(logs)
    assert "guest" not in text and "token=abc" not in text
    assert logs[0]["url"] == "http://rabbit.internal:15672/api/definitions?…"
    await sender.close()


async def test_a_literal_forbidden_address_is_refused_without_a_request() -> None:
    seen: list[httpx.Request] = []
    sender = _sender(_replying([200], seen))
    for url in ("http://169.254.169.254/latest", "http://0x7f000001:15679/", "ftp://x/y"):
        assert await sender.attempt(url, EVENT, "d1", 1) is Outcome.GAVE_UP
    assert seen == []
    await sender.close()


async def test_a_receiver_that_does_not_answer_costs_one_timeout_then_a_retry() -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)
        return httpx.Response(200)

    sender = _sender(never, timeout=0.3)
    started = time.monotonic()
    with capture_logs() as logs:
        assert await sender.attempt("http://slow.example/hook", EVENT, "d1", 1) is Outcome.RETRY
    assert time.monotonic() - started < 1
    assert logs[-1]["event"] == "callback.retry"
    assert logs[-1]["reason"] == "no answer within 0.3s"
    await sender.close()


def test_settings_make_a_guarded_sender() -> None:
    settings = GatewaySettings(
        callback_secret=SecretStr("k"),
        callback_allow="10.0.0.0/8",
        callback_per_host=3,
        callback_timeout=4,
    )
    sender = CallbackSender.from_settings(settings)
    assert sender._policy == EgressPolicy.parse("10.0.0.0/8")
    assert sender._slots.limit == 3 and sender._timeout == 4
    assert isinstance(sender._http._transport, GuardedTransport)
    with pytest.raises(ValueError, match="STT_CALLBACK_SECRET"):
        CallbackSender.from_settings(GatewaySettings())


async def test_host_slots_bound_in_flight_and_waiting_calls() -> None:
    slots = HostSlots(limit=2)
    assert await slots.acquire("a", 0.1) and await slots.acquire("a", 0.1)
    waiting = [asyncio.create_task(slots.acquire("a", 5)) for _ in range(2)]
    await asyncio.sleep(0)
    started = time.monotonic()
    assert not await slots.acquire("a", 5)  # two running, two waiting: no more, at once
    assert time.monotonic() - started < 0.1
    assert await slots.acquire("b", 0.1)  # another host is not concerned
    slots.release("a")
    assert await waiting[0]
    slots.release("a")
    assert await waiting[1]
    slots.release("a")
    slots.release("a")
    slots.release("b")
    assert slots._gates == {} and not slots._users  # idle hosts are forgotten


async def test_a_slow_receiver_does_not_delay_another_tenants_webhook() -> None:
    """Replays the incident: 32 calls to one slow receiver held every sender for minutes."""
    in_flight: dict[str, int] = {"slow.example": 0}
    most = 0
    delivered: dict[str, float] = {}

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal most
        if request.url.host == "slow.example":
            in_flight["slow.example"] += 1
            most = max(most, in_flight["slow.example"])
            try:
                await asyncio.sleep(60)
            finally:
                in_flight["slow.example"] -= 1
        delivered[request.url.host] = time.monotonic()
        return httpx.Response(200)

    sender = _sender(handle, per_host=2, timeout=30)
    delays = _with_delays(sender)
    slow = [
        FakeMessage(payload_of(event_for("http://slow.example/hook", f"a{i}"))) for i in range(40)
    ]
    tasks = [asyncio.create_task(sender._on_event(m)) for m in slow]  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    started = time.monotonic()
    fast = FakeMessage(payload_of(event_for("http://fast.example/hook", "b1")))
    await sender._on_event(fast)  # type: ignore[arg-type]
    assert fast.acked and delivered["fast.example"] - started < 1
    await asyncio.sleep(SLOT_WAIT_PLUS)
    # Two calls run to the slow host; the rest were put off in the broker (two of
    # them after waiting a second for a slot), their deliveries acked at once.
    assert most == 2
    assert sum(m.acked for m in slow) == 38
    assert all(d[0][DEFERRALS_HEADER] == 1 and d[1] == 1000 for d in delays.parked)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await sender.close()


SLOT_WAIT_PLUS = 1.3  # the sender's SLOT_WAIT_S and a margin


def payload_of(event: JobEvent) -> bytes:
    return event.model_dump_json().encode()
