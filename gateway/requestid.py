"""Request ids: ``X-Request-ID`` in, on every log line of the request, and out; one access line.

The access line also names the job a request submitted (``job_id``, bound by
``Services.submit``), websocket sessions included. An exception the app does not
handle is logged here with the request's id and answered with the gateway's JSON
500, which carries the id too (never the exception's text).

A pure ASGI middleware (no ``BaseHTTPMiddleware``: that runs the app in another
task and buffers nothing we need). The id a client or proxy sends is kept when
it is sane, so a request can be followed from the load balancer to the daemon.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import internal_error

log = structlog.get_logger("gateway.access")
errors_log = structlog.get_logger("gateway.errors")

HEADER = "X-Request-ID"
#: What a sane id looks like: a UUID, a hex trace id, a load balancer's token.
_SANE = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")
#: The route label of a request no route matched (a 404): raw paths would be unbounded.
UNMATCHED = "<unmatched>"


def route_template(scope: Scope) -> str:
    """The matched route's template (``/v1/jobs/{job_id}``), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def request_id_of(headers: Headers) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a new one (32 random hex digits,
    the shape of ``uuid4().hex`` at a fraction of its cost)."""
    given = headers.get(HEADER, "")
    return given if _SANE.fullmatch(given) else secrets.token_hex(16)


def current_request_id() -> str | None:
    """The id of the request being handled (None outside a request)."""
    value: Any = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


class RequestIdMiddleware:
    """Binds ``request_id`` for structlog, echoes it in the response, logs one access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request: the id bound and echoed, a failure answered, the access line."""
        request_id = request_id_of(Headers(scope=scope))
        status = 500  # what the client gets if the app raises before answering
        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        # Bound, not scoped: lines logged after the app (the access line, a failure)
        # carry the id too. Each request runs in a task of its own under uvicorn, so
        # nothing leaks.
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if answered:
                raise  # too late for another answer: the server closes the connection
            # Answered here, not by the server-error handler outside every middleware,
            # so that the 500 carries the id a client can quote and we can find.
            errors_log.exception("request.failed", method=scope["method"], path=scope["path"])
            await internal_error()(scope, receive, send_with_id)
        finally:
            _access_line(scope, scope["method"], status, started)
        structlog.contextvars.unbind_contextvars("request_id", "job_id")

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The same for a websocket session: one line when it ends, with its close code."""
        structlog.contextvars.bind_contextvars(request_id=request_id_of(Headers(scope=scope)))
        # The handshake's HTTP status: 101 once accepted, 403 when closed before (what
        # the server answers then), or the status of a denial response.
        status = 403
        close_code: int | None = None

        async def watch(message: Message) -> None:
            nonlocal status, close_code
            if message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.http.response.start":
                status = message["status"]
            elif message["type"] == "websocket.close" and status == 101:
                close_code = message.get("code", 1000)
            await send(message)

        async def heard() -> Message:
            nonlocal close_code
            message = await receive()
            if message["type"] == "websocket.disconnect" and close_code is None:
                close_code = message.get("code", 1000)  # the client closed first
            return message

        started = time.perf_counter()
        try:
            await self.app(scope, heard, watch)
        finally:
            _access_line(scope, "WEBSOCKET", status, started, close_code=close_code)
        structlog.contextvars.unbind_contextvars("request_id", "job_id")


def _access_line(
    scope: Scope, method: str, status: int, started: float, **extra: int | None
) -> None:
    """The one line per request (or websocket session), when access lines are on."""
    # structlog runs its processors before the stdlib level check drops a line;
    # asking first spares every request that work when access lines are off.
    if log.is_enabled_for(logging.INFO):
        log.info(
            "http.request",
            method=method,
            route=route_template(scope),
            path=scope["path"],
            status=status,
            **extra,
            duration_s=round(time.perf_counter() - started, 4),
        )
