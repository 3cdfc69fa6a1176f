"""Fan-out bookkeeping with a real blob directory and a fake exchange."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aio_pika
import numpy as np
import pytest
from aio_pika.exceptions import DeliveryError
from pamqp.commands import Basic

from stack import JFK
from stt_daemon.audio import SAMPLE_RATE, PcmFile, decode
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import (
    InboundJob,
    JobMessage,
    JobOptions,
    PartInfo,
    ResultWarning,
    Segment,
    TranscriptResult,
    Word,
)
from stt_daemon.control import Cancellations
from stt_daemon.fanbook import Manifest, stem
from stt_daemon.fanout import FanOut
from stt_daemon.merging import merge
from stt_daemon.partjobs import CannotSplit, wav_bytes


class Exchange:
    """Records publishes; nacks from the ``nack_from``-th publish on."""

    def __init__(self, nack_from: int | None = None) -> None:
        self.published: list[tuple[aio_pika.Message, str]] = []
        self.nack_from = nack_from

    async def publish(self, message: aio_pika.Message, routing_key: str, mandatory: bool) -> None:
        assert mandatory  # a part must never vanish unrouted
        if self.nack_from is not None and len(self.published) >= self.nack_from:
            raise DeliveryError(None, Basic.Nack())
        self.published.append((message, routing_key))


class Engine:
    name = "tiny.en"
    multilingual = False

    def detect_language(self, audio: Any) -> tuple[str, float]:
        return "en", 1.0


def fanout(tmp_path: Path, exchange: Exchange | None = None) -> FanOut:
    return FanOut(
        BlobStore((tmp_path / "blobs").as_uri()),
        exchange or Exchange(),  # type: ignore[arg-type]
        split_seconds=30,
        part_seconds=12,
        publish_timeout=5,
    )


def part_result(index: int, length: float) -> TranscriptResult:
    return TranscriptResult(
        text=f" part {index} ",
        language="en",
        duration=length,
        model="tiny.en",
        segments=[
            Segment(
                id=0,
                start=0.5,
                end=length - 0.5,
                text=f" part {index}",
                words=[Word(start=0.5, end=1.0, word="part", probability=0.9)],
            )
        ],
    )


def part_job(index: int, count: int, offset: float = 0.0) -> InboundJob:
    part = PartInfo(index=index, count=count, offset=offset)
    return InboundJob(message=JobMessage(job_id="rec-1", part=part))


def talk(seconds: int) -> np.ndarray:
    """jfk.flac said again and again with a second of silence between."""
    speech = decode(JFK, max_seconds=60)
    one = np.concatenate([speech, np.zeros(SAMPLE_RATE, dtype=np.float32)])
    return np.tile(one, seconds // 12 + 1)[: seconds * SAMPLE_RATE]


def test_merge_puts_parts_on_the_recordings_clock() -> None:
    manifest = Manifest(
        job_id="rec-1",
        duration=25.0,
        language="en",
        language_probability=0.9,
        parts=[(0.0, 10.0), (10.0, 8.0), (18.0, 7.0)],
    )
    merged = merge(manifest, [part_result(0, 10), part_result(1, 8), part_result(2, 7)])
    assert merged.text == "part 0 part 1 part 2"
    assert [s.id for s in merged.segments] == [0, 1, 2]
    assert [(s.start, s.end) for s in merged.segments] == [(0.5, 9.5), (10.5, 17.5), (18.5, 24.5)]
    assert [s.words[0].start for s in merged.segments if s.words] == [0.5, 10.5, 18.5]
    assert (merged.duration, merged.language_probability) == (25.0, 0.9)


def test_merge_keeps_the_parts_warnings_on_the_recordings_clock() -> None:
    manifest = Manifest(
        job_id="rec",
        duration=25.0,
        language="en",
        language_probability=0.9,
        parts=[(0.0, 10.0), (10.0, 8.0)],
    )
    second = part_result(1, 8).model_copy(
        update={
            "warnings": [
                ResultWarning(code="untranscribed_speech", message="m", start=2.0, end=5.5)
            ]
        }
    )
    merged = merge(manifest, [part_result(0, 10), second])
    assert [(w.start, w.end) for w in merged.warnings] == [(12.0, 15.5)]


def test_part_audio_is_the_decoded_audio_again(tmp_path: Path) -> None:
    audio = decode(JFK, max_seconds=60)
    path = tmp_path / "part.wav"
    path.write_bytes(wav_bytes(audio))
    assert np.array_equal(decode(path, max_seconds=60), audio)


async def test_split_publishes_bounded_parts_and_a_manifest(tmp_path: Path) -> None:
    exchange = Exchange()
    fan = fanout(tmp_path, exchange)
    job = InboundJob(message=JobMessage(job_id="rec-1", options=JobOptions(model="tiny.en")))
    audio = PcmFile.write(talk(40), tmp_path)
    assert fan.wants(job, audio)
    count = await fan.split(job, audio, Engine(), reply_to="reply-q", correlation_id="c9")  # type: ignore[arg-type]
    assert count == len(exchange.published) >= 4
    parts = [JobMessage.model_validate_json(m.body) for m, _ in exchange.published]
    assert {p.job_id for p in parts} == {"rec-1"}
    assert [p.part.index for p in parts if p.part] == list(range(count))
    assert all(p.options.language == "en" for p in parts)  # fixed for every part
    assert all(m.reply_to == "reply-q" and m.correlation_id == "c9" for m, _ in exchange.published)
    assert {key for _, key in exchange.published} == {"tiny.en"}
    lengths = [p.audio.size for p in parts if p.audio]
    assert max(lengths) <= 12 * SAMPLE_RATE * 2 + 44  # 16-bit samples plus the WAV header
    assert fan.is_active("rec-1")
    # A part is never split again, nor a job that asked not to be.
    assert not fan.wants(part_job(0, 2), audio)
    unsplit = JobMessage(job_id="rec-2", options=JobOptions(split=False))
    assert not fan.wants(InboundJob(message=unsplit), audio)


async def test_a_full_queue_leaves_nothing_behind(tmp_path: Path) -> None:
    fan = fanout(tmp_path, Exchange(nack_from=2))
    job = InboundJob(message=JobMessage(job_id="rec-1"))
    with pytest.raises(CannotSplit):
        await fan.split(
            job,
            PcmFile.write(talk(40), tmp_path),
            Engine(),  # type: ignore[arg-type]
            reply_to=None,
            correlation_id=None,
        )
    assert not fan.is_active("rec-1")  # the two parts published will skip themselves
    assert not list((tmp_path / "blobs").iterdir())


def _manifest(fan: FanOut, tmp_path: Path, lengths: list[float], job_id: str = "rec-1") -> None:
    offsets = np.cumsum([0.0, *lengths[:-1]]).tolist()
    manifest = Manifest(
        job_id=job_id,
        duration=sum(lengths),
        language="en",
        language_probability=None,
        parts=list(zip(offsets, lengths, strict=True)),
    )
    (tmp_path / "blobs" / f"{stem(job_id)}.json").write_text(manifest.model_dump_json())


def test_progress_until_the_last_part_then_one_merge(tmp_path: Path) -> None:
    fan = fanout(tmp_path)
    _manifest(fan, tmp_path, [10, 10, 20])
    first = fan.record(part_job(2, 3, 20), part_result(2, 20))
    assert first.progress == pytest.approx(0.5) and first.merged is None
    second = fan.record(part_job(0, 3), part_result(0, 10))
    assert second.progress == pytest.approx(0.75)
    last = fan.record(part_job(1, 3, 10), part_result(1, 10))
    assert last.merged is not None
    assert last.merged.text == "part 0 part 1 part 2"  # in order, whatever the finishing order
    # A duplicate of another part finishing now does not merge again...
    assert fan.record(part_job(0, 3), part_result(0, 10)).settled
    # ...but the merging part, redelivered after a crash before its ack, does.
    assert fan.record(part_job(1, 3, 10), part_result(1, 10)).merged is not None


def test_settled_recordings_take_no_more_results(tmp_path: Path) -> None:
    fan = fanout(tmp_path)
    _manifest(fan, tmp_path, [10, 10])
    fan.record(part_job(0, 2), part_result(0, 10))
    fan.settle("rec-1")
    assert not fan.is_active("rec-1")
    assert fan.record(part_job(1, 2, 10), part_result(1, 10)).settled
    assert not list((tmp_path / "blobs").glob("fan-*"))  # nothing left over


def test_file_names_never_come_from_the_job_id(tmp_path: Path) -> None:
    fan = fanout(tmp_path)
    _manifest(fan, tmp_path, [10, 10], job_id="../../etc/passwd")
    job = InboundJob(
        message=JobMessage(job_id="../../etc/passwd", part=PartInfo(index=0, count=2, offset=0))
    )
    fan.record(job, part_result(0, 10))
    files = list((tmp_path / "blobs").iterdir())
    assert len(files) == 2 and all(f.name.startswith("fan-") for f in files)
    [result] = [f for f in files if f.name.endswith(".result.json")]
    assert json.loads(result.read_text())["text"] == " part 0 "


def test_every_running_part_of_a_job_hears_its_cancellation() -> None:
    cancellations = Cancellations()
    first, second = cancellations.running("rec-1"), cancellations.running("rec-1")
    cancellations.finished("rec-1", first)
    third = cancellations.running("rec-1")
    cancellations.cancel("rec-1")
    assert second.is_set() and third.is_set() and not first.is_set()
