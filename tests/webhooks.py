"""Test support for webhooks: the sender's delay queues, which ``Stack.forget`` does not know."""

from __future__ import annotations

from contextlib import suppress

import aio_pika
from aio_pika.exceptions import AMQPError

from gateway.callbacks import RetryPlan
from stt_daemon.common.topology import Names


async def forget_delay_queues(amqp_url: str, names: Names, *plans: RetryPlan) -> None:
    """Delete the empty delay queues the senders of ``plans`` declared (a test's settings).

    Call it once the gateways are stopped. RabbitMQ 3.10.8 crashed (and then failed
    every connection with INTERNAL_ERROR for the rest of a CI run) when a delay queue,
    a quorum queue dead-lettering at-least-once, was deleted while a gateway declared
    it again and its dead-letter worker was busy: so no gateway runs any more here,
    and a queue still holding calls is left alone.
    """
    delays = set().union(*(plan.delays_ms() for plan in plans))
    with suppress(Exception):
        connection = await aio_pika.connect(amqp_url.split(",")[0])
        async with connection:
            for delay_ms in sorted(delays):
                name = names.callback_retry_queue(delay_ms)
                with suppress(AMQPError):
                    channel = await connection.channel()
                    queue = await channel.declare_queue(name, passive=True)
                    if queue.declaration_result.message_count == 0:
                        await channel.queue_delete(name)
