"""diarize=speakers in the daemon: loading the speaker model, refusing, labelling, split parts.

The job handler runs with a fake engine and a fake diarizer (the real model is only
loaded to check that it loads); the gateway's up-front refusal with a fake fleet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi import HTTPException
from structlog.testing import capture_logs

from gateway.config import GatewaySettings
from gateway.fleet import Fleet, Seen
from gateway.services import Services
from stack import JFK
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import (
    DaemonAnnouncement,
    ErrorCode,
    JobEvent,
    JobMessage,
    JobOptions,
    PartInfo,
    Segment,
    SpeakerTurn,
    TranscriptResult,
    Word,
)
from stt_daemon.common.topology import Names
from stt_daemon.config import DaemonSettings
from stt_daemon.control import Cancellations, ControlPlane
from stt_daemon.fanbook import Manifest, stem
from stt_daemon.fanout import FanOut
from stt_daemon.handler import JobHandler
from stt_daemon.metrics import DaemonMetrics
from stt_daemon.settling import PermanentError
from stt_daemon.speakers.diarizer import Diarizer, VoicePrints
from stt_daemon.speakers.model import default_model_dir
from stt_daemon.speakers.step import (
    NO_MODEL,
    TURNED_OFF,
    SpeakerStep,
    load_speakers,
    transcription_options,
)


@dataclass
class FakeMessage:
    """The parts of an aio-pika delivery the handler uses (as in test_handler.py)."""

    body: bytes
    log: list[str]
    content_type: str | None = "audio/flac"
    message_id: str | None = "job-1"
    headers: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    correlation_id: str | None = None
    routing_key: str | None = "tiny.en"
    user_id: str | None = None

    @property
    def channel(self) -> Any:
        return SimpleNamespace(is_closed=False)

    async def ack(self) -> None:
        self.log.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.log.append(f"nack(requeue={requeue})")

    async def reject(self, requeue: bool = False) -> None:
        self.log.append(f"reject(requeue={requeue})")


class FakeEvents:
    """Records what would have been published."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.events: list[JobEvent] = []

    async def publish(self, event: JobEvent) -> None:
        self.events.append(event)
        self.log.append(event.event.value)


class FakeEngine:
    """Answers at once with one segment, with word times when asked; keeps the options."""

    name = "tiny.en"
    multilingual = False

    def __init__(self) -> None:
        self.options: list[JobOptions] = []

    @property
    def calls(self) -> int:
        return len(self.options)

    def transcribe(self, audio: Any, options: JobOptions, *args: Any, **kwargs: Any) -> Any:
        self.options.append(options)
        words = [Word(start=0.0, end=0.5, word=" fake", probability=0.9)]
        segment = Segment(
            id=0,
            start=0.0,
            end=1.0,
            text=" fake",
            words=words if options.word_timestamps else None,
        )
        return TranscriptResult(
            text="fake",
            language="en",
            duration=audio.samples / 16000,
            model=options.model,
            segments=[segment],
        )


class FakeDiarizer:
    """Two windows a recording (or part), everyone is SPEAKER_00; remembers its calls."""

    def __init__(self) -> None:
        self.offsets: list[float] = []
        self.labelled: list[list[VoicePrints]] = []

    def voiceprints(self, audio: Any, segments: Sequence[Segment], offset: float = 0.0) -> Any:
        self.offsets.append(offset)
        windows = [(offset + 0.0, offset + 1.5), (offset + 0.75, offset + 2.25)]
        return VoicePrints(windows, np.full((2, 4), 0.5, dtype=np.float32))

    def label(
        self, segments: list[Segment], prints: Sequence[VoicePrints], options: JobOptions
    ) -> tuple[list[Segment], list[SpeakerTurn]]:
        self.labelled.append(list(prints))
        labelled = [
            s.model_copy(
                update={
                    "speaker": "SPEAKER_00",
                    "words": [
                        w.model_copy(update={"speaker": "SPEAKER_00"}) for w in s.words or []
                    ],
                }
            )
            for s in segments
        ]
        turn = SpeakerTurn(start=0.1234567, end=1.0000001, speaker="SPEAKER_00")
        return labelled, [turn]


def _handler(
    tmp_path: Path,
    engine: FakeEngine,
    log: list[str],
    step: SpeakerStep,
    fanout: FanOut | None = None,
) -> tuple[JobHandler, FakeEvents]:
    events = FakeEvents(log)
    config = DaemonSettings(data_dir=tmp_path, retry_backoff=0)
    blobs = BlobStore((tmp_path / "b").as_uri())
    engines = {"tiny.en": engine}
    handler = JobHandler(config, engines, blobs, events, fanout=fanout, speakers=step)  # type: ignore[arg-type]
    return handler, events


def _diarizing(diarizer: FakeDiarizer) -> SpeakerStep:
    return SpeakerStep(lambda: diarizer)  # type: ignore[arg-type,return-value]


def _speakers_job(log: list[str], **options: str) -> FakeMessage:
    headers = {"diarize": "speakers", **options}
    return FakeMessage(JFK.read_bytes(), log, headers=headers)


def _metric(handler: JobHandler, name: str, labels: dict[str, str] | None = None) -> float:
    return handler.metrics.registry.get_sample_value(name, labels or {}) or 0.0


# --- loading -------------------------------------------------------------------------


def test_a_daemon_without_the_model_says_so_at_start_and_refuses_only_speakers(
    tmp_path: Path,
) -> None:
    with capture_logs() as logs:
        step = load_speakers(DaemonSettings(speaker_model_dir=tmp_path))
    assert not step.available and step.unavailable == NO_MODEL
    [line] = logs
    assert (line["event"], line["log_level"]) == ("speakers.model_missing", "error")
    assert str(tmp_path) in line["error"] and "prepare-speaker-model" in line["error"]
    # Users are not told the daemon's paths.
    assert str(tmp_path) not in NO_MODEL


def test_a_changed_model_is_refused_too(tmp_path: Path) -> None:
    source = default_model_dir()
    for name in ("campplus.json", "campplus.onnx"):
        data = (source / name).read_bytes()
        (tmp_path / name).write_bytes(data if name.endswith(".json") else data[:-1] + b"\0")
    with capture_logs() as logs:
        step = load_speakers(DaemonSettings(speaker_model_dir=tmp_path))
    assert not step.available
    assert [line["event"] for line in logs] == ["speakers.model_changed"]


def test_diarization_can_be_turned_off() -> None:
    step = load_speakers(DaemonSettings(diarization=False))
    assert not step.available and step.unavailable == TURNED_OFF


def test_the_prepared_model_is_checked_at_start_and_loaded_once_when_needed() -> None:
    with capture_logs() as logs:
        step = load_speakers(DaemonSettings(compute_nice=3))
    assert step.available and step.nice == 3, logs
    [line] = logs
    assert line["event"] == "speakers.ready" and len(line["sha256"]) == 12
    assert step.rss_bytes is None  # onnxruntime has not loaded it: no job needed it yet
    with capture_logs() as logs:
        diarizer = step.diarizer()
    assert isinstance(diarizer, Diarizer) and step.diarizer() is diarizer
    assert [line["event"] for line in logs] == ["speakers.loaded"]
    assert step.rss_bytes is not None


def test_a_model_onnxruntime_refuses_later_refuses_every_later_job() -> None:
    def broken() -> Diarizer:
        raise RuntimeError("onnxruntime: invalid model")

    step = SpeakerStep(broken)
    for _ in range(2):
        with pytest.raises(PermanentError) as refused:
            step.diarizer()
        assert refused.value.code is ErrorCode.UNSUPPORTED
    assert not step.available and step.unavailable == NO_MODEL


def test_a_step_is_a_diarizer_or_a_reason() -> None:
    assert not SpeakerStep.off("no").available
    with pytest.raises(ValueError, match="not both"):
        SpeakerStep(None)


def test_speakers_need_word_times() -> None:
    assert transcription_options(JobOptions(diarize="speakers")).word_timestamps  # type: ignore[arg-type]
    plain = JobOptions()
    assert transcription_options(plain) is plain


# --- the job path ----------------------------------------------------------------------


async def test_a_daemon_that_cannot_diarize_fails_such_jobs_at_once_with_a_reason(
    tmp_path: Path,
) -> None:
    log: list[str] = []
    engine = FakeEngine()
    handler, events = _handler(tmp_path, engine, log, SpeakerStep.off(TURNED_OFF))
    await handler.handle(_speakers_job(log))  # type: ignore[arg-type]
    assert log == ["job.started", "job.failed", "reject(requeue=False)"]
    error = events.events[-1].error
    assert error is not None and (error.code, error.message) == ("unsupported", TURNED_OFF)
    assert engine.calls == 0  # not decoded, not transcribed
    assert _metric(handler, "stt_daemon_diarization_jobs_total", {"outcome": "refused"}) == 1
    assert _metric(handler, "stt_daemon_diarization_available") == 0
    # Everything else is served as before.
    log.clear()
    await handler.handle(FakeMessage(JFK.read_bytes(), log))  # type: ignore[arg-type]
    assert log == ["job.started", "job.succeeded", "ack"]


async def test_a_whole_recording_gets_speakers_turns_and_no_voice_prints(tmp_path: Path) -> None:
    log: list[str] = []
    engine, diarizer = FakeEngine(), FakeDiarizer()
    handler, events = _handler(tmp_path, engine, log, _diarizing(diarizer))
    await handler.handle(_speakers_job(log, num_speakers="1"))  # type: ignore[arg-type]
    assert log == ["job.started", "job.succeeded", "ack"]
    assert engine.options[0].word_timestamps  # forced on
    result = events.events[-1].result
    assert result is not None and result.voiceprints is None
    assert [s.speaker for s in result.segments] == ["SPEAKER_00"]
    words = result.segments[0].words or []
    assert [w.speaker for w in words] == ["SPEAKER_00"]
    assert result.speaker_turns == [SpeakerTurn(start=0.123, end=1.0, speaker="SPEAKER_00")]
    assert diarizer.offsets == [0.0] and len(diarizer.labelled) == 1
    assert "voiceprints" not in events.events[-1].model_dump_json(exclude_none=True)
    assert _metric(handler, "stt_daemon_diarization_jobs_total", {"outcome": "diarized"}) == 1
    for step in ("voiceprints", "label"):
        labels = {"step": step}
        assert _metric(handler, "stt_daemon_diarization_seconds_count", labels) == 1
    assert _metric(handler, "stt_daemon_diarization_available") == 1
    # The fake loads in no time; what loading added is measured and published.
    assert handler._speakers._step.rss_bytes is not None
    loaded = handler._speakers._step.rss_bytes
    assert _metric(handler, "stt_daemon_diarization_model_bytes") == loaded


async def test_jobs_without_diarize_speakers_never_reach_the_diarizer(tmp_path: Path) -> None:
    log: list[str] = []
    engine, diarizer = FakeEngine(), FakeDiarizer()
    handler, events = _handler(tmp_path, engine, log, _diarizing(diarizer))
    await handler.handle(FakeMessage(JFK.read_bytes(), log))  # type: ignore[arg-type]
    result = events.events[-1].result
    assert result is not None and result.speaker_turns is None
    assert not engine.options[0].word_timestamps
    assert diarizer.offsets == [] and diarizer.labelled == []


def _part(tmp_path: Path, log: list[str], index: int, offset: float) -> FakeMessage:
    blobs = BlobStore((tmp_path / "b").as_uri())
    ref = blobs.put(f"part-{index}.flac", JFK.read_bytes(), "audio/flac")
    job = JobMessage(
        job_id="rec-1",
        audio=ref,
        options=JobOptions(diarize="speakers", min_speakers=1),  # type: ignore[arg-type]
        part=PartInfo(index=index, count=2, offset=offset),
    )
    body = job.model_dump_json().encode()
    return FakeMessage(body, log, content_type="application/json", message_id=f"rec-1#{index}")


async def test_parts_keep_their_prints_and_the_merge_labels_the_recording_once(
    tmp_path: Path,
) -> None:
    blobs = BlobStore((tmp_path / "b").as_uri())
    fan = FanOut(blobs, None, split_seconds=20, part_seconds=11, publish_timeout=5)  # type: ignore[arg-type]
    manifest = Manifest(
        job_id="rec-1", duration=22.0, language="en", language_probability=None,
        parts=[(0.0, 11.0), (11.0, 11.0)],
    )  # fmt: skip
    (blobs.root / f"{stem('rec-1')}.json").write_text(manifest.model_dump_json())
    log: list[str] = []
    diarizer = FakeDiarizer()
    handler, events = _handler(tmp_path, FakeEngine(), log, _diarizing(diarizer), fan)

    await handler.handle(_part(tmp_path, log, 1, 11.0))  # type: ignore[arg-type]
    assert diarizer.labelled == []  # the first part to finish only keeps its prints
    [stored] = blobs.root.glob("fan-*-1.result.json")
    kept = TranscriptResult.model_validate_json(stored.read_bytes())
    assert kept.voiceprints is not None and kept.voiceprints.windows[0] == (11.0, 12.5)

    await handler.handle(_part(tmp_path, log, 0, 0.0))  # type: ignore[arg-type]
    assert diarizer.offsets == [11.0, 0.0]
    [prints] = diarizer.labelled  # once, with both parts' prints
    assert sorted(p.windows[0][0] for p in prints) == [0.0, 11.0]
    final = events.events[-1]
    assert final.event.value == "job.succeeded" and final.result is not None
    assert final.result.voiceprints is None and final.result.speaker_turns is not None
    assert {s.speaker for s in final.result.segments} == {"SPEAKER_00"}
    assert not fan.is_active("rec-1")


# --- announcements and the gateway's refusal ---------------------------------------------


class Exchange:
    def __init__(self) -> None:
        self.bodies: list[DaemonAnnouncement] = []

    async def publish(self, message: Any, routing_key: str) -> None:
        self.bodies.append(DaemonAnnouncement.model_validate_json(message.body))


@pytest.mark.parametrize("available", [True, False])
async def test_daemons_announce_whether_they_diarize(available: bool) -> None:
    step = _diarizing(FakeDiarizer()) if available else SpeakerStep.off("no")
    control = ControlPlane(DaemonSettings(), {}, lambda: 0, Cancellations(), step)
    control._exchange = exchange = Exchange()  # type: ignore[assignment]
    await control.announce()
    assert exchange.bodies[0].speakers is available


def _services(*speakers: bool) -> Services:
    fleet = Fleet(Names())
    for index, can in enumerate(speakers):
        announcement = DaemonAnnouncement(
            worker=f"d{index}", models=["tiny.en"], prefetch=1, interval=5, speakers=can
        )
        fleet._seen[announcement.worker] = Seen(announcement, time.monotonic())
    return Services(GatewaySettings(), None, None, None, fleet)  # type: ignore[arg-type]


def test_the_gateway_refuses_speakers_when_no_daemon_of_the_model_diarizes() -> None:
    fields = {"diarize": "speakers", "model": "tiny.en"}
    with pytest.raises(HTTPException) as refused:
        _services(False, False).job_options(fields)
    assert refused.value.status_code == 422
    assert "no daemon serving model 'tiny.en' can tell speakers apart" in str(refused.value.detail)
    assert _services(False, True).job_options(fields).diarize == "speakers"
    # No daemon heard yet: the job waits in its queue for one, as any job does.
    assert _services().job_options(fields).diarize == "speakers"
    assert _services(False).job_options({"model": "tiny.en"}).diarize == "none"


def test_the_process_memory_is_in_the_daemons_metrics() -> None:
    metrics = DaemonMetrics()
    assert metrics.registry.get_sample_value("process_resident_memory_bytes")


async def test_a_model_refused_at_first_use_is_announced_as_gone() -> None:
    def broken() -> Diarizer:
        raise RuntimeError("onnxruntime: invalid model")

    step = SpeakerStep(broken)
    control = ControlPlane(DaemonSettings(), {}, lambda: 0, Cancellations(), step)
    control._exchange = exchange = Exchange()  # type: ignore[assignment]
    await control.announce()
    with pytest.raises(PermanentError):
        step.diarizer()
    await control.announce()
    assert [body.speakers for body in exchange.bodies] == [True, False]
