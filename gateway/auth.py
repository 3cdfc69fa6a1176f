"""API keys: who is calling (an ``owner`` id per key), and per-key request rate limits.

Keys come from ``STT_API_KEYS`` and ``STT_API_KEYS_FILE``; with none configured, auth is off
and every caller is the anonymous owner ``None``. A caller's ``owner`` is a short hash of its
key, never the key itself: it is what the status store records and what logs may show.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection

from gateway.config import GatewaySettings
from gateway.errors import openai_error

log = structlog.get_logger("gateway.auth")

#: WebSocket close codes: policy violation (bad key), try again later (rate limit).
WS_POLICY_VIOLATION = 1008
WS_TRY_AGAIN_LATER = 1013


class KeyFileError(ValueError):
    """``STT_API_KEYS_FILE`` cannot be read."""


def owner_id(key: str) -> str:
    """The public id of a key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def parse_keys(text: str, separator: str | None = None) -> list[str]:
    """Keys from ``STT_API_KEYS`` (``separator=","``) or a key file (one per line).

    Blank entries and ``#`` comment lines are skipped; surrounding spaces are not part of a key.
    """
    parts = text.split(separator) if separator else text.splitlines()
    keys = [part.strip() for part in parts]
    return [key for key in keys if key and not key.startswith("#")]


def load_keys(settings: GatewaySettings) -> list[str]:
    """Every configured key, from the environment and the key file, without duplicates."""
    keys: list[str] = []
    if settings.api_keys is not None:
        keys += parse_keys(settings.api_keys.get_secret_value(), ",")
    if settings.api_keys_file is not None:
        try:
            text = settings.api_keys_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            # The message names the file, never its contents.
            message = f"STT_API_KEYS_FILE: cannot read {settings.api_keys_file}: {exc}"
            raise KeyFileError(message) from None
        keys += parse_keys(text)
    return list(dict.fromkeys(keys))


class KeyRing:
    """The configured keys, matched in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        # Digests, so that every comparison is of 32 bytes whatever the lengths: comparing the
        # raw strings would let the time taken hint at a key's length.
        self._entries = [(hashlib.sha256(k.encode()).digest(), owner_id(k)) for k in keys]

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"KeyRing({len(self)} keys)"

    def owner_of(self, presented: str) -> str | None:
        """The owner id of a presented key, or None when it matches none.

        Every configured key is compared, even after a match, so the time taken does not say
        which key matched (nor how far down the list it is).
        """
        digest = hashlib.sha256(presented.encode()).digest()
        found: str | None = None
        for key_digest, owner in self._entries:
            if hmac.compare_digest(digest, key_digest):
                found = owner
        return found


@dataclass
class TokenBucket:
    """Per-owner token buckets: ``rate`` tokens a second, at most ``burst`` saved up."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str | None, tuple[float, float]] = field(default_factory=dict, repr=False)

    def take(self, owner: str | None) -> float:
        """Spend one token: 0.0 when there was one, else the seconds until there is."""
        now = self.clock()
        tokens, stamp = self._buckets.get(owner, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens >= 1.0:
            self._buckets[owner] = (tokens - 1.0, now)
            return 0.0
        self._buckets[owner] = (tokens, now)
        return (1.0 - tokens) / self.rate


class AuthError(HTTPException):
    """401 or 429 from the auth dependency; ``openai`` answers in OpenAI's error shape."""

    def __init__(
        self, status: int, message: str, code: str, headers: dict[str, str], *, openai: bool
    ) -> None:
        super().__init__(status, message, headers=headers)
        self.code = code
        self.openai = openai


@dataclass
class Auth:
    """What the dependency needs: the key ring and the optional rate limiter."""

    keys: KeyRing
    limiter: TokenBucket | None

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Auth:
        """Load the keys and build the limiter (``STT_KEY_RATE_LIMIT=0``: none)."""
        rate = settings.key_rate_limit
        limiter = TokenBucket(rate, settings.key_rate_burst) if rate > 0 else None
        return cls(KeyRing(load_keys(settings)), limiter)

    @property
    def enabled(self) -> bool:
        """Whether callers must present a key."""
        return len(self.keys) > 0

    def authenticate(self, authorization: str | None, *, openai: bool = False) -> str | None:
        """The caller's owner id from its ``Authorization`` header; AuthError if refused."""
        owner: str | None = None
        if self.enabled:
            scheme, _, presented = (authorization or "").partition(" ")
            presented = presented.strip()
            if scheme.lower() != "bearer" or not presented:
                raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'", openai)
            owner = self.keys.owner_of(presented)
            if owner is None:
                raise _unauthorized("invalid API key", openai)
        if self.limiter is not None:
            wait = self.limiter.take(owner)
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                message = f"rate limit exceeded (STT_KEY_RATE_LIMIT); retry in {seconds} s"
                headers = {"Retry-After": str(seconds)}
                raise AuthError(429, message, "rate_limit_exceeded", headers, openai=openai)
        return owner


def _unauthorized(message: str, openai: bool) -> AuthError:
    headers = {"WWW-Authenticate": "Bearer"}
    return AuthError(401, message, "invalid_api_key", headers, openai=openai)


def _auth_of(conn: HTTPConnection) -> Auth:
    state = conn.app.state
    if not hasattr(state, "auth"):
        # An app assembled without install_auth (a test's partial app): the same settings
        # still decide, so a key configured there is never skipped.
        state.auth = Auth.from_settings(state.services.settings)
    auth: Auth = state.auth
    return auth


def _caller(conn: HTTPConnection, openai: bool) -> str | None:
    auth = _auth_of(conn)
    try:
        return auth.authenticate(conn.headers.get("authorization"), openai=openai)
    except AuthError as exc:
        if conn.scope["type"] == "websocket":
            # Raised before accept(): the server refuses the handshake (HTTP 403).
            code = WS_TRY_AGAIN_LATER if exc.status_code == 429 else WS_POLICY_VIOLATION
            raise WebSocketException(code, reason=str(exc.detail)) from None
        raise


# The dependencies are ``async def`` although they never await: FastAPI runs a plain
# ``def`` dependency in a worker thread, and that hop took 18% of the gateway's CPU
# while it answered status polls as fast as it could (py-spy).
async def caller_owner(conn: HTTPConnection) -> str | None:
    """Dependency: the caller's owner id (None when auth is off); 401/429 as ``{"detail"}``."""
    return _caller(conn, openai=False)


async def openai_caller_owner(conn: HTTPConnection) -> str | None:
    """Dependency: as ``caller_owner``, with errors in OpenAI's shape."""
    return _caller(conn, openai=True)


OwnerDep = Annotated[str | None, Depends(caller_owner)]
OpenAIOwnerDep = Annotated[str | None, Depends(openai_caller_owner)]
#: Router-level ``dependencies=[...]``: the same callables, so FastAPI runs each once a request.
REQUIRE_KEY = Depends(caller_owner)
REQUIRE_KEY_OPENAI = Depends(openai_caller_owner)


async def _auth_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AuthError)
    headers = dict(exc.headers or {})
    if exc.openai:
        return openai_error(exc.status_code, str(exc.detail), code=exc.code, headers=headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def install_auth(app: FastAPI, settings: GatewaySettings) -> Auth:
    """Load the keys onto ``app.state.auth`` and answer AuthError in the right shape."""
    auth = Auth.from_settings(settings)
    app.state.auth = auth
    app.add_exception_handler(AuthError, _auth_error)
    return auth


def log_auth_mode(auth: Auth, settings: GatewaySettings) -> None:
    """One line at start: how many keys, or a warning that anyone may call."""
    limits = {"rate_limit": settings.key_rate_limit, "max_active": settings.key_max_active}
    if auth.enabled:
        log.info("auth.enabled", keys=len(auth.keys), **limits)
    else:
        log.warning(
            "auth.disabled",
            reason="no STT_API_KEYS or STT_API_KEYS_FILE: every caller is anonymous",
            **limits,
        )
