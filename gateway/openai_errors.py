"""OpenAI's error shape for the synchronous endpoints: what each failure answers.

``{"error": {"message", "type", "param", "code"}}``, so that the official clients raise
their usual exceptions; the rest of the gateway keeps ``{"detail": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from fastapi import HTTPException
from fastapi.responses import JSONResponse

from gateway import sse
from gateway.errors import INTERNAL_ERROR_DETAIL, broker_refusal, openai_error
from gateway.store import JobRecord
from stt_daemon.common.protocol import (
    ErrorCode,
    ErrorInfo,
    JobStatus,
)

log = structlog.get_logger("gateway.openai")

#: Job failures caused by the upload itself: the client's fault, a 400.
CLIENT_ERRORS = frozenset({ErrorCode.BAD_AUDIO, ErrorCode.AUDIO_TOO_LONG})
JOB_ID_HEADER = "X-Job-Id"


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


def failure_error(record: JobRecord) -> OpenAIError:
    """The error for a job that ended without a result."""
    return job_failure(record.id, record.status, record.error)


def job_failure(job_id: str, status: JobStatus, error: ErrorInfo | None) -> OpenAIError:
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
