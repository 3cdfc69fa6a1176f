"""The server events of one realtime connection (``gateway/routes/realtime.py``).

Events are queued in order, whichever task produced them (the reader, a live
session's pump), and one task writes them to the socket. A client that reads
nothing while it keeps sending would make the queue grow without end: past
:data:`OUTBOX_HIGH_WATER` the reader waits for room, so the client is not read
either until it catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import WebSocket

from gateway.openai_realtime import Event, new_id

#: Server events queued for a client that does not read before we stop reading it.
OUTBOX_HIGH_WATER = 256
#: Seconds the last events have to reach a client before the socket closes.
FLUSH_SECONDS = 5.0


class Outbox:
    """Server events in order, written to the socket by one task of its own."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        #: Set while the queue is short enough for the reader to go on.
        self._room = asyncio.Event()
        self._room.set()
        self._writer: asyncio.Task[None] | None = None

    def start(self, name: str) -> None:
        """Start writing."""
        self._writer = asyncio.create_task(self._write(), name=name)

    def emit(self, event: Event) -> None:
        """Queue a server event (in order, whichever task produced it)."""
        self._queue.put_nowait({"event_id": new_id("event"), **event})

    async def wait_for_room(self) -> None:
        """Return at once, or when a client that fell behind has caught up."""
        if self._queue.qsize() > OUTBOX_HIGH_WATER:
            self._room.clear()
            await self._room.wait()

    async def flush(self) -> None:
        """Write what is queued (for :data:`FLUSH_SECONDS` at most), then stop writing."""
        self._queue.put_nowait(None)
        writer = self._writer
        if writer is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, FLUSH_SECONDS)
        writer.cancel()

    async def _write(self) -> None:
        try:
            while (event := await self._queue.get()) is not None:
                if self._queue.qsize() <= OUTBOX_HIGH_WATER:
                    self._room.set()
                await self._ws.send_text(json.dumps(event))
        except Exception:
            return  # the client is gone; the reader sees it too
        finally:
            self._room.set()
