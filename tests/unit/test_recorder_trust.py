"""Events are believed only from trusted publishers: the recorder and the webhook sender.

RabbitMQ checks a message's ``user_id`` against the publishing connection's user,
so a delivery's ``user_id`` names its publisher; anything else (none, another
user) is refused without touching the store or calling a receiver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from gateway.callback_delays import DelayQueues
from gateway.callbacks import CallbackSender, RetryPlan
from gateway.config import GatewaySettings
from gateway.recorder import Recorder
from gateway.trust import trusted_publishers
from stt_daemon.common.protocol import EventType, JobEvent, JobOptions
from stt_daemon.common.settings import AmqpUrls
from stt_daemon.common.topology import Names

EVENT = JobEvent(
    event=EventType.SUCCEEDED,
    job_id="j1",
    model="tiny.en",
    options=JobOptions(callback_url="http://receiver/hook"),
)


@dataclass
class FakeMessage:
    """The parts of a delivery the recorder and the sender use."""

    body: bytes
    user_id: str | None
    routing_key: str = "job.succeeded"
    message_id: str | None = "j1:job.succeeded"
    headers: dict[str, Any] = field(default_factory=dict)
    settled: list[str] = field(default_factory=list)
    # The other properties of a delivery (a delayed webhook call copies them all).
    content_type: str | None = None
    content_encoding: str | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    timestamp: datetime | None = None
    type: str | None = None
    app_id: str | None = None

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append(f"nack(requeue={requeue})")

    async def reject(self, requeue: bool = False) -> None:
        self.settled.append(f"reject(requeue={requeue})")


@dataclass
class FakeStore:
    """Records the events applied."""

    applied: list[JobEvent] = field(default_factory=list)

    async def apply(self, event: JobEvent) -> bool:
        self.applied.append(event)
        return True


def body() -> bytes:
    return EVENT.model_dump_json(exclude_none=True).encode()


def test_trusted_publishers_are_the_setting_and_the_gateways_own_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert trusted_publishers(GatewaySettings()) == {"stt-daemon", "guest"}
    monkeypatch.setenv("STT_EVENT_PUBLISHERS", " stt-daemon, gpu-daemons ,")
    settings = GatewaySettings(amqp_url=AmqpUrls("amqp://stt-gateway:pw@127.0.0.1:5672/"))
    assert trusted_publishers(settings) == {"stt-daemon", "gpu-daemons", "stt-gateway"}


async def test_recorder_refuses_events_without_or_with_another_user_id() -> None:
    store = FakeStore()
    recorder = Recorder(store, Names(), 8, trusted={"stt-daemon", "guest"})  # type: ignore[arg-type]
    forged = [FakeMessage(body(), None), FakeMessage(body(), "stt-producer")]
    with capture_logs() as logs:
        for message in forged:
            await recorder._on_event(message)  # type: ignore[arg-type]
    assert store.applied == []
    assert [m.settled for m in forged] == [["reject(requeue=False)"]] * 2
    assert recorder.untrusted == 2
    warnings = [e for e in logs if e["event"] == "recorder.untrusted_event"]
    assert [(w["user_id"], w["routing_key"]) for w in warnings] == [
        (None, "job.succeeded"),
        ("stt-producer", "job.succeeded"),
    ]
    assert "j1" not in repr([{k: v for k, v in w.items() if k != "message_id"} for w in warnings])
    genuine = FakeMessage(body(), "stt-daemon")
    await recorder._on_event(genuine)  # type: ignore[arg-type]
    assert genuine.settled == ["ack"] and [e.job_id for e in store.applied] == ["j1"]


async def test_recorder_without_a_list_trusts_the_default_and_its_own_connection() -> None:
    store = FakeStore()
    recorder = Recorder(store, Names(), 8)  # type: ignore[arg-type]

    class Connection:
        url = "amqp://stt-gateway:secret@rabbit:5672/"

        async def channel(self) -> Any:
            raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        await recorder.start(Connection())  # type: ignore[arg-type]
    for user, applied in (("stt-daemon", 1), ("stt-gateway", 2), ("guest", 2), (None, 2)):
        await recorder._on_event(FakeMessage(body(), user))  # type: ignore[arg-type]
        assert len(store.applied) == applied


async def test_webhook_sender_refuses_untrusted_events_without_a_request() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    sender = CallbackSender(
        Names(),
        b"key",
        retry=RetryPlan(max_attempts=3, backoff=0.1),
        http=httpx.AsyncClient(transport=httpx.MockTransport(handle)),
        trusted={"stt-daemon", "stt-gateway"},
    )
    forged = FakeMessage(body(), None)
    with capture_logs() as logs:
        await sender._on_event(forged)  # type: ignore[arg-type]
    assert seen == [] and forged.settled == ["reject(requeue=False)"]
    assert [e["event"] for e in logs] == ["callbacks.untrusted_event"]
    assert logs[0]["user_id"] is None and logs[0]["routing_key"] == "job.succeeded"
    # A call back from our own delay queue carries the gateway's user: it is sent.
    back = FakeMessage(body(), "stt-gateway")
    await sender._on_event(back)  # type: ignore[arg-type]
    assert len(seen) == 1 and back.settled == ["ack"]
    await sender.close()


def test_settings_give_the_sender_its_trusted_users_and_the_delays_the_gateways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STT_EVENT_PUBLISHERS", "daemons")
    settings = GatewaySettings(
        callback_secret=SecretStr("k"), amqp_url=AmqpUrls("amqp://gw:pw@127.0.0.1:5672/")
    )
    sender = CallbackSender.from_settings(settings)
    assert set(sender._trusted or ()) == {"daemons", "gw"}
    assert isinstance(sender._delays, DelayQueues) and sender._delays._user == "gw"


async def test_delayed_copies_are_published_as_the_gateways_own_user() -> None:
    published: list[Any] = []

    class Exchange:
        async def publish(self, message: Any, routing_key: str, mandatory: bool) -> None:
            published.append(message)

    class Channel:
        default_exchange = Exchange()

    async def connect() -> Any:
        raise AssertionError("not used")

    delays = DelayQueues(Names(), [1000], connect, 5.0, user="stt-gateway")
    delays._channel = Channel()  # type: ignore[assignment]
    original = FakeMessage(
        body(), "stt-daemon", content_type="application/json", type="job.succeeded"
    )
    await delays.put(original, {"x-stt-callback-attempts": 1}, 1000)  # type: ignore[arg-type]
    (copy,) = published
    assert copy.user_id == "stt-gateway" and copy.body == original.body
