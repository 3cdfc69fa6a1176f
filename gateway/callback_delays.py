"""Webhook calls waiting for their next try, in the broker rather than in a gateway.

A call to retry later is published to the delay queue of its delay (declared by
:func:`~stt_daemon.common.topology.declare_callback_retries`) and its delivery acked at
once: nothing in the gateway waits for it, so one receiver's outage holds no
sender. The broker dead-letters it back to the callbacks queue when it is due,
properties and all: the copy is published with the gateway's own broker user as
``user_id``, which the sender trusts, and dead-lettering keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from stt_daemon.common.amqp import copy_delivery
from stt_daemon.common.topology import Names, declare_callback_retries

log = structlog.get_logger("gateway.callbacks")

Connect = Callable[[], Awaitable[AbstractRobustConnection]]
#: Headers the broker adds on every dead-lettering; a call's own count is enough.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-")


class DelayQueues:
    """Parks webhook calls in per-delay queues, published on a connection of their own."""

    def __init__(
        self,
        names: Names,
        delays_ms: Iterable[int],
        connect: Connect,
        publish_timeout: float,
        *,
        user: str | None = None,
    ) -> None:
        self._names = names
        #: The ``user_id`` of the copies: the broker user of our connection (RabbitMQ
        #: allows no other); None sets none.
        self._user = user
        self._delays = sorted(set(delays_ms))
        self._connect = connect
        self._publish_timeout = publish_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None

    async def start(self) -> None:
        """Connect (once: the connection is robust) and declare the delay queues."""
        if self._channel is not None:
            return
        # Not the consumer's connection: a memory alarm blocks a connection that
        # publishes, and the recorder shares the consumer's.
        connection = await self._connect()
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await declare_callback_retries(channel, self._names, self._delays)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._channel = connection, channel

    async def put(
        self, message: AbstractIncomingMessage, headers: dict[str, Any], delay_ms: int
    ) -> None:
        """Publish a copy of ``message`` (with ``headers`` set) to wait ``delay_ms``; confirmed."""
        if self._channel is None:
            raise RuntimeError("delay queues are not connected")
        kept = {
            k: v for k, v in (message.headers or {}).items() if not k.startswith(_BROKER_HEADERS)
        }
        copy = copy_delivery(message, headers={**kept, **headers}, user_id=self._user)
        async with asyncio.timeout(self._publish_timeout):
            await self._channel.default_exchange.publish(
                copy, routing_key=self._names.callback_retry_queue(delay_ms), mandatory=True
            )

    async def close(self) -> None:
        """Close the publishing connection."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = self._channel = None
