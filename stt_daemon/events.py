"""Publishing job events to the results exchange (and RPC replies), with confirms."""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import AMQPError, DeliveryError
from pamqp.commands import Basic

from stt_daemon.common.protocol import JSON_CONTENT_TYPE, EventType, JobEvent

log = structlog.get_logger("stt_daemon.events")


def message_id(event: JobEvent) -> str:
    """The AMQP ``message_id`` consumers de-duplicate on.

    A job has one final event, so that one is named by the job: a daemon that dies
    after publishing it but before its ack transcribes the job again, and the second
    result must read as a duplicate of the first. Other events (``job.started`` each
    attempt, ``job.progress`` many times) are each new: their own ``event_id``, made
    once with the event, so a retried publish or a redelivery keeps it.
    """
    if event.event.status.is_final:
        return f"{event.job_id}:{event.event.value}"
    return event.event_id


def event_message(
    event: JobEvent, *, correlation_id: str | None = None, user_id: str | None = None
) -> aio_pika.Message:
    """The AMQP message of an event: persistent, except progress (superseded within seconds).

    ``user_id`` is the daemon's broker user: RabbitMQ checks it, and the status store
    and webhook sender accept events only from the users they trust.
    """
    persistent = event.event is not EventType.PROGRESS
    return aio_pika.Message(
        event.model_dump_json(exclude_none=True).encode(),
        content_type=JSON_CONTENT_TYPE,
        delivery_mode=(
            aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
        ),
        message_id=message_id(event),
        correlation_id=correlation_id,
        user_id=user_id,
        type=event.event.value,
        timestamp=event.timestamp,
        headers={"job_id": event.job_id, "model": event.model or ""},
    )


class EventPublisher:
    """Publishes events on a channel with publisher confirms; every publish has a timeout."""

    def __init__(
        self,
        channel: AbstractChannel,
        exchange: AbstractExchange,
        timeout: float,
        connection: AbstractConnection | None = None,
        *,
        user_id: str | None = None,
        namespace: str | None = None,
    ) -> None:
        self._channel = channel
        self._exchange = exchange
        self._timeout = timeout
        self._connection = connection
        self._user_id = user_id
        #: Prefix of our own queues, which a ``reply_to`` must never name.
        self._own_prefix = f"{namespace}." if namespace else None

    async def publish(self, event: JobEvent) -> None:
        """Publish and wait for the broker's confirm (aio-pika #636: never wait forever)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._exchange.publish(
                    event_message(event, user_id=self._user_id), routing_key=event.event.value
                )
        except DeliveryError as exc:
            if isinstance(exc.frame, Basic.Nack):
                # Seen on RabbitMQ 3.10 after a queue leader died: one channel
                # kept nacking for minutes. The retry gets a fresh channel.
                await self._renew_channel()
            raise

    async def _renew_channel(self) -> None:
        if self._connection is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                channel = await self._connection.channel(publisher_confirms=True)
                self._exchange = await channel.get_exchange(self._exchange.name, ensure=False)
        except (TimeoutError, AMQPError, ConnectionError, RuntimeError) as exc:
            log.warning("events.channel_not_renewed", error=f"{type(exc).__name__}: {exc}")
            return
        old, self._channel = self._channel, channel
        with contextlib.suppress(Exception):
            await old.close()
        log.info("events.channel_renewed")

    async def reply(self, event: JobEvent, reply_to: str, correlation_id: str | None) -> None:
        """Send the final event to an RPC caller (``reply_to``, direct reply-to included)."""
        if self._own_prefix is not None and reply_to.startswith(self._own_prefix):
            # Through the default exchange a reply reaches any queue: a producer naming
            # one of ours (the status store's, the webhooks') would have the daemon
            # post into it with the daemon's trusted user.
            raise ValueError(f"reply_to {reply_to!r} names a queue of this deployment")
        # Not mandatory: a caller that went away must not turn a finished job into an error.
        async with asyncio.timeout(self._timeout):
            await self._channel.default_exchange.publish(
                event_message(event, correlation_id=correlation_id, user_id=self._user_id),
                routing_key=reply_to,
            )
