"""Server-sent events: the wire format (WHATWG HTML, "Server-sent events") and the response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Callable, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

MEDIA_TYPE = "text/event-stream"
#: No cache may keep a stream, and nginx must pass each event on as it comes.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: What a stream sends while nothing happens, so that proxies and clients keep it open.
KEEP_ALIVE = b": keep-alive\n\n"


def event(data: str | dict[str, Any], name: str | None = None) -> bytes:
    """One event: ``event: <name>`` (when named) and ``data: <data>``, then a blank line.

    A dict is sent as compact JSON. Data spread over several lines gets one ``data:``
    line each (a client joins them with newlines again).
    """
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines = [f"event: {_one_line(name)}"] if name else []
    lines += [f"data: {line}" for line in _lines(text)]
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    """A comment line, which clients ignore (a heartbeat, a note on why a stream ends)."""
    return f": {_one_line(text)}\n\n".encode()


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _one_line(text: str) -> str:
    # A line break would start a field of the client's choosing.
    return " ".join(_lines(text))


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that calls ``on_close`` however it ends.

    A generator's ``finally`` does not run when the client goes before the first
    event is asked for; this does, so a stream's slot is always given back.
    """

    media_type = MEDIA_TYPE

    def __init__(
        self,
        content: AsyncIterable[bytes],
        on_close: Callable[[], None],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type=MEDIA_TYPE, headers={**HEADERS, **(headers or {})})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream; release what it holds when it ends, is cut or fails."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
