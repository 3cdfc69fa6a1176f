"""A live session against real daemons: committed words, utterances, a daemon killed mid-way.

The session runs here, in the test process, as a gateway runs it; the windows go
through the real broker to real tiny.en daemons.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import aio_pika
import numpy as np
import numpy.typing as npt
import pytest
from faster_whisper import decode_audio

from gateway.livebroker import LiveClient
from gateway.livesession import (
    Hypothesis,
    LiveEvent,
    LiveLimits,
    LiveSession,
    SessionEnded,
    SessionOptions,
    SpeechStarted,
    SpeechStopped,
    Utterance,
)
from stack import JFK, Stack, normalise
from wer import word_error_rate

pytestmark = pytest.mark.integration

#: tiny.en's offline transcript of jfk.flac.
OFFLINE = normalise(
    "And so my fellow Americans ask not what your country can do for you "
    "ask what you can do for your country"
)


def pcm(seconds_of_silence_after: float = 1.5) -> bytes:
    samples: npt.NDArray[np.float32] = decode_audio(str(JFK), sampling_rate=16000)
    silence = np.zeros(int(16000 * seconds_of_silence_after), dtype=np.float32)
    joined: npt.NDArray[np.float32] = np.concatenate([samples, silence, samples, silence])
    return (np.clip(joined, -1, 1) * 32767).astype("<i2").tobytes()


async def client_for(stack: Stack) -> AsyncIterator[LiveClient]:
    connection = await aio_pika.connect_robust(stack.url_of("gateway"))
    client = LiveClient(stack.names, stack.url_of("gateway"), publish_timeout=5)
    await client.start(connection)
    try:
        yield client
    finally:
        await connection.close()


async def stream(session: LiveSession, audio: bytes, pace: float) -> None:
    """Feed 100 ms chunks, ``pace`` x real time (0: as fast as the session takes)."""
    chunk = 3200
    for i in range(0, len(audio), chunk):
        await session.feed(audio[i : i + chunk])
        if pace:
            await asyncio.sleep(0.1 / pace)
    session.finish()


async def run(session: LiveSession, audio: bytes, pace: float) -> list[LiveEvent]:
    session.start()
    feeder = asyncio.create_task(stream(session, audio, pace))
    events = [event async for event in session.events()]
    await feeder
    return events


async def test_a_session_commits_words_and_ends_utterances_on_silence(stack: Stack) -> None:
    await stack.gateway()  # declares the live queues
    await stack.daemon()
    async for client in client_for(stack):
        session = LiveSession("s1", SessionOptions(model="tiny.en"), client, LiveLimits())
        events = await run(session, pcm(), pace=2.0)
    ended = events[-1]
    assert isinstance(ended, SessionEnded) and ended.error is None, ended
    utterances = [e for e in events if isinstance(e, Utterance)]
    assert len(utterances) >= 2, [u.text for u in utterances]
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    stops = [e for e in events if isinstance(e, SpeechStopped)]
    assert len(starts) >= 2 and len(stops) >= 2
    # Committed words only ever add up: the transcript is their concatenation.
    committed = [w for e in events if isinstance(e, Hypothesis) for w in e.committed]
    assert normalise("".join(w.text for w in committed)) == normalise(ended.transcript.text)
    times = [w.start for w in committed]
    assert times == sorted(times)
    assert word_error_rate(f"{OFFLINE} {OFFLINE}", normalise(ended.transcript.text)) <= 0.1


async def test_a_daemon_killed_mid_session_costs_no_word(stack: Stack) -> None:
    """Two daemons share the session's windows; one is SIGKILLed; the session goes on."""
    await stack.gateway()
    first = await stack.daemon()
    await stack.daemon()
    async for client in client_for(stack):
        limits = LiveLimits(window_timeout=3.0)
        session = LiveSession("s2", SessionOptions(model="tiny.en"), client, limits)

        async def kill_soon() -> None:
            await asyncio.sleep(4)
            first.signal(signal.SIGKILL)

        killer = asyncio.create_task(kill_soon())
        events = await run(session, pcm(), pace=1.0)
        await killer
    ended = events[-1]
    assert isinstance(ended, SessionEnded) and ended.error is None, ended
    assert first.popen.poll() is not None  # it really died mid-session
    assert session.stats.answered > 5
    committed = [w for e in events if isinstance(e, Hypothesis) for w in e.committed]
    assert normalise("".join(w.text for w in committed)) == normalise(ended.transcript.text)
    assert word_error_rate(f"{OFFLINE} {OFFLINE}", normalise(ended.transcript.text)) <= 0.1
