"""Dead letters keep their audio, marked; the sweep ends that; ``stt-dead`` replays and purges.

Fakes only: a real blob store in a temporary directory, fake deliveries and exchanges.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stt_daemon import deadletter_cli, deadletters
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import (
    AudioRef,
    ErrorCode,
    ErrorInfo,
    EventType,
    InboundJob,
    JobEvent,
    JobMessage,
    JobOptions,
)
from stt_daemon.deadletters import describe, mark_path, read_mark, replay, sweep
from stt_daemon.quarantine import ATTEMPTS_HEADER
from stt_daemon.settling import Settler

AUDIO = b"RIFF-not-really-audio" * 100
DAY = 24 * 3600.0


@dataclass
class Delivery:
    """The parts of a delivery that settling and stt-dead use."""

    body: bytes
    message_id: str | None = "job-1"
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str | None = "tiny.en"
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    timestamp: Any = None
    type: str | None = "stt.job"
    app_id: str | None = None
    user_id: str | None = "stt-gateway"
    exchange: str = "stt.jobs"
    channel: Any = field(default_factory=lambda: SimpleNamespace(is_closed=False))
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def reject(self, requeue: bool = False) -> None:
        self.settled.append(f"reject(requeue={requeue})")


class Events:
    """An event publisher that confirms everything."""

    async def publish(self, event: JobEvent) -> None:
        pass


def claim(blobs: BlobStore, name: str, data: bytes, *, sha256: str | None = None) -> AudioRef:
    """A claim check for ``data`` stored as ``name`` (or one that lies about its sha256)."""
    ref = blobs.put(name, data, "audio/wav")
    return ref.model_copy(update={"sha256": sha256}) if sha256 else ref


def job_with(ref: AudioRef, job_id: str = "job-1") -> InboundJob:
    return InboundJob(message=JobMessage(job_id=job_id, options=JobOptions(), audio=ref))


def failed(job: InboundJob, code: ErrorCode) -> JobEvent:
    error = ErrorInfo(code=code, message="it went wrong")
    return JobEvent(event=EventType.FAILED, job_id=job.job_id, error=error)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore((tmp_path / "blobs").as_uri())


async def test_a_dead_lettered_job_keeps_its_audio_with_a_mark(blobs: BlobStore) -> None:
    ref = claim(blobs, "job-1", AUDIO)
    job = job_with(ref)
    delivery = Delivery(job.message.model_dump_json().encode())
    settler = Settler(Events(), blobs, "w", 1.0)  # type: ignore[arg-type]
    await settler.finish(delivery, job, failed(job, ErrorCode.INTERNAL), ack=False)  # type: ignore[arg-type]
    assert delivery.settled == ["reject(requeue=False)"]
    assert blobs.path_of(ref.url).read_bytes() == AUDIO
    mark = read_mark(blobs.root, "job-1")
    assert mark is not None and mark.url == ref.url and mark.sha256 == ref.sha256
    assert mark.error is not None and mark.error.code is ErrorCode.INTERNAL


async def test_an_acked_job_still_deletes_its_audio(blobs: BlobStore) -> None:
    ref = claim(blobs, "job-1", AUDIO)
    job = job_with(ref)
    delivery = Delivery(job.message.model_dump_json().encode())
    final = JobEvent(event=EventType.CANCELLED, job_id="job-1")
    await Settler(Events(), blobs, "w", 1.0).finish(delivery, job, final, ack=True)  # type: ignore[arg-type]
    assert delivery.settled == ["ack"] and not blobs.path_of(ref.url).exists()
    assert read_mark(blobs.root, "job-1") is None


@pytest.mark.parametrize("ack", [False, True])
async def test_a_claim_check_that_names_another_jobs_file_never_deletes_it(
    blobs: BlobStore, ack: bool
) -> None:
    victim = claim(blobs, "victim-job", AUDIO)
    # An attacker names the victim's file with a sha256 of its own making.
    forged = victim.model_copy(update={"sha256": hashlib.sha256(b"other").hexdigest()})
    job = job_with(forged, "attacker-job")
    delivery = Delivery(job.message.model_dump_json().encode(), message_id="attacker-job")
    settler = Settler(Events(), blobs, "w", 1.0)  # type: ignore[arg-type]
    final = failed(job, ErrorCode.CHECKSUM_MISMATCH)
    await settler.finish(delivery, job, final, ack=ack)  # type: ignore[arg-type]
    await settler.ack_quietly(Delivery(b"{}"), job)  # type: ignore[arg-type]  # a skipped part
    assert blobs.path_of(victim.url).read_bytes() == AUDIO
    if not ack:
        mark = read_mark(blobs.root, "attacker-job")
        assert mark is not None and mark.url is None  # nothing kept: not its own
        assert sweep(blobs, retention=0, now=time.time() + 10) == 1
        assert blobs.path_of(victim.url).read_bytes() == AUDIO


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_the_sweep_deletes_kept_audio_after_the_retention_only(blobs: BlobStore) -> None:
    old, recent, replaced = (claim(blobs, name, AUDIO + name.encode()) for name in "abc")
    for name, ref in zip("abc", (old, recent, replaced), strict=True):
        deadletters.keep(blobs, name, job_with(ref, name), None)
    _age(mark_path(blobs.root, "a"), 8 * DAY)
    _age(mark_path(blobs.root, "b"), 6 * DAY)
    _age(mark_path(blobs.root, "c"), 8 * DAY)
    # Another file under c's name since (a producer reusing names): not the marked audio.
    blobs.put("c", b"a new recording", "audio/wav")
    queued = claim(blobs, "queued-job", AUDIO)  # never dead-lettered: no mark
    _age(blobs.path_of(queued.url), 30 * DAY)
    assert sweep(blobs, retention=7 * DAY) == 2
    assert not blobs.path_of(old.url).exists() and not mark_path(blobs.root, "a").exists()
    assert blobs.path_of(recent.url).exists() and mark_path(blobs.root, "b").exists()
    assert blobs.path_of(replaced.url).read_bytes() == b"a new recording"
    assert blobs.path_of(queued.url).exists()


def test_a_dead_letter_is_described_from_its_mark_and_its_death(blobs: BlobStore) -> None:
    ref = claim(blobs, "job-1", AUDIO)
    job = job_with(ref)
    died = datetime.now(UTC) - timedelta(hours=3)
    death = {"x-death": [{"reason": "rejected", "queue": "stt.jobs.tiny.en", "time": died}]}
    delivery = Delivery(job.message.model_dump_json().encode(), headers=death)
    bare = describe(delivery, blobs.root)  # type: ignore[arg-type]
    assert (bare.job_id, bare.model, bare.audio) == ("job-1", "tiny.en", "yes")
    assert bare.reason.startswith("rejected") and bare.died_at == died
    deadletters.keep(blobs, "job-1", job, ErrorInfo(code=ErrorCode.BAD_AUDIO, message="noise"))
    assert describe(delivery, blobs.root).reason == "bad_audio: noise"  # type: ignore[arg-type]
    blobs.delete(ref.url)
    assert describe(delivery, blobs.root).audio == "no"  # type: ignore[arg-type]
    limit = {"x-death": [{"reason": "delivery_limit", "time": died}]}
    raw = Delivery(AUDIO, "job-2", headers=limit, content_type="audio/wav")
    described = describe(raw, blobs.root)  # type: ignore[arg-type]
    assert "delivery limit" in described.reason and described.audio == "inline"
    junk = describe(Delivery(b"{not json", "job-3"), blobs.root)  # type: ignore[arg-type]
    assert (junk.job_id, junk.reason, junk.audio) == ("job-3", "bad_message", "?")


class Exchange:
    """A jobs exchange that confirms, or refuses, what it is given."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.published: list[tuple[Any, str, bool]] = []

    async def publish(self, message: Any, routing_key: str, mandatory: bool) -> None:
        if self.refuse:
            raise RuntimeError("queue full")
        self.published.append((message, routing_key, mandatory))


async def test_replay_republishes_with_attempts_reset_then_acks(blobs: BlobStore) -> None:
    job = job_with(claim(blobs, "job-1", AUDIO))
    deadletters.keep(blobs, "job-1", job, None)
    headers = {
        "x-death": [{"reason": "rejected", "count": 1}],
        "x-first-death-queue": "stt.quarantine.tiny.en",
        "x-delivery-count": 4,
        ATTEMPTS_HEADER: 3,
        "x-stt-signature": "v1=abc",
    }
    delivery = Delivery(job.message.model_dump_json().encode(), headers=headers)
    letter = describe(delivery, blobs.root)  # type: ignore[arg-type]
    refusing = Exchange(refuse=True)
    with pytest.raises(RuntimeError):
        await replay(letter, refusing, "stt-daemon", blobs.root, 5.0)  # type: ignore[arg-type]
    assert delivery.settled == [] and read_mark(blobs.root, "job-1") is not None
    jobs = Exchange()
    await replay(letter, jobs, "stt-daemon", blobs.root, 5.0)  # type: ignore[arg-type]
    ((copy, routing_key, mandatory),) = jobs.published
    assert (routing_key, mandatory) == ("tiny.en", True)
    assert copy.body == delivery.body and copy.user_id == "stt-daemon"
    assert copy.headers[ATTEMPTS_HEADER] == 0 and copy.headers["x-stt-signature"] == "v1=abc"
    assert not any(k.startswith(("x-death", "x-first-death", "x-delivery")) for k in copy.headers)
    assert delivery.settled == ["ack"]
    assert read_mark(blobs.root, "job-1") is None  # the audio is a live job's again


def test_replay_and_purge_name_what_they_act_on() -> None:
    parser = deadletter_cli.parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["replay"])
    with pytest.raises(SystemExit):
        parser.parse_args(["purge", "--all", "--job", "x"])
    args = parser.parse_args(["replay", "--job", "a", "--job", "b"])
    assert args.job == ["a", "b"] and not args.all
