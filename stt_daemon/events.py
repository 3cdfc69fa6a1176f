"""Publishing job events to the results exchange (and RPC replies), with confirms."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import DeliveryError
from pamqp.commands import Basic

from stt_daemon.common.amqp import renew_channel
from stt_daemon.common.protocol import JobEvent, encode_event


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
                    encode_event(event, user_id=self._user_id), routing_key=event.event.value
                )
        except DeliveryError as exc:
            if isinstance(exc.frame, Basic.Nack):
                # A channel may keep nacking after a queue leader died: the retry
                # gets a fresh one (see renew_channel).
                await self._renew_channel()
            raise

    async def _renew_channel(self) -> None:
        if self._connection is None:
            return
        renewed = await renew_channel(
            self._connection,
            self._channel,
            [self._exchange.name],
            limit=self._timeout,
            owner="events",
        )
        if renewed is not None:
            self._channel, (self._exchange,) = renewed

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
                encode_event(event, correlation_id=correlation_id, user_id=self._user_id),
                routing_key=reply_to,
            )
