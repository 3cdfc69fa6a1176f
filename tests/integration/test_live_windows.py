"""Live windows at the broker: any daemon of the model answers, expired ones die unanswered."""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import numpy as np
import numpy.typing as npt
import pytest
from aio_pika.abc import AbstractChannel
from faster_whisper import decode_audio

from stack import JFK, Stack, normalise
from stt_daemon.common.liveprotocol import WINDOW_CONTENT_TYPE, LiveReply, WindowOptions

pytestmark = pytest.mark.integration


def pcm16(path: str, seconds: float | None = None) -> bytes:
    """The file as 16 kHz mono 16-bit PCM, optionally cut."""
    samples: npt.NDArray[np.float32] = decode_audio(path, sampling_rate=16000)
    if seconds:
        samples = samples[: int(seconds * 16000)]
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def ask(
    channel: AbstractChannel, stack: Stack, body: bytes, options: WindowOptions, timeout: float = 30
) -> LiveReply | None:
    """Send one window with direct reply-to; the reply, or None if none came in time."""
    answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    correlation = uuid.uuid4().hex

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if message.correlation_id == correlation and not answered.done():
            answered.set_result(message.body)

    replies = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
    tag = await replies.consume(on_reply, no_ack=True)
    try:
        exchange = await channel.get_exchange(stack.names.live_exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type=WINDOW_CONTENT_TYPE,
                headers=options.headers(),
                reply_to="amq.rabbitmq.reply-to",
                correlation_id=correlation,
            ),
            routing_key="tiny.en",
        )
        try:
            return LiveReply.model_validate_json(await asyncio.wait_for(answered, timeout))
        except TimeoutError:
            return None
    finally:
        await replies.cancel(tag)


async def test_a_window_is_answered_with_timed_words_and_speech(
    stack: Stack, channel: AbstractChannel
) -> None:
    await stack.daemon()
    reply = await ask(channel, stack, pcm16(str(JFK)), WindowOptions(session="s1"))
    assert reply is not None and reply.error is None, reply
    text = normalise("".join(w.word for w in reply.words))
    assert "what your country can do for you" in text
    assert 10.5 < reply.duration < 11.5
    assert reply.speech and reply.speech[0][0] < 1.0 and reply.speech[-1][1] > 9.0
    starts = [w.start for w in reply.words]
    assert starts == sorted(starts) and all(0 <= w.start <= w.end <= 11.5 for w in reply.words)
    assert all(0 < w.probability <= 1 for w in reply.words)


async def test_silence_is_not_decoded(stack: Stack, channel: AbstractChannel) -> None:
    await stack.daemon()
    silence = np.zeros(16000 * 3, dtype="<i2").tobytes()
    reply = await ask(channel, stack, silence, WindowOptions(session="s1"))
    assert reply is not None and reply.speech == [] and reply.words == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00" * 3, "even number"),
        (b"\x00" * (16000 * 2 * 40), "over"),
    ],
)
async def test_a_bad_window_gets_an_error_and_the_daemon_goes_on(
    stack: Stack, channel: AbstractChannel, body: bytes, reason: str
) -> None:
    await stack.daemon()
    reply = await ask(channel, stack, body, WindowOptions(session="s1"))
    assert reply is not None and reply.error is not None and reason in reply.error
    again = await ask(channel, stack, pcm16(str(JFK), 4), WindowOptions(session="s1"))
    assert again is not None and again.error is None and again.words


async def test_a_window_past_its_deadline_is_dropped_unanswered(
    stack: Stack, channel: AbstractChannel
) -> None:
    await stack.daemon()
    late = WindowOptions(session="s1", deadline=time.time() - 1)
    assert await ask(channel, stack, pcm16(str(JFK), 4), late, timeout=5) is None
