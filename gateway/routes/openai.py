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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from gateway import sse
from gateway.auth import REQUIRE_KEY_OPENAI, OpenAIOwnerDep
from gateway.broker import BrokerUnavailable
from gateway.errors import INTERNAL_ERROR_DETAIL, broker_refusal, openai_error
from gateway.formats import (
    SPEAKER_FORMATS,
    NoSpeakers,
    ResultFormat,
    render,
    to_diarized_json,
    to_verbose_json,
)
from gateway.jobfeed import StreamTimeout, Subscription, TooManyStreams, follow, get_feed
from gateway.services import InvalidOptions, Services, ServicesDep
from gateway.store import JobRecord
from gateway.uploads import receive_upload
from stt_daemon.common.protocol import (
    MAX_SPEAKERS,
    Diarize,
    ErrorCode,
    ErrorInfo,
    JobEvent,
    JobOptions,
    JobStatus,
    Segment,
    Task,
    TranscriptResult,
)

# Keys are checked before the upload is read; a refusal is in OpenAI's shape too.
router = APIRouter(prefix="/v1/audio", tags=["openai"], dependencies=[REQUIRE_KEY_OPENAI])
log = structlog.get_logger("gateway.openai")

#: Model names OpenAI clients send (``whisper-1``, ``gpt-4o-transcribe``...): "the default model".
OPENAI_MODEL_NAMES = frozenset({"whisper-1"})
OPENAI_MODEL_PREFIX = "gpt-"
#: Options of ours a client may add to OpenAI's form (the Python client's ``extra_body``).
SPEAKER_OPTIONS = ("diarize", "num_speakers", "min_speakers", "max_speakers")
EXTRA_OPTIONS = ("hotwords", "vad_filter", "beam_size", "split", *SPEAKER_OPTIONS)
#: OpenAI's fields for naming speakers from voice samples (``name[]`` as its clients send
#: them): refused, not ignored, as a client sending them expects its names, not letters.
KNOWN_SPEAKER_FIELDS = ("known_speaker_names", "known_speaker_references")
#: Job failures caused by the upload itself: the client's fault, a 400.
CLIENT_ERRORS = frozenset({ErrorCode.BAD_AUDIO, ErrorCode.AUDIO_TOO_LONG})
POLL_INTERVAL = 0.1
JOB_ID_HEADER = "X-Job-Id"
#: What a streamed transcription may be asked to answer in (OpenAI streams text only).
STREAM_FORMATS = frozenset({ResultFormat.JSON, ResultFormat.TEXT})
#: Segments a stream holds back while one before them is missing (they come with the result).
MAX_HELD_SEGMENTS = 1000


class Granularity(StrEnum):
    """OpenAI's ``timestamp_granularities[]`` values."""

    WORD = "word"
    SEGMENT = "segment"


class OpenAIError(Exception):
    """An error answered in OpenAI's shape.

    ``retry=False`` sends ``x-should-retry: false``: the official clients otherwise retry
    409 and 5xx, and each retry would upload and transcribe the audio again.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        if retry is not None:
            self.headers["x-should-retry"] = "true" if retry else "false"

    def response(self) -> JSONResponse:
        """The JSON response OpenAI would send."""
        return openai_error(
            self.status, self.message, param=self.param, code=self.code, headers=self.headers
        )

    def event(self) -> bytes:
        """The error as an event of a stream that has begun (the client raises ``APIError``)."""
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return sse.event({"type": "error", "error": error})


@dataclass(frozen=True)
class SyncRequest:
    """What an OpenAI form asks for: the job's options and how to answer."""

    fields: dict[str, Any]
    response_format: ResultFormat
    granularities: frozenset[Granularity]
    #: Answer server-sent events as the job goes (``stream=true``).
    stream: bool = False


def parse_form(form: Mapping[str, str], task: Task, default_model: str) -> SyncRequest:
    """Translate OpenAI's form fields into our job fields (validated later by job_options)."""
    stream = form.get("stream", "").lower() in {"true", "1"}
    response_format = _response_format(form, task)
    granularities = _granularities(form)
    if granularities and response_format is not ResultFormat.VERBOSE_JSON:
        raise OpenAIError(
            400,
            "timestamp_granularities requires response_format=verbose_json",
            param="timestamp_granularities",
        )
    if stream and response_format not in STREAM_FORMATS:
        raise OpenAIError(
            400,
            "stream=true answers text events: response_format must be json or text",
            param="response_format",
        )
    model = form.get("model", "")
    if model in OPENAI_MODEL_NAMES or model.startswith(OPENAI_MODEL_PREFIX):
        model = default_model
    fields: dict[str, Any] = {"model": model, "task": task.value}
    names = ["prompt", *EXTRA_OPTIONS]
    if task is Task.TRANSCRIBE:
        # Translations have no language in OpenAI's API: the source language is detected.
        names.append("language")
    fields |= {name: form[name] for name in names if name in form}
    temperature = form.get("temperature")
    if temperature and not _is_zero(temperature):
        # OpenAI's 0 means "Whisper's fallback schedule", which is what an unset temperature does.
        fields["temperature"] = temperature
    if Granularity.WORD in granularities:
        fields["word_timestamps"] = True
    fields |= _speaker_fields(form, response_format)
    return SyncRequest(fields, response_format, granularities, stream)


def _response_format(form: Mapping[str, str], task: Task) -> ResultFormat:
    raw = form.get("response_format") or ResultFormat.JSON.value
    try:
        response_format = ResultFormat(raw)
    except ValueError:
        allowed = ", ".join(f.value for f in ResultFormat)
        raise OpenAIError(
            400, f"response_format must be one of {allowed}", param="response_format"
        ) from None
    if response_format is ResultFormat.DIARIZED_JSON and task is Task.TRANSLATE:
        # OpenAI's shape says task "transcribe", and its translations have no such format.
        raise OpenAIError(
            400, "diarized_json is for transcriptions, not translations", param="response_format"
        )
    return response_format


def _speaker_fields(form: Mapping[str, str], response_format: ResultFormat) -> dict[str, str]:
    """``diarize=speakers`` for the formats made of speakers, unless the form says otherwise."""
    for name in KNOWN_SPEAKER_FIELDS:
        if form.get(name) or form.get(f"{name}[]"):
            raise OpenAIError(
                400,
                f"{name} is not supported: speakers are labelled A, B... in order of first "
                "appearance (diarized_json), or SPEAKER_00, SPEAKER_01... elsewhere",
                param=name,
            )
    if response_format not in SPEAKER_FORMATS:
        return {}
    diarize = form.get("diarize") or Diarize.SPEAKERS.value
    if diarize == Diarize.NONE.value:
        raise OpenAIError(
            400,
            f"response_format={response_format.value} needs speakers: leave diarize out "
            "or set it to speakers (or channels)",
            param="diarize",
        )
    return {"diarize": diarize}


def _granularities(form: Mapping[str, str]) -> frozenset[Granularity]:
    # The official clients send ``timestamp_granularities[]``; a comma list is accepted too.
    raw = form.get("timestamp_granularities[]") or form.get("timestamp_granularities") or ""
    values = [v.strip() for v in raw.split(",") if v.strip()]
    try:
        return frozenset(Granularity(v) for v in values)
    except ValueError:
        raise OpenAIError(
            400,
            f"timestamp_granularities must be word and/or segment, not {raw!r}",
            param="timestamp_granularities",
        ) from None


def _is_zero(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return False  # not a number: job_options reports it


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


def failure_error(record: JobRecord) -> OpenAIError:
    """The error for a job that ended without a result."""
    return _failure(record.id, record.status, record.error)


def _failure(job_id: str, status: JobStatus, error: ErrorInfo | None) -> OpenAIError:
    headers = {JOB_ID_HEADER: job_id}
    if status is JobStatus.CANCELLED:
        return OpenAIError(
            409, f"job {job_id} was cancelled", code="cancelled", retry=False, headers=headers
        )
    code = error.code if error else ErrorCode.INTERNAL
    reason = error.message if error else "unknown reason"
    if code in CLIENT_ERRORS:
        return OpenAIError(400, reason, param="file", code=code.value, headers=headers)
    # The daemon already retried what was worth retrying; a client retry would start over.
    message = f"job {job_id} failed: {reason}"
    return OpenAIError(500, message, code=code.value, retry=False, headers=headers)


def timeout_error(job_id: str, timeout: float) -> OpenAIError:
    """A job not final within ``STT_SYNC_TIMEOUT``: it goes on, and says where to look."""
    log.warning("openai.sync_timeout", job_id=job_id, timeout=timeout)
    return OpenAIError(
        504,
        f"job {job_id} did not finish within {timeout:g} s (STT_SYNC_TIMEOUT); it "
        f"goes on: poll /v1/jobs/{job_id} and fetch /v1/jobs/{job_id}/result",
        code="timeout",
        retry=False,
        headers={JOB_ID_HEADER: job_id},
    )


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
        yield _failure(final.job_id, final.status, final.error).event()
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


def _open_stream(request: Request, services: Services) -> Subscription:
    try:
        return get_feed(request).open()
    except TooManyStreams as exc:
        wait = {"Retry-After": str(services.settings.retry_after)}
        raise OpenAIError(503, str(exc), code="too_many_streams", headers=wait) from None


async def _transcribe(
    request: Request, services: Services, task: Task, owner: str | None
) -> Response:
    settings = services.settings
    upload = await receive_upload(request, services.blobs, settings.max_upload_bytes)
    try:
        asked = parse_form(upload.fields, task, settings.model_names[0])
        options = _options(services, asked.fields)
        # Before the job is submitted: a gateway with no stream to spare makes no job.
        subscription = _open_stream(request, services) if asked.stream else None
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


def as_openai_error(exc: Exception, retry_after: int) -> OpenAIError:
    """Any exception of a sync request, in OpenAI's shape (no stack trace reaches a client)."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, HTTPException):
        # 422 (no file, empty file) is a 400 in OpenAI's API; 413 and 415 keep their status.
        status = 400 if exc.status_code == 422 else exc.status_code
        return OpenAIError(status, str(exc.detail), headers=exc.headers)
    refusal = broker_refusal(exc)
    if refusal is not None:
        wait = {"Retry-After": str(retry_after)}
        return OpenAIError(refusal.status, refusal.of(exc), code=refusal.code, headers=wait)
    return OpenAIError(500, INTERNAL_ERROR_DETAIL)


async def _answer(request: Request, services: Services, task: Task, owner: str | None) -> Response:
    try:
        return await _transcribe(request, services, task, owner)
    except Exception as exc:
        if isinstance(exc, BrokerUnavailable):
            log.warning("broker.unavailable", path=request.url.path, error=str(exc))
        elif not isinstance(exc, OpenAIError | HTTPException) and broker_refusal(exc) is None:
            log.exception("request.failed", path=request.url.path)
        return as_openai_error(exc, services.settings.retry_after).response()


def _form_schema(task: Task) -> dict[str, Any]:
    """OpenAPI description of the form (the route reads the body itself, streaming)."""
    string = {"type": "string"}
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary"},
        "model": {"type": "string", "example": "whisper-1"},
        "prompt": string,
        "response_format": {"type": "string", "enum": [f.value for f in ResultFormat]},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "stream": {"type": "boolean", "description": "answer server-sent events"},
        "timestamp_granularities[]": {
            "type": "array",
            "items": {"type": "string", "enum": [g.value for g in Granularity]},
        },
    }
    if task is Task.TRANSCRIBE:
        properties["language"] = string
    properties |= _speaker_schema()
    schema = {"type": "object", "required": ["file"], "properties": properties}
    content = {"multipart/form-data": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def _speaker_schema() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 1, "maximum": MAX_SPEAKERS}
    return {
        "diarize": {
            "type": "string",
            "enum": [d.value for d in Diarize],
            "description": "speakers: tell voices apart (diarized_json and rttm turn it on)",
        },
        "num_speakers": count,
        "min_speakers": count,
        "max_speakers": count,
    }


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


@router.post("/transcriptions", openapi_extra=_form_schema(Task.TRANSCRIBE), responses=_RESPONSES)
async def create_transcription(
    request: Request, services: ServicesDep, owner: OpenAIOwnerDep
) -> Response:
    """OpenAI's ``audio.transcriptions.create``: waits for the job, answers the transcript."""
    return await _answer(request, services, Task.TRANSCRIBE, owner)


@router.post("/translations", openapi_extra=_form_schema(Task.TRANSLATE), responses=_RESPONSES)
async def create_translation(
    request: Request, services: ServicesDep, owner: OpenAIOwnerDep
) -> Response:
    """OpenAI's ``audio.translations.create``: speech in any language, English text."""
    return await _answer(request, services, Task.TRANSLATE, owner)
