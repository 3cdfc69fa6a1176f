"""Killed and stopped processes: every accepted job still ends exactly once."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from aio_pika.abc import AbstractChannel

from audiofiles import repeated
from stack import JFK, JFK_WORDS, Stack, event_tap, normalise

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def long_speech(tmp_path: Path) -> Path:
    """About 90 s of real speech: long enough to be caught mid-transcription."""
    return repeated(JFK, 8, tmp_path / "jfk-x8.flac")


async def test_sigkill_mid_job_redelivers_and_finishes_once(
    stack: Stack, channel: AbstractChannel, long_speech: Path
) -> None:
    gw = await stack.gateway()
    first = await stack.daemon(STT_PREFETCH="1")
    async with event_tap(channel, stack.names) as tap:
        job = await gw.submit(long_speech)
        await tap.wait_for(job["id"], ("job.progress",))  # really mid-transcription
        first.signal(signal.SIGKILL)
        assert await first.wait_exit() == -signal.SIGKILL
        await stack.daemon(STT_PREFETCH="1")
        done = await tap.wait_for(job["id"], ("job.succeeded", "job.failed"), timeout=180)
        await asyncio.sleep(3)  # room for a duplicate to show up, if there were one
    assert done.event == "job.succeeded"
    assert done.attempt == 2
    assert len(tap.of(job["id"], "job.succeeded")) == 1
    assert not tap.of(job["id"], "job.failed")
    assert done.result is not None and JFK_WORDS in normalise(done.result.text)
    final = await gw.wait_final(job["id"])
    assert final["status"] == "succeeded" and final["attempts"] == 2


async def test_sigterm_finishes_the_running_job_and_exits_0(
    stack: Stack, channel: AbstractChannel, long_speech: Path
) -> None:
    gw = await stack.gateway()
    daemon = await stack.daemon()
    async with event_tap(channel, stack.names) as tap:
        job = await gw.submit(long_speech)
        await tap.wait_for(job["id"], ("job.started",))
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(120) == 0
        done = await tap.wait_for(job["id"], ("job.succeeded", "job.failed"), timeout=5)
    assert done.event == "job.succeeded" and done.attempt == 1
    stopped = [line for line in daemon.log_lines() if line["event"] == "daemon.stopped"]
    assert stopped and stopped[0]["succeeded"] == 1 and stopped[0]["in_flight_at_signal"] == 1


async def test_sigterm_past_the_deadline_hands_the_job_back(
    stack: Stack, channel: AbstractChannel, long_speech: Path
) -> None:
    gw = await stack.gateway()
    daemon = await stack.daemon(STT_SHUTDOWN_TIMEOUT="0.5", STT_PREFETCH="1")
    async with event_tap(channel, stack.names) as tap:
        job = await gw.submit(long_speech)
        await tap.wait_for(job["id"], ("job.started",))
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(60) == 0
        assert not tap.of(job["id"], "job.succeeded")
        await stack.daemon()
        done = await tap.wait_for(job["id"], ("job.succeeded", "job.failed"), timeout=180)
    assert done.event == "job.succeeded" and done.attempt == 2
    assert any(line["event"] == "job.handed_back" for line in daemon.log_lines())


async def test_gateway_restart_keeps_statuses_and_recorder_resumes(stack: Stack) -> None:
    gw = await stack.gateway()
    daemon = await stack.daemon()
    done = await gw.submit(JFK)
    before = await gw.wait_final(done["id"])
    async with gw.client() as client:
        text_before = (await client.get(f"/result/{done['id']}")).json()["result"]

    await daemon.stop()
    waiting = await gw.submit(JFK)
    await gw.proc.stop()
    # The job runs while no gateway is up; its events wait in the recorder's queue.
    await stack.daemon()
    await asyncio.sleep(5)

    gw2 = await stack.gateway()
    after = await gw2.wait_final(done["id"], timeout=5)
    assert after == before
    async with gw2.client() as client:
        assert (await client.get(f"/result/{done['id']}")).json()["result"] == text_before
    resumed = await gw2.wait_final(waiting["id"], timeout=60)
    assert resumed["status"] == "succeeded"
