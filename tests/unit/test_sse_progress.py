"""What feeds the streams: the daemon's ``job.progress`` events carry the segments finished
since the previous one, none lost to the throttle (``STT_PROGRESS_INTERVAL``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import EventType, InboundJob, JobEvent, JobMessage, Segment
from stt_daemon.settling import Settler


class Events:
    def __init__(self) -> None:
        self.published: list[JobEvent] = []

    async def publish(self, event: JobEvent) -> None:
        self.published.append(event)


def segment(i: int) -> Segment:
    return Segment(id=i, start=float(i), end=i + 1.0, text=f" word{i}")


async def test_segments_between_two_progress_events_wait_for_the_next(tmp_path: Path) -> None:
    events = Events()
    settler = Settler(events, BlobStore(tmp_path.as_uri()), "w1", progress_interval=0.2)  # type: ignore[arg-type]
    report = settler.progress_reporter(InboundJob(message=JobMessage(job_id="j1")), attempt=1)

    def transcribe() -> None:
        # As the engine calls it: from its thread, once a segment.
        report(0.1, [segment(0)])  # published at once
        report(0.2, [segment(1)])  # too soon: held
        report(0.3, [segment(2)])  # too soon: held
        time.sleep(0.25)
        report(0.4, [segment(3)])  # published with 1, 2 and 3
        report(0.5)  # too soon, and nothing new anyway
        time.sleep(0.25)
        report(0.6)  # nothing new: no segments
        report(1.0, [segment(4)])  # the end: comes with the result

    await asyncio.to_thread(transcribe)
    for _ in range(3):
        await asyncio.sleep(0)  # let the publishing tasks run
    progress = [e for e in events.published if e.event is EventType.PROGRESS]
    assert [e.progress for e in progress] == [0.1, 0.4, 0.6]
    assert [[s.id for s in e.segments or []] for e in progress] == [[0], [1, 2, 3], []]
    assert progress[-1].segments is None  # left out of the JSON, as every empty field
