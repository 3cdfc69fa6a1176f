"""Connection limits uvicorn lacks: header and body deadlines, a socket cap, websocket upload slots.

uvicorn (0.54) has no deadline for a request's head or body: a client that sends one
header byte every few seconds, or a body at a trickle, keeps its socket forever, and
``limit_concurrency`` only answers 503 to everyone once such sockets fill it, which is
the attacker's aim. The two protocol classes here are uvicorn's own, with:

* a deadline for each request head (``STT_HEADER_TIMEOUT``, from the connection or the
  end of the previous response), on top of h11's cap on the head's size;
* a body deadline that a steady sender keeps pushing back: ``STT_BODY_TIMEOUT`` plus
  one second per ``STT_BODY_MIN_RATE`` bytes received (Apache mod_reqtimeout's rule);
  the clock stops while the gateway itself is not reading;
* a short linger after a response sent before the body was read (an early 413/401):
  the rest is read and dropped for at most ``LINGER_SECONDS`` and ``LINGER_BYTES``;
* at most ``STT_MAX_CONNECTIONS`` sockets per process: when full, the connection that
  has waited longest for a request head (slowloris, idle keep-alive) is closed to make
  room; when none is waiting, the newcomer gets a 503 and is closed;
* websockets: ASGI hands the application whole messages, so uvicorn assembles each
  one in memory and it cannot be streamed to the blob store. Large frames are cut
  into fragments as they arrive (:mod:`gateway.wsframes`), so the message is unmasked
  piece by piece and held about twice at its peak. Past ``WS_FREE_BYTES`` a socket
  needs one of ``STT_WS_MAX_UPLOADS`` upload slots to read on; the others wait with
  reading paused. Websocket audio thus holds at most slots x 2 x ``STT_WS_MAX_MB``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from weakref import WeakKeyDictionary

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gateway.wsframes import FrameSplitter

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from gateway.config import GatewaySettings

log = structlog.get_logger("gateway.limits")

#: Bytes of one request head (request line and headers), h11's incomplete-event cap.
MAX_HEADER_BYTES = 64 * 1024
#: After an early response, how long and how much of the unread body is read and dropped,
#: so that the client sees the response instead of a reset (closing with unread bytes
#: sends an RST, which makes the client's stack discard the 413 it has not read yet).
#: Dropped bytes cost no memory; the time bound is what holds a slow client off.
LINGER_SECONDS = 2.0
LINGER_BYTES = 8 * 1024 * 1024
#: Bytes a websocket may send without an upload slot (pings, close frames, tiny messages).
WS_FREE_BYTES = 16 * 1024
#: Largest message on a live-transcription socket: seconds of audio, not a recording.
LIVE_MAX_MESSAGE = 1024 * 1024
#: Websocket paths of live transcription (WhisperLive's root, OpenAI's realtime).
LIVE_PATHS = (b"/", b"/v1/realtime")


def is_live_path(request: bytes) -> bool:
    """True when an upgrade request (its first line) is for a live-transcription path."""
    line = request.split(b"\r\n", 1)[0].split(b" ")
    if len(line) < 2:
        return False
    path = line[1].split(b"?", 1)[0]
    return path in LIVE_PATHS


_TOO_MANY = b'{"detail":"too many connections; try again shortly","status_code":503}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_TOO_MANY), _TOO_MANY)
)

Phase = Literal["head", "body", "linger"]


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits one gateway process enforces on its sockets."""

    max_connections: int = 1000
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_min_rate: int = 32 * 1024
    ws_max_uploads: int = 2

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> ConnectionLimits:
        """The limits named in the settings."""
        return cls(
            max_connections=settings.max_connections,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            body_min_rate=settings.body_min_rate,
            ws_max_uploads=settings.ws_max_uploads,
        )


_configured: ConnectionLimits | None = None


def configure(limits: ConnectionLimits) -> None:
    """Set this process's limits (tests, and ``main()`` before uvicorn starts)."""
    global _configured
    _configured = limits


def _process_limits() -> ConnectionLimits:
    # uvicorn builds the protocols itself, with arguments of its own, and a spawned
    # worker gets the classes by name: the environment is what it shares with main().
    global _configured
    if _configured is None:
        from gateway.config import GatewaySettings

        _configured = ConnectionLimits.from_settings(GatewaySettings())
    return _configured


def uvicorn_options(settings: GatewaySettings) -> dict[str, Any]:
    """The ``uvicorn.run`` arguments that bound what one client can hold."""
    return {
        # h11, not httptools: httptools has no cap on a request head's size.
        "http": GuardedH11Protocol,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "ws": GuardedWebSocketProtocol,
        "ws_max_size": settings.ws_max_bytes,
        # Audio does not compress; deflate would only cost memory per socket.
        "ws_per_message_deflate": False,
        "timeout_keep_alive": 5,
        # Connections the kernel queues before we accept them (it caps this at somaxconn).
        "backlog": min(settings.max_connections, 2048),
    }


class _Guard:
    """Per-server bookkeeping: sockets waiting for a request head, websocket upload slots."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        #: Oldest first: the first to go when the process is at its socket cap.
        self.heads: OrderedDict[GuardedH11Protocol, None] = OrderedDict()
        #: Sockets we closed whose connection_lost has not come yet.
        self.dropping = 0
        self.ws_free = limits.ws_max_uploads
        self.ws_waiting: deque[GuardedWebSocketProtocol] = deque()

    def take_ws_slot(self, proto: GuardedWebSocketProtocol) -> bool:
        if self.ws_free > 0:
            self.ws_free -= 1
            return True
        self.ws_waiting.append(proto)
        return False

    def release_ws_slot(self) -> None:
        while self.ws_waiting:
            waiter = self.ws_waiting.popleft()
            if not waiter.transport.is_closing():
                waiter.slot_granted()
                return
        self.ws_free += 1


_guards: WeakKeyDictionary[ServerState, _Guard] = WeakKeyDictionary()


def _guard_for(server_state: ServerState) -> _Guard:
    guard = _guards.get(server_state)
    if guard is None:
        guard = _guards[server_state] = _Guard(_process_limits())
    return guard


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with head and body deadlines and a socket cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = _guard_for(server_state)
        self._limits = self._guard.limits
        self._phase: Phase | None = None
        self._deadline = 0.0
        self._received = 0
        self._timer: asyncio.TimerHandle | None = None
        self._dropped = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) - self._guard.dropping > self._limits.max_connections:
            if not self._guard.heads:
                log.warning("connections.refused", limit=self._limits.max_connections)
                self.transport.write(_REFUSAL)
                self._drop(abort=False)
                return
            oldest = next(iter(self._guard.heads))
            log.info("connections.evicted", waited=round(oldest._age(), 1))
            oldest._drop()
        self._sync()

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave()
        if self._dropped:
            self._guard.dropping -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase is not None and self._phase != "head":
            self._received += len(data)
            if self._phase == "linger" and self._received > LINGER_BYTES:
                self._drop()
                return
        super().data_received(data)
        self._sync()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # From here the websocket protocol owns the socket (and counts in connections).
        self._leave()
        super().handle_websocket_upgrade(event)

    def _sync(self) -> None:
        """Start the clock of the phase the connection is now in."""
        if self._dropped or self.transport.is_closing():
            return
        theirs, ours = self.conn.their_state, self.conn.our_state
        phase: Phase | None = None
        if theirs is h11.IDLE:
            phase = "head"
        elif theirs is h11.SEND_BODY:
            phase = "linger" if ours in (h11.DONE, h11.MUST_CLOSE) else "body"
        if phase == self._phase:
            return
        self._leave()
        self._phase, self._received = phase, 0
        now = self.loop.time()
        if phase == "head":
            self._guard.heads[self] = None
            self._deadline = now + self._limits.header_timeout
        elif phase == "body":
            self._deadline = now + self._limits.body_timeout
        elif phase == "linger":
            self._deadline = now + LINGER_SECONDS
        if phase is not None:
            self._timer = self.loop.call_at(self._deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        now = self.loop.time()
        if self._phase == "body":
            if self.flow.read_paused:
                # The application is not reading (busy, or done with the body): not the
                # client's fault, so it gets a fresh grace once reading resumes.
                self._deadline = now + self._limits.body_timeout - self._earned()
                self._timer = self.loop.call_at(now + self._limits.body_timeout, self._expired)
                return
            due = self._deadline + self._earned()
            if now < due:
                self._timer = self.loop.call_at(due, self._expired)
                return
        if self._phase in ("head", "body"):
            log.info(f"connections.{self._phase}_timeout", client=_client(self.client))
        self._drop(abort=self._phase != "linger")

    def _earned(self) -> float:
        """Seconds the body's bytes so far add to its deadline."""
        return self._received / self._limits.body_min_rate

    def _age(self) -> float:
        return self.loop.time() - (self._deadline - self._limits.header_timeout)

    def _leave(self) -> None:
        """Stop the current phase's clock."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard.heads.pop(self, None)
        self._phase = None

    def _drop(self, abort: bool = True) -> None:
        """Close the socket: abort() for a misbehaving client, close() to flush a reply."""
        self._leave()
        if self._dropped:
            return
        self._dropped = True
        self._guard.dropping += 1
        if abort:
            self.transport.abort()
        else:
            self.transport.close()


def _client(client: tuple[str, int] | None) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol, reading past ``WS_FREE_BYTES`` only with an upload slot."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = _guard_for(server_state)
        self._handshake_seen = False
        self._free = WS_FREE_BYTES
        self._slot = False
        self._held: list[bytes] = []
        self._splitter = FrameSplitter(config.ws_max_size)

    def data_received(self, data: bytes) -> None:
        if not self._handshake_seen:
            # The upgrade request, replayed by the HTTP protocol: its size is h11's to cap.
            self._handshake_seen = True
            if is_live_path(data):
                self._live()
            super().data_received(data)
            return
        if self._held:
            # Already waiting for a slot (bytes the transport had before the pause).
            self._held.append(data)
            return
        if not self._slot and len(data) > self._free:
            if not self._guard.take_ws_slot(self):
                self._held.append(data)
                self.transport.pause_reading()
                return
            self._slot = True
        elif not self._slot:
            self._free -= len(data)
        self._parse(data)

    def _live(self) -> None:
        """A live-transcription socket: audio arrives for as long as the session lasts.

        An upload slot would be held for the whole session, so only slots' worth of
        sessions could stream at once whatever ``STT_LIVE_MAX_SESSIONS`` says. Live
        sockets need none: their sessions are counted by that limit, their audio is
        taken a little at a time (backpressure pauses reading), and each message is
        capped at ``LIVE_MAX_MESSAGE`` instead of the upload-sized ``ws_max_size``.
        """
        self._free = 1 << 62
        self.conn.max_message_size = min(LIVE_MAX_MESSAGE, self.config.ws_max_size)
        self._splitter = FrameSplitter(LIVE_MAX_MESSAGE)

    def _parse(self, data: bytes) -> None:
        if frames := self._splitter.feed(data):
            super().data_received(frames)

    def slot_granted(self) -> None:
        """A slot came free: read what was held back, then resume reading."""
        self._slot = True
        held, self._held = b"".join(self._held), []
        self._parse(held)
        if not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._slot:
            self._slot = False
            self._guard.release_ws_slot()
        elif self._held:
            self._held = []
            with contextlib.suppress(ValueError):
                self._guard.ws_waiting.remove(self)
        super().connection_lost(exc)
