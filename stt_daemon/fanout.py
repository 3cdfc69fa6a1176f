"""Long recordings fanned out: split into parts, run as jobs anywhere, merged in order.

A daemon that takes a recording longer than ``STT_SPLIT_SECONDS`` cuts it at
pauses (see splitting.py), stores each part in the blob store and publishes it
to the model's job queue as a job of its own, carrying the whole recording's
``job_id`` and a :class:`PartInfo`. Any daemon takes any part. Each finished
part leaves its transcript beside the audio; the one that completes the set
merges them, timestamps shifted by each part's offset, and publishes the
recording's final event. Until then every part reports progress.

The state lives in the blob store, which every daemon shares already (it holds
the uploads), in files named after a hash of the job id:

- ``fan-<h>.json``: the manifest, written before any part is published. Its
  absence means the job is settled (merged, failed or cancelled): parts still
  queued then skip themselves.
- ``fan-<h>-<i>.result.json``: part ``i``'s transcript.
- ``fan-<h>.merge``: which part merges, claimed by the first to see all results.
  Only that part's delivery merges again if it crashes before its ack, so the
  final event is published once in the normal course, at least once always.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import secrets
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog
from aio_pika.abc import AbstractExchange
from aio_pika.exceptions import DeliveryError
from pamqp.commands import Basic
from pydantic import BaseModel

from stt_daemon.audio import SAMPLE_RATE, Audio, PcmFile
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.claims import ClaimSigner
from stt_daemon.common.protocol import (
    InboundJob,
    JobMessage,
    PartInfo,
    Segment,
    TranscriptResult,
    VoicePrintsWire,
    Word,
    encode_job,
)
from stt_daemon.engine import Engine
from stt_daemon.provenance import copy_headers
from stt_daemon.splitting import Span, pauses, plan_parts

log = structlog.get_logger("stt_daemon.fanout")


class CannotSplit(Exception):
    """The job queue refused a part (it is full): the recording runs whole instead."""


class Manifest(BaseModel):
    """What the merge needs to know about a split recording."""

    job_id: str
    duration: float
    language: str | None
    language_probability: float | None
    #: (offset, length) of each part, seconds, in order.
    parts: list[tuple[float, float]]


@dataclass(frozen=True)
class PartOutcome:
    """What a finished part leads to: the merged transcript, or progress so far."""

    merged: TranscriptResult | None = None
    #: With the merged transcript: the voice prints of every part that has them, for
    #: labelling the whole recording at once (``diarize=speakers``).
    voiceprints: list[VoicePrintsWire] = field(default_factory=list)
    progress: float | None = None
    #: The recording was settled by another part already: report nothing.
    settled: bool = False


def merge(manifest: Manifest, results: list[TranscriptResult]) -> TranscriptResult:
    """One transcript from the parts', in order, with timestamps on the whole recording's clock."""
    segments: list[Segment] = []
    for (offset, _length), part in zip(manifest.parts, results, strict=True):
        for seg in part.segments:
            words = None
            if seg.words is not None:
                words = [
                    Word(
                        start=round(w.start + offset, 3),
                        end=round(w.end + offset, 3),
                        word=w.word,
                        probability=w.probability,
                    )
                    for w in seg.words
                ]
            segments.append(
                seg.model_copy(
                    update={
                        "id": len(segments),
                        "start": round(seg.start + offset, 3),
                        "end": round(seg.end + offset, 3),
                        "words": words,
                    }
                )
            )
    # Each part's warnings are on its own clock, as its segments were.
    warnings = [
        warning.model_copy(
            update={
                "start": None if warning.start is None else round(warning.start + offset, 2),
                "end": None if warning.end is None else round(warning.end + offset, 2),
            }
        )
        for (offset, _length), part in zip(manifest.parts, results, strict=True)
        for warning in part.warnings
    ]
    first = results[0]
    return TranscriptResult(
        warnings=warnings,
        text=" ".join(text for r in results if (text := r.text.strip())),
        language=manifest.language or first.language,
        language_probability=manifest.language_probability,
        duration=manifest.duration,
        model=first.model,
        task=first.task,
        segments=segments,
    )


def wav_bytes(audio: Audio) -> bytes:
    """16-bit PCM WAV of a stretch of decoded audio (lossless: it was 16-bit before decoding)."""
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    # wave leaves a file object it did not open itself open on close.
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


class FanOut:
    """Splits long recordings into part jobs and merges the parts' transcripts."""

    def __init__(
        self,
        blobs: BlobStore,
        jobs_exchange: AbstractExchange,
        *,
        split_seconds: float,
        part_seconds: float,
        publish_timeout: float,
        signer: ClaimSigner | None = None,
        daemon_user: str | None = None,
    ) -> None:
        self._blobs = blobs
        self._exchange = jobs_exchange
        # Parts are claim checks of this daemon's making: signed, and published as
        # the daemon on behalf of the recording's producer.
        self._signer = signer or ClaimSigner(None)
        self._user = daemon_user
        self._split_seconds = split_seconds
        self._part_samples = int(part_seconds * SAMPLE_RATE)
        self._timeout = publish_timeout

    def wants(self, job: InboundJob, audio: PcmFile) -> bool:
        """True for a whole mono recording longer than ``STT_SPLIT_SECONDS`` that may be split."""
        return (
            self._split_seconds > 0
            and job.message.part is None
            and job.message.options.split
            and audio.channels == 1  # per-channel speakers stay together
            and audio.samples > self._split_seconds * SAMPLE_RATE
        )

    # -- the splitting daemon -------------------------------------------------

    async def split(
        self,
        job: InboundJob,
        audio: PcmFile,
        engine: Engine,
        *,
        reply_to: str | None,
        correlation_id: str | None,
    ) -> int:
        """Store and publish the parts; return how many. CannotSplit: the queue is full."""
        parts, messages = await asyncio.to_thread(self._prepare, job, audio, engine)
        try:
            for index, message in enumerate(messages):
                await self._publish(
                    message, job.message.options.model, reply_to, correlation_id, job.producer
                )
                log.debug("part.published", part=index, of=len(parts))
        except CannotSplit:
            await asyncio.to_thread(self.settle, job.job_id)
            for message in messages:
                if message.audio is not None:
                    self._blobs.delete(message.audio.url)
            raise
        return len(parts)

    def _prepare(
        self, job: InboundJob, audio: PcmFile, engine: Engine
    ) -> tuple[list[Span], list[JobMessage]]:
        """Plan the cuts, fix the language, write the parts and the manifest (blocking)."""
        options = job.message.options
        parts = plan_parts(audio.samples, pauses(audio), self._part_samples)
        language, probability = options.language, None
        if language is None:
            # Every part must speak the same language: detect it once, on the
            # start of the recording, as an unsplit transcription would.
            language, probability = engine.detect_language(audio)
        part_options = options.model_copy(update={"language": language})
        stem = self._stem(job.job_id)
        token = secrets.token_hex(4)  # a re-split never reuses a part's audio file
        messages = []
        for index, span in enumerate(parts):
            ref = self._blobs.put(
                f"{stem}-{index}-{token}.wav",
                wav_bytes(audio.read(span.start, span.end)),
                "audio/wav",
            )
            messages.append(
                job.message.model_copy(
                    update={
                        "options": part_options,
                        "audio": ref,
                        "part": PartInfo(index=index, count=len(parts), offset=span.offset),
                    }
                )
            )
        manifest = Manifest(
            job_id=job.job_id,
            duration=audio.duration,
            language=language,
            language_probability=probability,
            parts=[(span.offset, span.seconds) for span in parts],
        )
        _write_atomically(self._path(stem, ".json"), manifest.model_dump_json().encode())
        return parts, messages

    async def _publish(
        self,
        job: JobMessage,
        model: str,
        reply_to: str | None,
        correlation_id: str | None,
        producer: str | None,
    ) -> None:
        assert job.part is not None
        message = encode_job(
            job,
            user_id=self._user,
            sign=self._signer.sign,
            # The part is this daemon's copy: it names the recording's producer.
            headers=copy_headers({}, producer or "") if self._user is not None else None,
            # A part that fails answers the caller of the whole recording, as its merge does.
            reply_to=reply_to,
            correlation_id=correlation_id,
        )
        try:
            async with asyncio.timeout(self._timeout):
                await self._exchange.publish(message, routing_key=model, mandatory=True)
        except DeliveryError as exc:
            # Only a nack means a full queue; a return (PublishError: no queue for the
            # model) and anything else are transient errors for the handler to retry.
            if isinstance(exc.frame, Basic.Nack):
                raise CannotSplit(f"the job queue of {model!r} refused a part") from None
            raise

    # -- the daemons that run parts -------------------------------------------

    def is_active(self, job_id: str) -> bool:
        """False once the recording was merged, failed or cancelled (its parts then skip)."""
        return self._path(self._stem(job_id), ".json").exists()

    def record(self, job: InboundJob, result: TranscriptResult) -> PartOutcome:
        """Keep a part's transcript; merge when it completes the set (blocking)."""
        part = job.message.part
        assert part is not None
        stem = self._stem(job.job_id)
        mine = self._path(stem, f"-{part.index}.result.json")
        _write_atomically(mine, result.model_dump_json().encode())
        manifest = self._manifest(stem)
        if manifest is None:
            mine.unlink(missing_ok=True)  # settled meanwhile: nothing will read it
            return PartOutcome(settled=True)
        done = [i for i in range(len(manifest.parts)) if self._result_path(stem, i).exists()]
        if len(done) < len(manifest.parts):
            covered = sum(manifest.parts[i][1] for i in done)
            return PartOutcome(progress=min(covered / manifest.duration, 0.9999))
        if not self._claim_merge(stem, part.index):
            return PartOutcome(settled=True)  # another part merges
        results = [
            TranscriptResult.model_validate_json(self._result_path(stem, i).read_bytes())
            for i in range(len(manifest.parts))
        ]
        # The merge drops the parts' voice prints (and never has speakers): the caller
        # labels the merged transcript from all of them.
        prints = [r.voiceprints for r in results if r.voiceprints is not None]
        return PartOutcome(merged=merge(manifest, results), voiceprints=prints)

    def settle(self, job_id: str) -> None:
        """Forget a recording whose final event is out: parts still queued will skip."""
        stem = self._stem(job_id)
        # The manifest first: from this moment on, parts know the job is settled.
        self._path(stem, ".json").unlink(missing_ok=True)
        for path in self._blobs.root.glob(f"{stem}-*.result.json"):
            path.unlink(missing_ok=True)
        self._path(stem, ".merge").unlink(missing_ok=True)

    # -- files ------------------------------------------------------------------

    @staticmethod
    def _stem(job_id: str) -> str:
        # Job ids come from producers: never let them shape a file name.
        return "fan-" + hashlib.sha256(job_id.encode()).hexdigest()[:32]

    def _path(self, stem: str, suffix: str) -> Path:
        return self._blobs.root / f"{stem}{suffix}"

    def _result_path(self, stem: str, index: int) -> Path:
        return self._path(stem, f"-{index}.result.json")

    def _manifest(self, stem: str) -> Manifest | None:
        try:
            return Manifest.model_validate_json(self._path(stem, ".json").read_bytes())
        except FileNotFoundError:
            return None

    def _claim_merge(self, stem: str, index: int) -> bool:
        """True for the part that merges: the first to claim, or that part again."""
        path = self._path(stem, ".merge")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                return path.read_text().strip() == str(index)
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(str(index))
        return True


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the whole file or none of it (rename is atomic on one filesystem)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    tmp.replace(path)
