"""``stream=true``: OpenAI's transcription events for a job, as its segments finish.

``transcript.text.delta`` as segments of the job finish (the daemons' ``job.progress``
events carry them), then ``transcript.text.done`` with the whole text; a job that fails
or times out ends the stream with an error event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator

import structlog
from fastapi import Request

from gateway import sse
from gateway.errors import INTERNAL_ERROR_DETAIL
from gateway.jobfeed import StreamTimeout, Subscription, TooManyStreams, follow, get_feed
from gateway.openai_errors import OpenAIError, job_failure, timeout_error
from gateway.services import Services
from gateway.store import JobRecord
from stt_daemon.common.protocol import (
    JobEvent,
    JobStatus,
    Segment,
    TranscriptResult,
)

log = structlog.get_logger("gateway.openai")

#: Segments a stream holds back while one before them is missing (they come with the result).
MAX_HELD_SEGMENTS = 1000


class TranscriptSoFar:
    """The deltas of a streamed transcript: each segment once, in order, none skipped.

    Segments come in ``job.progress`` events; one that is missing (an event dropped
    for a slow client, or published before the stream began) holds back those after
    it, and the final result brings the rest. So the deltas add up to the final text.
    """

    def __init__(self) -> None:
        self.next_id = 0
        self._held: dict[int, Segment] = {}
        self._started = False

    def add(self, segments: Iterable[Segment]) -> str:
        """The text the stream can send now, given these new segments."""
        for segment in segments:
            # Lower ids were sent already (a retried attempt sends them again).
            if segment.id >= self.next_id and len(self._held) < MAX_HELD_SEGMENTS:
                self._held[segment.id] = segment
        parts = []
        while self.next_id in self._held:
            parts.append(self._held.pop(self.next_id).text)
            self.next_id += 1
        return self._delta("".join(parts))

    def rest(self, result: TranscriptResult) -> str:
        """The text of the result that was not sent yet."""
        if self.next_id == 0:
            return self._delta(result.text)
        return self._delta("".join(s.text for s in result.segments if s.id >= self.next_id))

    def _delta(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()  # as the final text begins
            self._started = bool(text)
        return text


def _delta_event(delta: str) -> bytes:
    return sse.event({"type": "transcript.text.delta", "delta": delta})


def _final_events(transcript: TranscriptSoFar, final: JobEvent) -> Iterator[bytes]:
    if final.event.status is not JobStatus.SUCCEEDED or final.result is None:
        yield job_failure(final.job_id, final.status, final.error).event()
        return
    if rest := transcript.rest(final.result):
        yield _delta_event(rest)
    yield sse.event({"type": "transcript.text.done", "text": final.result.text})


async def transcript_stream(
    services: Services, record: JobRecord, subscription: Subscription
) -> AsyncIterator[bytes]:
    """OpenAI's transcription events for a job, until it is final or ``STT_SYNC_TIMEOUT``."""
    settings = services.settings
    transcript = TranscriptSoFar()
    try:
        events = follow(
            subscription,
            services.store,
            record,
            heartbeat=settings.event_stream_heartbeat,
            limit=settings.sync_timeout,
        )
        async for event in events:
            if event is None:
                yield sse.KEEP_ALIVE
            elif event.status.is_final:
                for chunk in _final_events(transcript, event):
                    yield chunk
                return
            elif event.segments and (delta := transcript.add(event.segments)):
                yield _delta_event(delta)
        yield OpenAIError(500, f"job {record.id} is no longer known", code="internal").event()
    except StreamTimeout:
        yield timeout_error(record.id, settings.sync_timeout).event()
    except Exception:
        log.exception("openai.stream_failed", job_id=record.id)
        yield OpenAIError(500, INTERNAL_ERROR_DETAIL).event()
    finally:
        subscription.close()


def open_stream(request: Request, services: Services) -> Subscription:
    try:
        return get_feed(request).open()
    except TooManyStreams as exc:
        wait = {"Retry-After": str(services.settings.retry_after)}
        raise OpenAIError(503, str(exc), code="too_many_streams", headers=wait) from None
