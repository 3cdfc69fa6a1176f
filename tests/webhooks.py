"""Test support for webhooks: the sender's delay queues, which ``Stack.forget`` does not know."""

from __future__ import annotations

from contextlib import suppress

import aio_pika
from aio_pika.exceptions import AMQPError

from gateway.callbacks import RetryPlan
from stt_daemon.topology import Names


async def forget_delay_queues(amqp_url: str, names: Names, *plans: RetryPlan) -> None:
    """Delete the delay queues the senders of ``plans`` declared (a test's settings)."""
    delays = set().union(*(plan.delays_ms() for plan in plans))
    with suppress(Exception):
        connection = await aio_pika.connect(amqp_url.split(",")[0])
        async with connection:
            channel = await connection.channel()
            for delay_ms in sorted(delays):
                with suppress(AMQPError):
                    await channel.queue_delete(names.callback_retry_queue(delay_ms))
