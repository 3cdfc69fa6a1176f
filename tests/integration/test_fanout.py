"""Long recordings fanned out: split at pauses, parts run on any daemon, merged in order.

The stand-in engine shows the mechanics on several daemons; the real model shows
that the merged transcript reads like the unsplit one.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from audiofiles import long_talk
from stack import JFK_WORDS, Gateway, Proc, Stack, event_tap, normalise
from wer import word_error_rate

pytestmark = pytest.mark.integration

STANDIN = {"STT_ENGINE": "standin", "STT_STANDIN_RTF": "0.1", "STT_PREFETCH": "1"}


async def result_of(gw: Gateway, job_id: str) -> dict[str, Any]:
    async with gw.client() as client:
        response = await client.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def logged(daemons: list[Proc], event: str) -> list[dict[str, Any]]:
    return [line for d in daemons for line in d.log_lines() if line.get("event") == event]


def assert_continuous(result: dict[str, Any], duration: float) -> None:
    """Segments in order on the whole recording's clock, numbered afresh, ending at its end."""
    segments = result["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts), starts
    assert all(s["start"] <= s["end"] for s in segments)
    assert result["duration"] == pytest.approx(duration, abs=0.1)
    assert segments[-1]["end"] <= duration + 0.1
    assert segments[-1]["end"] > duration - 40  # the last part's speech is there


@pytest.mark.standin
async def test_parts_run_on_every_daemon_and_merge_in_order(
    stack: Stack, channel: AbstractChannel, tmp_path: Path
) -> None:
    talk = long_talk(tmp_path / "talk.wav", 420, tmp_path)
    gw = await stack.gateway()
    daemons = [await stack.daemon(environ=STANDIN) for _ in range(3)]
    async with event_tap(channel, stack.names) as tap:
        job = await gw.submit(talk)
        final = await gw.wait_final(job["id"], timeout=180)
        assert final["status"] == "succeeded", final
        result = await result_of(gw, job["id"])
        assert_continuous(result, 420)
        # Stand-in segments say how much audio each covered: together, all of it.
        covered = sum(s["end"] - s["start"] for s in result["segments"])
        assert covered == pytest.approx(420, abs=0.5)

        [split] = logged(daemons, "job.split")
        parts = split["parts"]
        assert 7 <= parts <= 11  # 420 s in parts of 40-60 s
        done = logged(daemons, "part.done")
        assert sorted(d["part"] for d in done) == list(range(parts))
        assert sum(1 for d in daemons if logged([d], "part.done")) >= 2  # shared out
        # One job to the outside: every event names it, progress rises, one final.
        assert {e.job_id for e in tap.events} == {job["id"]}
        progress = tap.progress(job["id"])
        assert len(progress) >= parts - 1
        assert progress == sorted(progress) and 0 < progress[-1] < 1
        assert len(tap.of(job["id"], "job.succeeded")) == 1
    # Nothing of the fan-out is left in the blob store.
    assert not list((stack.data_dir / "blobs").glob("fan-*"))


async def test_merged_transcript_matches_the_unsplit_one(stack: Stack, tmp_path: Path) -> None:
    # Four minutes with the shipped defaults: split past 180 s, parts of at most 60 s.
    talk = long_talk(tmp_path / "talk.wav", 240, tmp_path)
    gw = await stack.gateway()
    daemon = await stack.daemon()
    whole = await gw.submit(talk, split="false")
    split = await gw.submit(talk)
    for job in (whole, split):
        final = await gw.wait_final(job["id"], timeout=300)
        assert final["status"] == "succeeded", final
    assert len(logged([daemon], "job.split")) == 1  # only the second was split
    unsplit_result = await result_of(gw, whole["id"])
    merged = await result_of(gw, split["id"])
    assert_continuous(merged, 240)
    error = word_error_rate(unsplit_result["text"], merged["text"])
    assert error <= 0.05, (error, unsplit_result["text"], merged["text"])
    # Real speech inside it, and the same start and end as the whole.
    words, whole_words = (
        normalise(merged["text"]).split(),
        normalise(unsplit_result["text"]).split(),
    )
    assert JFK_WORDS in " ".join(words)
    assert words[:5] == whole_words[:5] and words[-5:] == whole_words[-5:]


@pytest.mark.standin
async def test_cancelling_a_split_recording_stops_its_parts(
    stack: Stack, channel: AbstractChannel, tmp_path: Path
) -> None:
    talk = long_talk(tmp_path / "talk.wav", 200, tmp_path)
    gw = await stack.gateway()
    # Parts of at most 20 s, each taking 6 s.
    slow = {"STT_STANDIN_RTF": "0.3", "STT_SPLIT_SECONDS": "60", "STT_PART_SECONDS": "20"}
    daemon = await stack.daemon(environ={**STANDIN, **slow})
    async with event_tap(channel, stack.names) as tap:
        job = await gw.submit(talk)
        await tap.wait_for(job["id"], ("job.progress",), timeout=120)
        async with gw.client() as client:
            assert (await client.delete(f"/v1/jobs/{job['id']}")).status_code == 200
        await tap.wait_for(job["id"], ("job.cancelled",), timeout=60)
        await daemon.wait_for_log("part.skipped", timeout=60)
    assert not tap.of(job["id"], "job.succeeded")
    assert (await gw.wait_final(job["id"]))["status"] == "cancelled"
    assert not list((stack.data_dir / "blobs").glob("fan-*.json"))


@pytest.mark.standin
async def test_a_full_queue_runs_the_recording_whole(stack: Stack, tmp_path: Path) -> None:
    talk = long_talk(tmp_path / "talk.wav", 200, tmp_path)
    # Room for two jobs: the parts of a 200 s recording do not fit.
    gw = await stack.gateway(STT_MAX_QUEUED="2")
    daemon = await stack.daemon(environ={**STANDIN, "STT_STANDIN_RTF": "0.02"}, STT_MAX_QUEUED="2")
    job = await gw.submit(talk)
    final = await gw.wait_final(job["id"], timeout=120)
    assert final["status"] == "succeeded", final
    await daemon.wait_for_log("job.not_split", timeout=5)
    assert not logged([daemon], "job.split")
    assert_continuous(await result_of(gw, job["id"]), 200)
    assert not list((stack.data_dir / "blobs").glob("fan-*"))


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.standin
async def test_a_daemon_killed_while_running_a_part_loses_nothing(
    stack: Stack, channel: AbstractChannel, tmp_path: Path
) -> None:
    talk = long_talk(tmp_path / "talk.wav", 300, tmp_path)
    gw = await stack.gateway()
    env = {**STANDIN, "STT_STANDIN_RTF": "0.1", "STT_HEARTBEAT": "5"}
    victim, survivor = await stack.daemon(environ=env), await stack.daemon(environ=env)
    async with event_tap(channel, stack.names) as tap:
        job = await gw.submit(talk)
        # Kill the victim in the middle of a part: after it finished one, as it runs the next.
        await victim.wait_for_log("part.done", timeout=120)
        await asyncio.sleep(1)
        victim.signal(signal.SIGKILL)
        final = await gw.wait_final(job["id"], timeout=240)
        assert final["status"] == "succeeded", final
        result = await result_of(gw, job["id"])
        assert_continuous(result, 300)
        covered = sum(s["end"] - s["start"] for s in result["segments"])
        assert covered == pytest.approx(300, abs=0.5)  # every part once, none twice
        # The part the victim was running came back to the survivor as a second attempt.
        assert any(line.get("attempt") == 2 for line in logged([survivor], "part.done"))
        # One recording, one result: a repeated final event could only repeat it.
        finals = tap.of(job["id"], "job.succeeded")
        assert len({e.result.model_dump_json() for e in finals if e.result}) == 1
    assert not list((stack.data_dir / "blobs").glob("fan-*.json"))
