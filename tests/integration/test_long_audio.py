"""Long audio never runs into the broker's delivery acknowledgement timeout.

A job held unacknowledged past RabbitMQ's ``consumer_timeout`` is taken back and
redelivered, and would be killed at the same point forever. The daemon refuses
up front what its measured speed says would not finish in time, unless it can
split the recording into parts that do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aio_pika.abc import AbstractChannel

from audiofiles import repeated
from stack import JFK, Stack, event_tap

pytestmark = pytest.mark.integration


async def test_audio_that_would_outlive_the_ack_timeout_is_refused_with_a_reason(
    stack: Stack, channel: AbstractChannel, tmp_path: Path
) -> None:
    gw = await stack.gateway()
    # A 20 s acknowledgement timeout: jobs may use half of it. Parts of at most 30 s, so
    # that they fit it even at the speed of a machine busy with other work (60 s parts
    # were refused once at 0.27 s of work a second of audio).
    await stack.daemon(STT_ACK_TIMEOUT="20", STT_PREFETCH="1", STT_PART_SECONDS="30")
    five_minutes = repeated(JFK, 30, tmp_path / "jfk-x30.flac")
    async with event_tap(channel, stack.names) as tap:
        first = await gw.submit(JFK)  # 11 s: admitted on the assumed speed, and measured
        assert (await gw.wait_final(first["id"]))["status"] == "succeeded"
        long = await gw.submit(five_minutes, split="false")
        final = await gw.wait_final(long["id"])
        assert final["status"] == "failed", final
        assert final["error"]["code"] == "audio_too_long"
        assert "acknowledgement timeout" in final["error"]["message"]
        assert "STT_ACK_TIMEOUT" in final["error"]["message"]
        # Refused before any work: no progress was ever reported, and it ran once.
        assert not tap.of(long["id"], "job.progress")
        assert final["attempts"] == 1
        # The daemon goes on with work that fits.
        after = await gw.submit(JFK)
        assert (await gw.wait_final(after["id"]))["status"] == "succeeded"
        # And the same recording, split into parts of at most 30 s, fits too.
        split = await gw.submit(five_minutes)
        final = await gw.wait_final(split["id"], timeout=240)
        assert final["status"] == "succeeded", final
