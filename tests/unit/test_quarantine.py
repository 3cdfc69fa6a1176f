"""Quarantine: redelivered jobs move, with their attempts, before anything else happens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika

from stt_daemon.provenance import PRODUCER_HEADER, producer_of
from stt_daemon.quarantine import ATTEMPTS_HEADER, Quarantine, previous_deliveries


@dataclass
class Delivery:
    """The parts of an incoming message that quarantine reads."""

    log: list[str]
    headers: dict[str, Any] = field(default_factory=dict)
    exchange: str = "stt.jobs"
    routing_key: str = "tiny.en"
    body: bytes = b'{"job_id": "j1"}'
    content_type: str = "application/json"
    content_encoding: str | None = None
    priority: int | None = None
    correlation_id: str | None = "c1"
    reply_to: str | None = "amq.rabbitmq.reply-to"
    message_id: str = "j1"
    timestamp: Any = None
    type: str | None = "stt.job"
    app_id: str | None = None
    user_id: str | None = "producer-a"

    async def ack(self) -> None:
        self.log.append("ack")


class Exchange:
    name = "stt.quarantine"

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.published: list[tuple[aio_pika.Message, str, bool]] = []

    async def publish(self, message: aio_pika.Message, routing_key: str, mandatory: bool) -> None:
        self.log.append("publish")
        self.published.append((message, routing_key, mandatory))


def test_attempts_add_up_across_both_queues() -> None:
    assert previous_deliveries(Delivery([])) == 0  # type: ignore[arg-type]
    moved = Delivery([], headers={"x-delivery-count": 2, ATTEMPTS_HEADER: 1})
    assert previous_deliveries(moved) == 3  # type: ignore[arg-type]


def test_only_redeliveries_outside_quarantine_are_wanted() -> None:
    quarantine = Quarantine(Exchange([]), timeout=5, daemon_user="stt-daemon")  # type: ignore[arg-type]
    first = Delivery([])
    again = Delivery([], headers={"x-delivery-count": 1})
    inside = Delivery([], headers={"x-delivery-count": 1}, exchange="stt.quarantine")
    assert not quarantine.wants(first)  # type: ignore[arg-type]
    assert quarantine.wants(again)  # type: ignore[arg-type]
    assert not quarantine.wants(inside)  # type: ignore[arg-type]


async def test_the_copy_is_confirmed_before_the_original_is_acked() -> None:
    log: list[str] = []
    exchange = Exchange(log)
    delivery = Delivery(log, headers={"x-delivery-count": 1, "x-stt-language": "fr"})
    await Quarantine(exchange, timeout=5, daemon_user="stt-daemon").admit(delivery)  # type: ignore[arg-type]
    assert log == ["publish", "ack"]
    copy, routing_key, mandatory = exchange.published[0]
    assert routing_key == "tiny.en" and mandatory
    # Published as the daemon, naming the original producer for the events.
    assert copy.user_id == "stt-daemon"
    assert copy.headers == {
        "x-stt-language": "fr",
        ATTEMPTS_HEADER: 1,
        PRODUCER_HEADER: "producer-a",
    }
    assert copy.body == delivery.body and copy.message_id == "j1"
    assert copy.reply_to == "amq.rabbitmq.reply-to" and copy.correlation_id == "c1"
    assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


def test_the_producer_header_is_believed_only_on_a_daemons_copy() -> None:
    # A producer cannot claim to be another by setting the header itself...
    forged = Delivery([], headers={PRODUCER_HEADER: "stt-gateway"}, user_id="producer-a")
    assert producer_of(forged, "stt-daemon") == "producer-a"  # type: ignore[arg-type]
    # ...nor by leaving user_id out...
    anonymous = Delivery([], headers={PRODUCER_HEADER: "stt-gateway"}, user_id=None)
    assert producer_of(anonymous, "stt-daemon") == ""  # type: ignore[arg-type]
    # ...while a daemon's own copy keeps the producer of the original.
    copy = Delivery([], headers={PRODUCER_HEADER: "producer-a"}, user_id="stt-daemon")
    assert producer_of(copy, "stt-daemon") == "producer-a"  # type: ignore[arg-type]
