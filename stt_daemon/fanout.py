"""Long recordings fanned out: split into parts, run as jobs anywhere, merged in order.

A daemon that takes a recording longer than ``STT_SPLIT_SECONDS`` cuts it at
pauses (see splitting.py), stores each part in the blob store and publishes it
to the model's job queue as a job of its own, carrying the whole recording's
``job_id`` and a :class:`PartInfo`. Any daemon takes any part. Each finished
part leaves its transcript beside the audio; the one that completes the set
merges them, timestamps shifted by each part's offset, and publishes the
recording's final event. Until then every part reports progress.

Three modules do the work: partjobs.py cuts and publishes the parts, merging.py
collects their transcripts and merges them, fanbook.py keeps the state between.

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

from aio_pika.abc import AbstractExchange

from stt_daemon.audio import SAMPLE_RATE, PcmFile
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.claims import ClaimSigner
from stt_daemon.common.protocol import InboundJob, TranscriptResult
from stt_daemon.engine import Engine
from stt_daemon.fanbook import FanBook, Manifest
from stt_daemon.merging import PartOutcome, collect
from stt_daemon.partjobs import CannotSplit, PartJobs

# The names the handler's side of fan-out (parts.py) works with, importable from here.
__all__ = ["CannotSplit", "FanOut", "Manifest", "PartOutcome"]


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
        self._split_seconds = split_seconds
        self._book = FanBook(blobs)
        self._parts = PartJobs(
            self._book,
            jobs_exchange,
            part_seconds=part_seconds,
            publish_timeout=publish_timeout,
            # Parts are claim checks of this daemon's making: signed, and published as
            # the daemon on behalf of the recording's producer.
            signer=signer or ClaimSigner(None),
            daemon_user=daemon_user,
        )

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
        return await self._parts.split(
            job, audio, engine, reply_to=reply_to, correlation_id=correlation_id
        )

    # -- the daemons that run parts -------------------------------------------

    def is_active(self, job_id: str) -> bool:
        """False once the recording was merged, failed or cancelled (its parts then skip)."""
        return self._book.is_active(job_id)

    def record(self, job: InboundJob, result: TranscriptResult) -> PartOutcome:
        """Keep a part's transcript; merge when it completes the set (blocking)."""
        return collect(self._book, job, result)

    def settle(self, job_id: str) -> None:
        """Forget a recording whose final event is out: parts still queued will skip."""
        self._book.settle(job_id)
