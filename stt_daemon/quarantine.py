"""Quarantine: a redelivered job runs apart, so a job that crashes its daemon dies alone.

When a daemon process dies (a segfault, the OOM killer), every job it held comes
back with its delivery count raised, the innocent ones beside the culprit too;
sent back together, they would die together again until all of them ran out of
attempts. So a daemon that runs several jobs at once does not run a redelivered
job among the others: it moves it to the model's quarantine queue, which every
daemon consumes one job at a time. A job that crashes again there takes along
only the first attempts of fresh jobs, never another quarantined one, and the
attempts a job has used travel with it in a header.
"""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from aio_pika.exceptions import DeliveryError
from pamqp.commands import Basic

from stt_daemon.common.amqp import copy_delivery
from stt_daemon.provenance import copy_headers, producer_of

#: Deliveries a job had before it was moved to quarantine (its count there starts at 0).
ATTEMPTS_HEADER = "x-stt-attempts"


def _int_header(message: AbstractIncomingMessage, name: str) -> int:
    try:
        return int((message.headers or {}).get(name, 0))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def previous_deliveries(message: AbstractIncomingMessage) -> int:
    """Deliveries of this job before this one, in the job queue and in quarantine."""
    return _int_header(message, "x-delivery-count") + _int_header(message, ATTEMPTS_HEADER)


def copy_of(message: AbstractIncomingMessage, attempts: int, daemon_user: str) -> aio_pika.Message:
    """A persistent copy of a delivery, counting ``attempts`` deliveries so far.

    The copy is published as ``daemon_user`` (RabbitMQ allows no other ``user_id``),
    so it names the original producer in a header (stt_daemon/provenance.py).
    """
    headers = {
        key: value
        for key, value in (message.headers or {}).items()
        # The broker's own counters start again on the copy; ours carries them.
        if not key.startswith("x-delivery-")
    }
    headers[ATTEMPTS_HEADER] = attempts
    return copy_delivery(
        message,
        headers=copy_headers(headers, producer_of(message, daemon_user)),
        user_id=daemon_user,
    )


class Quarantine:
    """Moves redelivered jobs from a model's job queue to its quarantine queue."""

    def __init__(self, exchange: AbstractExchange, timeout: float, daemon_user: str) -> None:
        self._exchange = exchange
        self._timeout = timeout
        self._user = daemon_user

    def wants(self, message: AbstractIncomingMessage) -> bool:
        """True for a job delivered before, that is not in quarantine already."""
        return message.exchange != self._exchange.name and previous_deliveries(message) > 0

    async def admit(self, message: AbstractIncomingMessage) -> bool:
        """Publish a copy to quarantine (confirmed), then ack the original.

        False, with the original untouched, when the quarantine queue is full (its
        length limit nacks the copy): the caller then runs the job where it is.
        """
        copy = copy_of(message, previous_deliveries(message), self._user)
        # The routing key of a job queue's messages is the model: keep it.
        try:
            async with asyncio.timeout(self._timeout):
                await self._exchange.publish(
                    copy, routing_key=message.routing_key or "", mandatory=True
                )
        except DeliveryError as exc:
            if isinstance(exc.frame, Basic.Nack):
                return False
            raise
        await message.ack()
        return True
