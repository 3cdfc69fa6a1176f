"""OpenAI-compatible synchronous endpoints: ``/v1/audio/transcriptions`` and ``/translations``.

Each request is an ordinary job: the upload streams to the blob store, the job goes through
the broker like any other, and the request waits (up to ``STT_SYNC_TIMEOUT``) until the
recorder has seen it final. Errors take OpenAI's shape, ``{"error": {"message", "type",
"param", "code"}}``, so that the official clients raise their usual exceptions; the rest of
the gateway keeps ``{"detail": ...}``.

With ``stream=true`` the answer is server-sent events, as OpenAI streams a transcription:
``transcript.text.delta`` as segments of the job finish (the daemons' ``job.progress``
events carry them), then ``transcript.text.done`` with the whole text; a job that fails
or times out ends the stream with an error event.

Speakers: ``diarize=speakers`` (with ``num_speakers`` or ``min_speakers``/``max_speakers``)
may be added to the form like our other options, and ``response_format=diarized_json``
(OpenAI's speaker-labelled shape) or ``rttm`` turns it on by itself. OpenAI's
``gpt-4o-transcribe-diarize`` is, like every ``gpt-`` name, our default model: the
response format decides whether speakers are told apart, as it decides what OpenAI
answers. ``known_speaker_names[]``/``known_speaker_references[]`` are refused (speakers
are lettered A, B... here, never named); ``chunking_strategy`` is ignored, as are the
other fields we have no use for (a long recording is split at pauses anyway).

The form is read in openai_form.py, errors are shaped in openai_errors.py, and the
stream of events is openai_stream.py; this module is the routes and the waiting.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from gateway import sse
from gateway.auth import REQUIRE_KEY_OPENAI, OpenAIOwnerDep
from gateway.broker import BrokerUnavailable
from gateway.errors import broker_refusal
from gateway.formats import (
    NoSpeakers,
    ResultFormat,
    render,
    to_diarized_json,
    to_verbose_json,
)
from gateway.openai_errors import (
    JOB_ID_HEADER,
    OpenAIError,
    as_openai_error,
    failure_error,
    timeout_error,
)
from gateway.openai_form import Granularity, form_schema, parse_form
from gateway.openai_stream import open_stream, transcript_stream
from gateway.services import InvalidOptions, Services, ServicesDep
from gateway.store import JobRecord
from gateway.uploads import receive_upload
from stt_daemon.common.protocol import (
    JobOptions,
    JobStatus,
    Task,
    TranscriptResult,
)

# Keys are checked before the upload is read; a refusal is in OpenAI's shape too.
router = APIRouter(prefix="/v1/audio", tags=["openai"], dependencies=[REQUIRE_KEY_OPENAI])
log = structlog.get_logger("gateway.openai")

POLL_INTERVAL = 0.1


def render_result(
    result: TranscriptResult,
    fmt: ResultFormat,
    granularities: frozenset[Granularity],
    job_id: str | None = None,
) -> Response:
    """The body OpenAI would send for ``fmt`` (``json`` is OpenAI's ``{"text"}``, not ours).

    ``job_id`` names the recording in RTTM.
    """
    if fmt is ResultFormat.JSON:
        return JSONResponse({"text": result.text})
    if fmt is ResultFormat.VERBOSE_JSON:
        return JSONResponse(_verbose_json(result, granularities))
    try:
        if fmt is ResultFormat.DIARIZED_JSON:
            return JSONResponse(to_diarized_json(result))
        text, media_type = render(result, fmt, file_id=job_id)
    except NoSpeakers as exc:
        # Only a daemon that ignored diarize gets here: the job ran, a retry would not help.
        raise OpenAIError(400, str(exc), param="response_format", retry=False) from None
    return Response(text, media_type=media_type)


def _verbose_json(
    result: TranscriptResult, granularities: frozenset[Granularity]
) -> dict[str, Any]:
    body = to_verbose_json(result)
    # Like OpenAI: segments by default or when asked; words only when asked.
    if granularities and Granularity.SEGMENT not in granularities:
        body.pop("segments", None)
    if Granularity.WORD in granularities:
        body.setdefault("words", [])
    else:
        body.pop("words", None)
    return body


async def wait_final(services: Services, request: Request, job_id: str) -> JobRecord | None:
    """The job once final (polling the status store); None when the client has gone."""
    timeout = services.settings.sync_timeout
    deadline = time.monotonic() + timeout
    while True:
        record = await services.store.get(job_id)
        if record is not None and record.status.is_final:
            return record
        if time.monotonic() >= deadline:
            raise timeout_error(job_id, timeout)
        if await request.is_disconnected():
            # Nobody to answer; the job goes on and its result stays fetchable.
            log.info("openai.client_gone", job_id=job_id)
            return None
        await asyncio.sleep(POLL_INTERVAL)


def _options(services: Services, fields: dict[str, Any]) -> JobOptions:
    try:
        return services.job_options(fields)
    except HTTPException as exc:
        # job_options answers 400 for an unknown model and 422 for invalid values;
        # OpenAI answers 400 for both.
        if exc.status_code == 400:
            raise OpenAIError(400, str(exc.detail), param="model", code="model_not_found") from None
        param = exc.param if isinstance(exc, InvalidOptions) else None
        raise OpenAIError(400, str(exc.detail), param=param) from None


async def _transcribe(
    request: Request, services: Services, task: Task, owner: str | None
) -> Response:
    settings = services.settings
    upload = await receive_upload(request, services.blobs, settings.max_upload_bytes)
    try:
        asked = parse_form(upload.fields, task, settings.model_names[0])
        options = _options(services, asked.fields)
        # Before the job is submitted: a gateway with no stream to spare makes no job.
        subscription = open_stream(request, services) if asked.stream else None
    except Exception:
        upload.discard()
        raise
    assert upload.blob is not None
    try:
        record = await services.submit(
            upload.blob,
            options,
            filename=upload.filename,
            content_type=upload.content_type,
            owner=owner,
        )
    except BaseException:
        if subscription is not None:
            subscription.close()
        raise
    if subscription is not None:
        subscription.follow(record.id)
        body = transcript_stream(services, record, subscription)
        return sse.EventStream(body, subscription.close, headers={JOB_ID_HEADER: record.id})
    final = await wait_final(services, request, record.id)
    if final is None:
        return Response(status_code=499)
    if final.status is not JobStatus.SUCCEEDED or final.result is None:
        raise failure_error(final)
    response = render_result(final.result, asked.response_format, asked.granularities, final.id)
    response.headers[JOB_ID_HEADER] = final.id
    return response


async def _answer(request: Request, services: Services, task: Task, owner: str | None) -> Response:
    try:
        return await _transcribe(request, services, task, owner)
    except Exception as exc:
        if isinstance(exc, BrokerUnavailable):
            log.warning("broker.unavailable", path=request.url.path, error=str(exc))
        elif not isinstance(exc, OpenAIError | HTTPException) and broker_refusal(exc) is None:
            log.exception("request.failed", path=request.url.path)
        return as_openai_error(exc, services.settings.retry_after).response()


_ERROR = {"description": "OpenAI's error shape: {'error': {message, type, param, code}}"}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/json": {}, "text/plain": {}, "text/vtt": {}, sse.MEDIA_TYPE: {}}
    },
    400: _ERROR,
    401: _ERROR,
    429: _ERROR,
    503: _ERROR,
    504: _ERROR,
}


@router.post("/transcriptions", openapi_extra=form_schema(Task.TRANSCRIBE), responses=_RESPONSES)
async def create_transcription(
    request: Request, services: ServicesDep, owner: OpenAIOwnerDep
) -> Response:
    """OpenAI's ``audio.transcriptions.create``: waits for the job, answers the transcript."""
    return await _answer(request, services, Task.TRANSCRIBE, owner)


@router.post("/translations", openapi_extra=form_schema(Task.TRANSLATE), responses=_RESPONSES)
async def create_translation(
    request: Request, services: ServicesDep, owner: OpenAIOwnerDep
) -> Response:
    """OpenAI's ``audio.translations.create``: speech in any language, English text."""
    return await _answer(request, services, Task.TRANSLATE, owner)
