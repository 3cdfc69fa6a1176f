"""The floor under the live overhead: a bare aio-pika request/reply of the same windows.

The live section's "broker + gateway overhead per window" is a session's wait for an
answer less the daemon's own time on it. Most of it is not ours: two processes and
the broker wake up (after sitting idle while the window was decoded) and a window of
up to 28 s of PCM crosses two sockets. To tell what is ours from what this machine
costs, the same windows (their sizes, the daemon's time on each, the session's pace)
are replayed between this process and a bare responder: no pydantic, no headers, a
classic queue (no Raft log), direct reply-to, the daemon's event loop (uvloop). What
the live path costs beyond that is our code and the quorum queue.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

#: The responder: sleeps (in a thread, like a decode) as long as the daemon took on
#: the window, then answers with how long it held the window, as LiveServer does.
RESPONDER = r"""
import asyncio, json, sys, time
import aio_pika

async def main(url, queue):
    connection = await aio_pika.connect(url)
    consume, publish = await connection.channel(), await connection.channel()
    await consume.set_qos(prefetch_count=2)
    declared = await consume.declare_queue(queue, auto_delete=True)

    async def on_window(message):
        started = time.monotonic()
        await asyncio.to_thread(time.sleep, float(message.headers["compute"]))
        held = time.monotonic() - started
        await publish.default_exchange.publish(
            aio_pika.Message(json.dumps({"compute_s": held}).encode(),
                             correlation_id=message.correlation_id),
            routing_key=message.reply_to,
        )
        await message.ack()

    await declared.consume(on_window)
    print("ready", flush=True)
    await asyncio.Future()

try:
    import uvloop
    uvloop.run(main(sys.argv[1], sys.argv[2]))
except ImportError:
    asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@dataclass(frozen=True)
class Window:
    """One window a session sent: its size and the daemon's time on it."""

    size: int
    compute_s: float


async def replay(amqp_url: str, windows: list[Window], step: float = 1.0) -> list[float]:
    """Overhead (seconds) of each window sent bare, one at a time, ``step`` apart."""
    queue = f"bench.floor.{uuid.uuid4().hex[:8]}"
    responder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RESPONDER, amqp_url, queue, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert responder.stdout is not None
        await asyncio.wait_for(responder.stdout.readline(), 60)  # "ready": the queue exists
        return await _send_all(amqp_url, queue, windows, step)
    finally:
        responder.kill()
        await responder.wait()


async def _send_all(amqp_url: str, queue: str, windows: list[Window], step: float) -> list[float]:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        waiting: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message: AbstractIncomingMessage) -> None:
            future = waiting.pop(message.correlation_id or "", None)
            if future is not None:
                future.set_result(message.body)

        replies = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await replies.consume(on_reply, no_ack=True)
        overheads = []
        for window in windows:
            sent = time.monotonic()
            overheads.append(await _one(channel, queue, window, waiting))
            await asyncio.sleep(max(0.0, step - (time.monotonic() - sent)))
        return overheads
    finally:
        await connection.close()


async def _one(
    channel: aio_pika.abc.AbstractChannel,
    queue: str,
    window: Window,
    waiting: dict[str, asyncio.Future[bytes]],
) -> float:
    import json

    correlation = uuid.uuid4().hex
    answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    waiting[correlation] = answer
    started = time.monotonic()
    await channel.default_exchange.publish(
        aio_pika.Message(
            bytes(window.size),
            headers={"compute": f"{window.compute_s:.4f}"},
            reply_to="amq.rabbitmq.reply-to",
            correlation_id=correlation,
        ),
        routing_key=queue,
    )
    body = await asyncio.wait_for(answer, timeout=30)
    return time.monotonic() - started - float(json.loads(body)["compute_s"])
