"""Checkpoints: whole windows only, saved now and then, resumed where they end."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from stt_daemon.audio import ArraySamples
from stt_daemon.checkpoints import Checkpoint, CheckpointStore, Tracker, fingerprint
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import (
    AudioRef,
    InboundJob,
    JobMessage,
    JobOptions,
    PartInfo,
    Segment,
)
from stt_daemon.standin import StandInEngine


def _job(job_id: str = "job-1", sha: str = "a" * 64, **options: object) -> InboundJob:
    audio = AudioRef(url="file:///nowhere/x", sha256=sha, size=1)
    return InboundJob(
        message=JobMessage(job_id=job_id, options=JobOptions.model_validate(options), audio=audio)
    )


def _ignore(fraction: float, segments: Sequence[Segment] = (), /) -> None:
    """A progress callback that is told and does nothing."""


def _seg(start: float, end: float, text: str = "w") -> Segment:
    return Segment(id=0, start=start, end=end, text=text)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_window_counts_only_once_the_next_one_has_started() -> None:
    saved: list[Checkpoint] = []
    clock = Clock()
    tracker = Tracker(_job(), None, saved.append, interval=10, clock=clock)
    tracker.begin(100.0, "en", 1.0)
    tracker.add(_seg(0, 8), 0.0, [1, 2])
    tracker.add(_seg(8, 27), 0.0, [3])
    assert tracker.committed.start == 0 and tracker.committed.segments == []
    clock.now = 11  # past the interval, but the first window is not known to be over
    tracker.add(_seg(27.5, 40), 27.4, [4])
    assert [s.end for s in tracker.committed.segments] == [8, 27]
    assert [s.id for s in tracker.committed.segments] == [0, 1]
    assert tracker.committed.start == 27.4
    assert tracker.committed.prompt_tokens == [1, 2, 3]
    assert len(saved) == 1 and saved[0].start == 27.4 and saved[0].fraction == pytest.approx(0.274)


def test_saves_wait_for_the_interval_and_flush_saves_only_news() -> None:
    saved: list[Checkpoint] = []
    clock = Clock()
    tracker = Tracker(_job(), None, saved.append, interval=30, clock=clock)
    tracker.begin(300.0, "en", 1.0)
    for window in range(5):
        clock.now = window * 5
        tracker.add(_seg(window * 30, window * 30 + 29), window * 30.0)
    assert saved == []  # 20 s of work: under the interval
    assert tracker.flush() is not None and saved[-1].start == 120.0
    assert len(tracker.flush().segments) == 4  # type: ignore[union-attr]
    assert len(saved) == 1  # nothing new: not written again


def test_a_window_decoded_hot_resets_the_prompt_as_whisper_does() -> None:
    tracker = Tracker(_job(), None, lambda c: None, interval=0)
    tracker.begin(100.0, "en", 1.0)
    tracker.add(_seg(0, 20), 0.0, [1, 2], temperature=0.0)
    tracker.add(_seg(30, 50), 30.0, [3], temperature=0.8)
    tracker.add(_seg(60, 70), 60.0, [4], temperature=0.0)
    assert tracker.committed.prompt_tokens == [] and tracker.committed.prompt_reset
    tracker.complete(90.0)
    assert tracker.committed.prompt_tokens == [4]


def test_store_round_trip_and_refuses_other_audio_or_options(tmp_path: Path) -> None:
    store = CheckpointStore(BlobStore(tmp_path.as_uri()))
    job = _job()
    checkpoint = Checkpoint(
        job_id="job-1", fingerprint=fingerprint(job), duration=60, start=30, segments=[]
    )
    store.save(job, checkpoint)
    assert store.load(job) == checkpoint
    assert store.load(_job(sha="b" * 64)) is None  # other audio under the same id
    assert store.load(_job(language="en")) is None  # other options
    in_part = job.message.model_copy(update={"part": PartInfo(index=1, count=2, offset=0)})
    part = job.model_copy(update={"message": in_part})
    assert store.path(part) != store.path(job)
    store.drop(job)
    assert store.load(job) is None
    store.drop(job)  # idempotent


def test_a_torn_or_foreign_file_is_ignored(tmp_path: Path) -> None:
    store = CheckpointStore(BlobStore(tmp_path.as_uri()))
    job = _job()
    store.path(job).write_text("{not json")
    assert store.load(job) is None


def test_the_stand_in_engine_resumes_where_the_checkpoint_ends() -> None:
    engine = StandInEngine("tiny.en", rtf=0.0)
    audio = ArraySamples(np.zeros(150 * 16000, dtype=np.float32))
    saved: list[Checkpoint] = []
    stop = threading.Event()
    seen: list[float] = []

    def progress(fraction: float, segments: Sequence[Segment] = (), /) -> None:
        seen.append(fraction)
        if fraction >= 0.4:
            stop.set()  # the daemon is asked to stop after the second window

    first = Tracker(_job(), None, saved.append, interval=0)
    try:
        engine.transcribe(audio, JobOptions(), progress, stop, first)
    except Exception as exc:
        assert type(exc).__name__ == "JobCancelled"
    checkpoint = first.flush()
    assert checkpoint is not None and checkpoint.start == 60.0
    assert [s.end for s in checkpoint.segments] == [30.0, 60.0]
    second = Tracker(_job(), checkpoint, saved.append, interval=0)
    result = engine.transcribe(audio, JobOptions(), _ignore, threading.Event(), second)
    assert [s.start for s in result.segments] == [0, 30, 60, 90, 120]
    assert [s.id for s in result.segments] == [0, 1, 2, 3, 4]
