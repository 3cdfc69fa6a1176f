"""A session commits nothing of an utterance before it has heard enough of it.

From a second or two of speech, two hypotheses in a row can agree on a mishearing
("and so am I" for "and so my" at the start of a stream, seen in the benchmark), and
committed words never change. The fake daemon below answers like Whisper did there.
"""

from __future__ import annotations

import asyncio

from gateway.livesession import Hypothesis, LiveLimits, LiveSession, SessionOptions
from stt_daemon.common.liveprotocol import LiveReply, LiveWord, WindowOptions

SECOND = b"\x10\x10" * 16000  # a second of (quiet but non-zero) PCM16


class Mishearing:
    """Hears "and so am I" in a short window, "and so my fellow" in a longer one."""

    async def transcribe(
        self, model: str, window: bytes, options: WindowOptions, wait: float
    ) -> LiveReply:
        seconds = len(window) / 32000
        said = ["and", "so", "am", "I"] if seconds < 2.5 else ["and", "so", "my", "fellow"]
        words = [
            LiveWord(start=0.2 + i * 0.3, end=0.45 + i * 0.3, word=f" {w}", probability=0.9)
            for i, w in enumerate(said)
        ]
        return LiveReply(duration=seconds, words=words, speech=[(0.1, seconds)], language="en")


async def committed_words(limits: LiveLimits) -> list[str]:
    session = LiveSession("s", SessionOptions(model="tiny.en"), Mishearing(), limits)  # type: ignore[arg-type]
    session.start()

    async def feed() -> None:
        for _ in range(5):
            await session.feed(SECOND)
            await asyncio.sleep(0.05)  # let each window be asked and answered
        session.finish()

    feeder = asyncio.create_task(feed())
    words: list[str] = []
    async for event in session.events():
        if isinstance(event, Hypothesis):
            words += [w.text.strip() for w in event.committed]
    await feeder
    return words


async def test_the_first_seconds_are_not_committed_on_their_own() -> None:
    words = await committed_words(LiveLimits(step=1.0))
    assert words[:4] == ["and", "so", "my", "fellow"], words


async def test_without_settling_the_mishearing_would_be_committed() -> None:
    # The control: the same answers, no settling: the early agreement sticks.
    words = await committed_words(LiveLimits(step=1.0, settle=0.0))
    assert words[:4] == ["and", "so", "am", "I"], words
