"""The resource API: ``/v1/jobs``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel

from gateway import sse
from gateway.auth import REQUIRE_KEY, OwnerDep
from gateway.formats import MEDIA_TYPES, NoSpeakers, ResultFormat, render
from gateway.jobfeed import (
    JobFeedDep,
    StreamTimeout,
    Subscription,
    TooManyStreams,
    follow,
)
from gateway.services import IdempotencyKey, Services, ServicesDep
from gateway.store import JobRecord
from gateway.store.base import options_json
from gateway.uploads import receive_upload
from stt_daemon.common.protocol import ErrorInfo, JobEvent, JobStatus, TranscriptResult

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[REQUIRE_KEY])


class JobView(BaseModel):
    """A job as clients see it."""

    id: str
    status: JobStatus
    model: str | None
    options: dict[str, Any] | None
    filename: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    progress: float
    attempts: int
    error: ErrorInfo | None
    links: dict[str, str]

    @classmethod
    def of(cls, record: JobRecord) -> JobView:
        """Build the view of a stored record."""
        return cls(
            id=record.id,
            status=record.status,
            model=record.model,
            # As the API always showed them: JSON, with ``"live": true`` for a live session.
            options=options_json(record),
            filename=record.filename,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            progress=record.progress,
            attempts=record.attempts,
            error=record.error,
            links={"self": f"/v1/jobs/{record.id}", "result": f"/v1/jobs/{record.id}/result"},
        )


@router.post("", status_code=202, response_model=JobView)
async def create_job(
    request: Request,
    response: Response,
    services: ServicesDep,
    owner: OwnerDep,
    idempotency_key: IdempotencyKey = None,
) -> JobView:
    """Upload audio (multipart ``file``; optional ``model``, ``language``, ``task``,
    ``word_timestamps``, ``diarize`` (``channels``, or ``speakers`` with ``num_speakers`` or
    ``min_speakers``/``max_speakers``)...; 422 says what is wrong with them). Answers 202
    once the broker has confirmed the job."""
    upload = await receive_upload(request, services.blobs, services.settings.max_upload_bytes)
    try:
        options = services.job_options(upload.fields)
    except HTTPException:
        upload.discard()
        raise
    assert upload.blob is not None
    record = await services.submit(
        upload.blob,
        options,
        filename=upload.filename,
        content_type=upload.content_type,
        owner=owner,
        idempotency_key=idempotency_key,
    )
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return JobView.of(record)


@router.delete("/{job_id}", response_model=JobView)
async def cancel_job(job_id: str, services: ServicesDep, owner: OwnerDep) -> JobView:
    """Cancel a job: a queued one is skipped by the daemons, a running one stopped
    (best effort: one that finished first keeps its result, and the answer shows it).
    409 if the job is already final."""
    return JobView.of(await services.cancel(job_id, owner=owner))


@router.get("/{job_id}", response_model=JobView)
async def get_job(job_id: str, services: ServicesDep, owner: OwnerDep) -> JobView:
    """Status, timestamps, progress and error of a job."""
    return JobView.of(await services.job_or_404(job_id, owner=owner))


@router.get(
    "/{job_id}/result",
    response_model=TranscriptResult,
    responses={200: {"content": {t: {} for t in set(MEDIA_TYPES.values())}}},
)
async def get_result(
    job_id: str,
    services: ServicesDep,
    owner: OwnerDep,
    format: ResultFormat = ResultFormat.JSON,
) -> Response:
    """The transcript: ``json`` (default: text, language, duration, segments, words when
    asked), ``verbose_json``, ``text``, ``srt``, ``vtt``, ``tsv``, and for jobs with
    speakers ``rttm`` and ``diarized_json`` (409 for a job without speakers)."""
    record = await services.job_or_404(job_id, owner=owner)
    if record.status is JobStatus.FAILED:
        reason = record.error.message if record.error else "unknown reason"
        raise HTTPException(409, f"job failed: {reason}")
    if record.status is JobStatus.CANCELLED:
        raise HTTPException(409, "job was cancelled")
    if record.result is None:
        raise HTTPException(
            409,
            f"job is {record.status.value}; the result is not ready yet (progress "
            f"{record.progress:.0%})",
        )
    try:
        body, media_type = render(record.result, format, file_id=record.id)
    except NoSpeakers as exc:
        raise HTTPException(409, str(exc)) from None
    return Response(body, media_type=media_type)


#: Fields of an event that name the deployment's insides (broker user, daemon host).
PRIVATE_EVENT_FIELDS = {"producer", "worker"}


@router.get(
    "/{job_id}/events",
    response_class=sse.EventStream,
    status_code=200,
    responses={
        200: {"content": {sse.MEDIA_TYPE: {}}, "description": "server-sent events"},
        503: {"description": "too many event streams open on this gateway"},
    },
)
async def job_events(
    job_id: str, services: ServicesDep, owner: OwnerDep, feed: JobFeedDep
) -> sse.EventStream:
    """The job's events as server-sent events: first ``job.status`` (the job as
    ``GET /v1/jobs/{id}`` shows it), then ``job.started``, ``job.progress``... up to
    the final event, after which the stream ends."""
    try:
        subscription = feed.open(job_id)
    except TooManyStreams as exc:
        retry = {"Retry-After": str(services.settings.retry_after)}
        raise HTTPException(503, str(exc), headers=retry) from None
    try:
        # Read after subscribing: an event that changes the job now is sent, not missed.
        record = await services.job_or_404(job_id, owner=owner)
    except BaseException:
        subscription.close()
        raise
    return sse.EventStream(
        _event_stream(services, subscription, record), on_close=subscription.close
    )


async def _event_stream(
    services: Services, subscription: Subscription, record: JobRecord
) -> AsyncIterator[bytes]:
    settings = services.settings
    try:
        yield sse.event(JobView.of(record).model_dump_json(), "job.status")
        events = follow(
            subscription,
            services.store,
            record,
            heartbeat=settings.event_stream_heartbeat,
            limit=settings.sync_timeout,
        )
        async for event in events:
            yield sse.KEEP_ALIVE if event is None else _sse_of(event)
    except StreamTimeout:
        yield sse.comment(
            f"closed after {settings.sync_timeout:g} s (STT_SYNC_TIMEOUT); reconnect to follow"
        )
    finally:
        subscription.close()


def _sse_of(event: JobEvent) -> bytes:
    """``event: job.progress`` and the event's JSON (its null fields left out)."""
    data = event.model_dump_json(exclude_none=True, exclude=PRIVATE_EVENT_FIELDS)
    return sse.event(data, event.event.value)
