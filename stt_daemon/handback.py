"""Handing a job back to its queue as a fresh message, without using up an attempt.

``basic.nack(requeue=True)`` raises the delivery count of a quorum queue: the job
then counts as crashed (quarantined, one attempt nearer to failing). A daemon that
stops on purpose has done nothing wrong, so it publishes a copy of the job, with
its attempts so far, to the exchange the job came from, waits for the broker's
confirm, and only then acks the delivery: the job is never out of the queue.
"""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from stt_daemon.quarantine import copy_of


class Handback:
    """Republishes deliveries where they came from, with confirms and returns that raise."""

    def __init__(self, channel: AbstractChannel, timeout: float, daemon_user: str) -> None:
        self._channel = channel
        self._timeout = timeout
        self._user = daemon_user
        self._exchanges: dict[str, AbstractExchange] = {}

    async def _exchange(self, name: str) -> AbstractExchange:
        if not name:
            return self._channel.default_exchange  # published straight to the queue
        if name not in self._exchanges:
            self._exchanges[name] = await self._channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    async def give_back(self, message: AbstractIncomingMessage, attempts: int) -> None:
        """Publish a copy (confirmed), then ack the delivery."""
        async with asyncio.timeout(self._timeout):
            exchange = await self._exchange(message.exchange or "")
            await exchange.publish(
                copy_of(message, attempts, self._user),
                routing_key=message.routing_key or "",
                mandatory=True,
            )
        await message.ack()
