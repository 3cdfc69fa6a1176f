"""A long recording made into part jobs: cut at pauses, stored, published to the job queue.

The cuts come from splitting.py; each part's audio goes into the blob store and
the manifest into the books (fanbook.py) before any part is published, so the
first part to finish already finds them.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import wave

import numpy as np
import structlog
from aio_pika.abc import AbstractExchange
from aio_pika.exceptions import DeliveryError
from pamqp.commands import Basic

from stt_daemon.audio import SAMPLE_RATE, Audio, PcmFile
from stt_daemon.common.claims import ClaimSigner
from stt_daemon.common.protocol import InboundJob, JobMessage, PartInfo, encode_job
from stt_daemon.engine import Engine
from stt_daemon.fanbook import FanBook, Manifest
from stt_daemon.provenance import copy_headers
from stt_daemon.splitting import Span, pauses, plan_parts

log = structlog.get_logger("stt_daemon.fanout")


class CannotSplit(Exception):
    """The job queue refused a part (it is full): the recording runs whole instead."""


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


class PartJobs:
    """Cuts a recording into parts and publishes each as a job of its own."""

    def __init__(
        self,
        book: FanBook,
        jobs_exchange: AbstractExchange,
        *,
        part_seconds: float,
        publish_timeout: float,
        signer: ClaimSigner,
        daemon_user: str | None,
    ) -> None:
        self._book = book
        self._exchange = jobs_exchange
        self._signer = signer
        self._user = daemon_user
        self._part_samples = int(part_seconds * SAMPLE_RATE)
        self._timeout = publish_timeout

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
            await asyncio.to_thread(self._book.settle, job.job_id)
            for message in messages:
                if message.audio is not None:
                    self._book.delete_audio(message.audio)
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
        token = secrets.token_hex(4)  # a re-split never reuses a part's audio file
        messages = []
        for index, span in enumerate(parts):
            wav = wav_bytes(audio.read(span.start, span.end))
            update = {
                "options": part_options,
                "audio": self._book.put_audio(job.job_id, index, token, wav),
                "part": PartInfo(index=index, count=len(parts), offset=span.offset),
            }
            messages.append(job.message.model_copy(update=update))
        manifest = Manifest(
            job_id=job.job_id,
            duration=audio.duration,
            language=language,
            language_probability=probability,
            parts=[(span.offset, span.seconds) for span in parts],
        )
        self._book.write_manifest(manifest)
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
