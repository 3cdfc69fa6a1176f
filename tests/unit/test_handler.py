"""The job handler with fakes: ack only after the result is confirmed, retries that end."""

from __future__ import annotations

import asyncio
import io
import threading
import wave
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aio_pika.exceptions import ChannelInvalidStateError

from stack import JFK
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import JobEvent, JobOptions, Segment, TranscriptResult
from stt_daemon.config import DaemonSettings
from stt_daemon.handler import JobHandler
from stt_daemon.standin import StandInEngine


@dataclass
class FakeMessage:
    """Just the parts of an aio-pika incoming message the handler uses."""

    body: bytes
    log: list[str]
    content_type: str | None = "audio/flac"
    message_id: str | None = "job-1"
    headers: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    correlation_id: str | None = None
    routing_key: str | None = "tiny.en"
    #: The publisher's broker user, as RabbitMQ checked it.
    user_id: str | None = None
    #: The delivery's channel is still open (False: the broker closed it under the job).
    channel_open: bool = True

    @property
    def channel(self) -> Any:
        if not self.channel_open:
            raise ChannelInvalidStateError
        return SimpleNamespace(is_closed=False)

    async def ack(self) -> None:
        self.log.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.log.append(f"nack(requeue={requeue})")

    async def reject(self, requeue: bool = False) -> None:
        self.log.append(f"reject(requeue={requeue})")


class FakeEvents:
    """Records what would have been published; can be told to fail."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.events: list[JobEvent] = []
        self.replies: list[tuple[JobEvent, str, str | None]] = []
        self.fail_on: str | None = None

    async def publish(self, event: JobEvent) -> None:
        if event.event.value == self.fail_on:
            raise ConnectionError("broker went away")
        self.events.append(event)
        self.log.append(event.event.value)

    async def reply(self, event: JobEvent, reply_to: str, correlation_id: str | None) -> None:
        self.replies.append((event, reply_to, correlation_id))
        self.log.append("reply")


class FakeEngine:
    """Answers instantly, or raises what it is given."""

    name = "tiny.en"
    multilingual = True

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls = 0

    def transcribe(
        self,
        audio: Any,
        options: JobOptions,
        on_progress: Any,
        cancelled: threading.Event,
        tracker: Any = None,
    ) -> TranscriptResult:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return TranscriptResult(
            text="fake words",
            language="en",
            duration=audio.samples / 16000,
            model=options.model,
            segments=[Segment(id=0, start=0.0, end=1.0, text="fake words")],
        )

    def detect_language(self, audio: Any) -> tuple[str, float]:
        """Not reached by these jobs; fails loudly if it ever is."""
        raise AssertionError("the fake engine detects no language")


def _handler(
    tmp_path: Path, engine: FakeEngine, log: list[str], **settings: Any
) -> tuple[JobHandler, FakeEvents]:
    events = FakeEvents(log)
    config = DaemonSettings(data_dir=tmp_path, retry_backoff=0, **settings)
    handler = JobHandler(config, {"tiny.en": engine}, BlobStore((tmp_path / "b").as_uri()), events)  # type: ignore[arg-type]
    return handler, events


async def test_success_publishes_then_acks(tmp_path: Path) -> None:
    log: list[str] = []
    handler, events = _handler(tmp_path, FakeEngine(), log)
    await handler.handle(FakeMessage(JFK.read_bytes(), log))  # type: ignore[arg-type]
    assert log == ["job.started", "job.succeeded", "ack"]
    assert events.events[-1].result is not None
    assert events.events[-1].result.duration == pytest.approx(11.0)


async def test_reply_to_gets_the_final_event_before_the_ack(tmp_path: Path) -> None:
    log: list[str] = []
    handler, events = _handler(tmp_path, FakeEngine(), log)
    message = FakeMessage(
        JFK.read_bytes(), log, reply_to="amq.rabbitmq.reply-to.x", correlation_id="c1"
    )
    await handler.handle(message)  # type: ignore[arg-type]
    assert log == ["job.started", "job.succeeded", "reply", "ack"]
    event, reply_to, correlation = events.replies[0]
    assert (event.event.value, reply_to, correlation) == (
        "job.succeeded",
        "amq.rabbitmq.reply-to.x",
        "c1",
    )


async def test_unconfirmed_result_is_never_acked(tmp_path: Path) -> None:
    log: list[str] = []
    handler, events = _handler(tmp_path, FakeEngine(), log)
    events.fail_on = "job.succeeded"
    await handler.handle(FakeMessage(JFK.read_bytes(), log))  # type: ignore[arg-type]
    assert "ack" not in log
    assert log[-1] == "nack(requeue=True)"


async def test_bad_audio_fails_and_dead_letters_without_retry(tmp_path: Path) -> None:
    log: list[str] = []
    engine = FakeEngine()
    handler, events = _handler(tmp_path, engine, log)
    await handler.handle(FakeMessage(b"not audio" * 100, log))  # type: ignore[arg-type]
    assert log == ["job.started", "job.failed", "reject(requeue=False)"]
    assert events.events[-1].error is not None and events.events[-1].error.code == "bad_audio"
    assert engine.calls == 0


async def test_transient_error_is_retried_then_given_up(tmp_path: Path) -> None:
    log: list[str] = []
    handler, events = _handler(
        tmp_path, FakeEngine(error=RuntimeError("GPU hiccup")), log, max_attempts=3
    )
    await handler.handle(FakeMessage(JFK.read_bytes(), log))  # type: ignore[arg-type]
    assert log[-1] == "nack(requeue=True)"
    assert not [e for e in events.events if e.event.value == "job.failed"]

    log.clear()
    # Third delivery (x-delivery-count counts earlier ones): the last attempt.
    await handler.handle(FakeMessage(JFK.read_bytes(), log, headers={"x-delivery-count": 2}))  # type: ignore[arg-type]
    assert log[-2:] == ["job.failed", "reject(requeue=False)"]
    failed = events.events[-1]
    assert failed.attempt == 3
    assert failed.error is not None and "GPU hiccup" in failed.error.message


async def test_job_delivered_too_often_is_failed_without_running(tmp_path: Path) -> None:
    """A job that crashed every worker that took it is reported, not retried forever."""
    log: list[str] = []
    engine = FakeEngine()
    handler, events = _handler(tmp_path, engine, log, max_attempts=3)
    await handler.handle(FakeMessage(JFK.read_bytes(), log, headers={"x-delivery-count": 3}))  # type: ignore[arg-type]
    assert log == ["job.failed", "reject(requeue=False)"]
    assert events.events[0].error is not None
    assert events.events[0].error.code == "too_many_attempts"
    assert engine.calls == 0


async def test_undecodable_message_fails_with_its_reason(tmp_path: Path) -> None:
    log: list[str] = []
    handler, events = _handler(tmp_path, FakeEngine(), log)
    await handler.handle(FakeMessage(b"{", log, content_type="application/json"))  # type: ignore[arg-type]
    assert log == ["job.failed", "reject(requeue=False)"]
    assert events.events[0].job_id == "job-1"
    assert events.events[0].error is not None and events.events[0].error.code == "bad_message"


async def test_cancellation_hands_the_job_back(tmp_path: Path) -> None:
    log: list[str] = []
    started = threading.Event()
    release = threading.Event()

    class SlowEngine(FakeEngine):
        def transcribe(
            self,
            audio: Any,
            options: Any,
            on_progress: Any,
            cancelled: threading.Event,
            tracker: Any = None,
        ) -> Any:
            started.set()
            release.wait(5)
            return super().transcribe(audio, options, on_progress, cancelled)

    handler, _ = _handler(tmp_path, SlowEngine(), log)
    task = asyncio.create_task(handler.handle(FakeMessage(JFK.read_bytes(), log)))  # type: ignore[arg-type]
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    # Without a hand-back channel the job goes back the plain way (never lost).
    assert log == ["job.started", "job.requeued", "nack(requeue=True)"]
    assert handler.counts["handed_back"] == 1


async def test_a_failure_that_cannot_be_reported_is_handed_back(tmp_path: Path) -> None:
    log: list[str] = []
    handler, events = _handler(tmp_path, FakeEngine(), log)
    events.fail_on = "job.failed"
    await handler.handle(FakeMessage(b"not audio" * 100, log))  # type: ignore[arg-type]
    assert log == ["job.started", "nack(requeue=True)"]


async def test_english_only_model_refuses_other_languages(tmp_path: Path) -> None:
    log: list[str] = []
    engine = FakeEngine()
    engine.multilingual = False
    handler, events = _handler(tmp_path, engine, log)
    await handler.handle(FakeMessage(JFK.read_bytes(), log, headers={"language": "es"}))  # type: ignore[arg-type]
    error = events.events[-1].error
    assert error is not None and error.code == "unsupported" and "English-only" in error.message
    assert engine.calls == 0
    for headers in ({"language": "en"}, {"task": "translate"}):
        await handler.handle(FakeMessage(JFK.read_bytes(), log, headers=headers))  # type: ignore[arg-type]
        assert events.events[-1].event == "job.succeeded"


async def test_a_job_whose_channel_closed_while_it_ran_publishes_no_result(
    tmp_path: Path,
) -> None:
    """The broker gave the job to another daemon: no final event, no ack, no requeue."""
    log: list[str] = []
    handler, _events = _handler(tmp_path, FakeEngine(), log)
    message = FakeMessage(JFK.read_bytes(), log, channel_open=False)
    await handler.handle(message)  # type: ignore[arg-type]
    assert log == ["job.started"]
    assert handler.counts["abandoned"] == 1 and handler.counts["succeeded"] == 0


def _part_message(
    tmp_path: Path, log: list[str], index: int, blob: str = "missing.wav"
) -> FakeMessage:
    from stt_daemon.common.protocol import AudioRef, JobMessage, PartInfo

    ref = AudioRef(url=(tmp_path / "b" / blob).as_uri(), sha256="0" * 64, size=10)
    job = JobMessage(
        job_id="rec-1", audio=ref, part=PartInfo(index=index, count=3, offset=60.0 * index)
    )
    return FakeMessage(
        job.model_dump_json().encode(), log, content_type="application/json", message_id="rec-1#1"
    )


async def test_a_failing_part_fails_its_recording_and_stops_the_others(tmp_path: Path) -> None:
    from stt_daemon.fanbook import stem
    from stt_daemon.fanout import FanOut

    log: list[str] = []
    events = FakeEvents(log)
    blobs = BlobStore((tmp_path / "b").as_uri())
    fan = FanOut(blobs, None, split_seconds=180, part_seconds=60, publish_timeout=5)  # type: ignore[arg-type]
    manifest = '{"job_id":"rec-1","duration":180,"language":"en","language_probability":null,'
    manifest += '"parts":[[0,60],[60,60],[120,60]]}'
    (blobs.root / f"{stem('rec-1')}.json").write_text(manifest)
    config = DaemonSettings(data_dir=tmp_path, retry_backoff=0)
    engine = FakeEngine()
    handler = JobHandler(config, {"tiny.en": engine}, blobs, events, fanout=fan)  # type: ignore[arg-type]

    await handler.handle(_part_message(tmp_path, log, 1))  # type: ignore[arg-type]
    [failed] = events.events
    assert (failed.event.value, failed.job_id) == ("job.failed", "rec-1")
    assert failed.error is not None and failed.error.code.value == "blob_missing"
    assert failed.error.message.startswith("part 2 of 3 (from 60.0 s): ")
    assert log[-1] == "reject(requeue=False)"  # dead-lettered, like any failed job
    assert not fan.is_active("rec-1")
    # The recording's other parts now skip without work or events.
    log.clear()
    await handler.handle(_part_message(tmp_path, log, 2))  # type: ignore[arg-type]
    assert log == ["ack"] and engine.calls == 0 and len(events.events) == 1


class FakeHandback:
    """Records the copies a stopping daemon puts back, then acks like the real one."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.attempts: list[int] = []

    async def give_back(self, message: FakeMessage, attempts: int) -> None:
        self.attempts.append(attempts)
        self.log.append(f"republish(attempts={attempts})")
        await message.ack()


def _silence_wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0" * int(seconds * 16000))
    return buffer.getvalue()


async def test_a_stopping_daemon_hands_the_job_back_unharmed_and_the_next_resumes(
    tmp_path: Path,
) -> None:
    body = _silence_wav(100)
    log: list[str] = []
    blobs = BlobStore((tmp_path / "b").as_uri())
    config = DaemonSettings(data_dir=tmp_path, progress_interval=0, checkpoint_seconds=0)
    events = FakeEvents(log)
    handback = FakeHandback(log)
    engine = StandInEngine("tiny.en", rtf=0.01)  # 0.3 s a window
    handler = JobHandler(config, {"tiny.en": engine}, blobs, events, handback=handback)  # type: ignore[arg-type]
    task = asyncio.create_task(handler.handle(FakeMessage(body, log, content_type="audio/wav")))  # type: ignore[arg-type]
    for _ in range(500):  # the first window is done once progress is out
        if "job.progress" in log:
            break
        await asyncio.sleep(0.01)
    handler.stop(grace=0)
    await asyncio.wait_for(task, 5)
    assert log[-3:] == ["job.requeued", "republish(attempts=0)", "ack"]
    assert handback.attempts == [0]  # the interrupted attempt is not counted
    requeued = next(e for e in events.events if e.event == "job.requeued")
    assert requeued.progress == pytest.approx(0.3)
    assert handler.counts["handed_back"] == 1 and handler.counts["cancelled"] == 0

    # The next daemon gets the copy: it starts at the checkpoint, as attempt 1 again.
    log2: list[str] = []
    events2 = FakeEvents(log2)
    handler2 = JobHandler(config, {"tiny.en": engine}, blobs, events2)  # type: ignore[arg-type]
    copy = FakeMessage(body, log2, content_type="audio/wav", headers={"x-stt-attempts": 0})
    await handler2.handle(copy)  # type: ignore[arg-type]
    started, final = events2.events[0], events2.events[-1]
    assert started.event == "job.started" and started.progress == pytest.approx(0.3)
    assert started.attempt == 1
    assert final.result is not None
    assert [s.start for s in final.result.segments] == [0, 30, 60, 90]
    assert not list((tmp_path / "b").glob("ckpt-*"))  # settled: the checkpoint is gone
