"""Publishing job events to the results exchange (and RPC replies), with confirms."""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from stt_daemon.protocol import JSON_CONTENT_TYPE, EventType, JobEvent


def event_message(event: JobEvent, *, correlation_id: str | None = None) -> aio_pika.Message:
    """The AMQP message of an event: persistent, except progress (superseded within seconds)."""
    persistent = event.event is not EventType.PROGRESS
    return aio_pika.Message(
        event.model_dump_json(exclude_none=True).encode(),
        content_type=JSON_CONTENT_TYPE,
        delivery_mode=(
            aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
        ),
        message_id=f"{event.job_id}:{event.event.value}",
        correlation_id=correlation_id,
        type=event.event.value,
        timestamp=event.timestamp,
        headers={"job_id": event.job_id, "model": event.model or ""},
    )


class EventPublisher:
    """Publishes events on a channel with publisher confirms; every publish has a timeout."""

    def __init__(
        self, channel: AbstractChannel, exchange: AbstractExchange, timeout: float
    ) -> None:
        self._channel = channel
        self._exchange = exchange
        self._timeout = timeout

    async def publish(self, event: JobEvent) -> None:
        """Publish and wait for the broker's confirm (aio-pika #636: never wait forever)."""
        async with asyncio.timeout(self._timeout):
            await self._exchange.publish(event_message(event), routing_key=event.event.value)

    async def reply(self, event: JobEvent, reply_to: str, correlation_id: str | None) -> None:
        """Send the final event to an RPC caller (``reply_to``, direct reply-to included)."""
        # Not mandatory: a caller that went away must not turn a finished job into an error.
        async with asyncio.timeout(self._timeout):
            await self._channel.default_exchange.publish(
                event_message(event, correlation_id=correlation_id), routing_key=reply_to
            )
