"""Exception handlers: every error is JSON with a ``detail``; no stack trace reaches a client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis.exceptions
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gateway.broker import BrokerUnavailable, QueueFull, UnroutableJob
from gateway.store import StoreBusy

log = structlog.get_logger("gateway.errors")

#: The original API's 429 detail, kept byte for byte.
QUEUE_FULL_DETAIL = "Queue limit reached"
#: All a client learns of an unexpected exception (the log has the rest, under the request id).
INTERNAL_ERROR_DETAIL = "internal server error"


@dataclass(frozen=True)
class Refusal:
    """How every route answers one broker outcome; each route's shape wraps it."""

    status: int
    #: The sentence a client reads; ``{exc}`` stands for the exception's text.
    detail: str
    #: The ``code`` of the OpenAI-compatible routes' error.
    code: str

    def of(self, exc: Exception) -> str:
        """The sentence for this exception."""
        return self.detail.format(exc=exc)


#: The broker's refusals of a job, as HTTP answers: every one is worth a retry after
#: ``STT_RETRY_AFTER`` seconds, so each carries a ``Retry-After`` header.
BROKER_REFUSALS: Mapping[type[Exception], Refusal] = {
    QueueFull: Refusal(429, QUEUE_FULL_DETAIL, "queue_full"),
    BrokerUnavailable: Refusal(
        503, "the job queue is unavailable; try again shortly", "queue_unavailable"
    ),
    # Transient too: the queue appears when a daemon for the model declares it.
    UnroutableJob: Refusal(503, "no queue accepts jobs for model {exc}", "unroutable"),
}

#: The exceptions ``BROKER_REFUSALS`` answers, for an ``except`` clause.
BROKER_ERRORS = tuple(BROKER_REFUSALS)


def broker_refusal(exc: BaseException) -> Refusal | None:
    """The answer to a broker outcome in ``BROKER_REFUSALS``; None for any other exception."""
    return next((r for kind, r in BROKER_REFUSALS.items() if isinstance(exc, kind)), None)


def internal_error() -> JSONResponse:
    """The 500 of an unexpected exception: no exception text, no stack trace."""
    return JSONResponse({"detail": INTERNAL_ERROR_DETAIL}, status_code=500)


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An error in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, retry_after: int) -> None:
    """Map broker outcomes to HTTP statuses."""

    def try_later(detail: str) -> JSONResponse:
        """A 503 the client may retry after ``STT_RETRY_AFTER`` seconds."""
        return JSONResponse(
            {"detail": detail}, status_code=503, headers={"Retry-After": str(retry_after)}
        )

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        refusal = broker_refusal(exc)
        assert refusal is not None  # registered for BROKER_REFUSALS' types only
        if isinstance(exc, BrokerUnavailable):
            log.warning("broker.unavailable", path=request.url.path, error=str(exc))
        return JSONResponse(
            {"detail": refusal.of(exc)},
            status_code=refusal.status,
            headers={"Retry-After": str(retry_after)},
        )

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's default detail is a list of objects; every other error here is a sentence.
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    async def store_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("store.unavailable", path=request.url.path, error=str(exc))
        return try_later("the status store is unavailable; try again shortly")

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # Reached only without RequestIdMiddleware, which answers the 500 itself (with its id).
        log.exception("request.failed", path=request.url.path)
        return internal_error()

    for kind in BROKER_REFUSALS:
        app.add_exception_handler(kind, refused)
    app.add_exception_handler(RequestValidationError, invalid)
    # Redis down or unreachable (both subclass redis' own error, not the builtins).
    app.add_exception_handler(redis.exceptions.ConnectionError, store_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, store_down)
    # Another gateway process held the SQLite database's lock past our wait.
    app.add_exception_handler(StoreBusy, store_down)
    app.add_exception_handler(Exception, internal)
