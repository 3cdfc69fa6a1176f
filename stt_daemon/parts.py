"""The handler's side of fan-out: split a long recording, skip settled parts, record finished ones.

fanout.py fronts the books (fanbook.py: files; partjobs.py: publishing the parts;
merging.py: the merge); this module decides what a delivery does with them and
reports it: events and acks here, the outcome counted, metered and logged once
through outcomes.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage

from stt_daemon.audio import PcmFile
from stt_daemon.common.protocol import ErrorCode, EventType, InboundJob, TranscriptResult
from stt_daemon.engine import Engine
from stt_daemon.fanout import CannotSplit, FanOut
from stt_daemon.outcomes import Outcomes
from stt_daemon.settling import PermanentError, Settler, Timings
from stt_daemon.speakers.step import Speakers

log = structlog.get_logger("stt_daemon.handler")


class PartRunner:
    """Splits recordings and runs parts for the job handler (no fan-out without a FanOut)."""

    def __init__(
        self,
        fanout: FanOut | None,
        settle: Settler,
        outcomes: Outcomes,
        speakers: Speakers,
    ) -> None:
        self._fanout = fanout
        self._speakers = speakers
        self._settle = settle
        self._outcomes = outcomes

    async def split(
        self,
        message: AbstractIncomingMessage,
        job: InboundJob,
        engine: Engine,
        audio: PcmFile,
        timings: Timings,
    ) -> bool:
        """Fan the recording out and ack it; False when it stays whole (short, or queue full)."""
        if self._fanout is None or not self._fanout.wants(job, audio):
            return False
        mark = time.monotonic()
        try:
            count = await self._fanout.split(
                job, audio, engine, reply_to=message.reply_to, correlation_id=message.correlation_id
            )
        except CannotSplit as exc:
            log.warning("job.not_split", reason=str(exc), then="transcribing it whole here")
            return False
        timings.mark("split_s", mark)
        await self._settle.ack_quietly(message, job)
        model = job.message.options.model
        fields: dict[str, Any] = {"parts": count, "model": model, **timings.marks}
        self._outcomes.record("split", model, "job.split", **fields)
        return True

    async def wanted(self, message: AbstractIncomingMessage, job: InboundJob) -> bool:
        """False (and the delivery acked) when the part's recording is settled already."""
        if self._fanout is None or await asyncio.to_thread(self._fanout.is_active, job.job_id):
            return True
        await self._settle.ack_quietly(message, job)
        log.info("part.skipped", reason="its recording was merged, failed or cancelled")
        return False

    async def done(
        self,
        message: AbstractIncomingMessage,
        job: InboundJob,
        attempt: int,
        timings: Timings,
        result: TranscriptResult,
    ) -> None:
        """Keep the part's transcript; the part that completes the set publishes the merge."""
        part = job.message.part
        assert part is not None
        if self._fanout is None:
            raise PermanentError(ErrorCode.UNSUPPORTED, "this daemon cannot merge parts")
        outcome = await asyncio.to_thread(self._fanout.record, job, result)
        if outcome.merged is not None:
            # Labelled here, once, from every part's voice prints (diarize=speakers).
            whole = await self._speakers.after_merge(job, outcome.merged, outcome.voiceprints)
            final = self._settle.event(job, EventType.SUCCEEDED, attempt, result=whole)
            await self._settle.finish(message, job, final, ack=True)
            await asyncio.to_thread(self._fanout.settle, job.job_id)
        else:
            if outcome.progress is not None:
                progress = self._settle.event(
                    job, EventType.PROGRESS, attempt, progress=outcome.progress
                )
                await self._settle.publish_quietly(progress)
            await self._settle.ack_quietly(message, job)
        # One delivery, one outcome: the part that completed the set is a part too
        # (merged=True); its recording's success is the event it published.
        fields: dict[str, Any] = {
            "part": part.index,
            "of": part.count,
            "merged": outcome.merged is not None,
            **timings.marks,
        }
        self._outcomes.record(
            "part", job.message.options.model, "part.done", timings=timings, **fields
        )

    async def settle(self, job: InboundJob) -> None:
        """After a part's final event (failed, cancelled): its recording's other parts skip."""
        if job.message.part is not None and self._fanout is not None:
            await asyncio.to_thread(self._fanout.settle, job.job_id)
