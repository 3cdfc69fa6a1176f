"""Settings of ``stt-gateway`` (env prefix ``STT_``, also read from ``.env``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from gateway.egress import EgressPolicy
from gateway.store import check_status_url
from stt_daemon.common.cores import usable_cores
from stt_daemon.common.settings import CommonSettings


class GatewaySettings(CommonSettings):
    """Gateway settings; ``STT_MODELS`` lists the models it accepts jobs for."""

    #: The status store: ``sqlite:///...`` or ``redis://...``; unset, SQLite under ``data_dir``.
    status_url: str | None = None
    #: Largest upload accepted, MB.
    max_upload_mb: float = Field(default=100.0, gt=0)
    #: Seconds suggested to clients in ``Retry-After`` when the queue is full.
    retry_after: int = Field(default=5, ge=1)
    #: Events the recorder may hold unacknowledged (status store write batch).
    recorder_prefetch: int = Field(default=64, ge=1)
    #: Key of the HMAC-SHA256 signature on webhook calls; no secret = no callbacks.
    callback_secret: SecretStr | None = None
    #: Tries per webhook call (exponential backoff between them, in delay queues).
    callback_max_attempts: int = Field(default=10, ge=1)
    #: First backoff delay in seconds (doubling, capped at 300 s).
    callback_backoff: float = Field(default=1.0, ge=0)
    #: Internal receivers webhooks may call: comma-separated CIDRs, addresses, host
    #: names and ``*.suffix`` names. Others must be public addresses.
    callback_allow: str = ""
    #: Webhook calls in flight at once to one destination host (per gateway process).
    callback_per_host: int = Field(default=4, ge=1)
    #: Seconds to resolve and connect to a webhook receiver.
    callback_connect_timeout: float = Field(default=3.0, gt=0)
    #: Seconds one webhook call may take in all, until the response's status line.
    callback_timeout: float = Field(default=10.0, gt=0)
    #: Seconds a synchronous request (OpenAI-compatible endpoints) waits for its job.
    sync_timeout: float = Field(default=300.0, gt=0)
    #: Seconds final jobs and their results are kept after they finish; 0 = forever.
    result_ttl: int = Field(default=7 * 24 * 3600, ge=0)
    #: Comma-separated API keys; with none here nor in the file, auth is off.
    api_keys: SecretStr | None = None
    #: A file of API keys, one a line (blank lines and ``#`` comments skipped).
    api_keys_file: Path | None = None
    #: ``/docs`` and ``/openapi.json``: ``auto`` serves them only when no API keys are
    #: configured (a private deployment does not hand its map to anyone who asks).
    api_docs: Literal["auto", "on", "off"] = "auto"
    #: Requests a second per key (token bucket, per gateway process); 0 = no limit.
    key_rate_limit: float = Field(default=0.0, ge=0)
    #: Requests a key may make at once after a pause (the bucket's size).
    key_rate_burst: int = Field(default=10, ge=1)
    #: Unfinished jobs a key may have; 0 = no limit.
    key_max_active: int = Field(default=0, ge=0)
    #: Gateway processes sharing the port (``STT_GATEWAY_WORKERS``); 0 = one per CPU core.
    gateway_workers: int = Field(default=1, ge=0)
    #: Open sockets per gateway process; when full, the longest wait for a request head goes.
    max_connections: int = Field(default=1000, ge=1)
    #: Seconds a client has to send a request's line and headers.
    header_timeout: float = Field(default=10.0, gt=0)
    #: Seconds of grace for a request body, plus one per ``body_min_rate`` bytes received.
    body_timeout: float = Field(default=30.0, gt=0)
    #: Bytes a second a request body must average (after the grace) to keep its socket.
    body_min_rate: int = Field(default=32 * 1024, ge=1)
    #: Largest websocket audio message in MB (at most ``STT_MAX_UPLOAD_MB``); it is held in memory.
    ws_max_mb: float = Field(default=16.0, gt=0)
    #: Websockets sending audio at once per process; others wait, reading paused.
    ws_max_uploads: int = Field(default=2, ge=1)
    #: Seconds a websocket has, from its accept, to deliver its audio message.
    ws_timeout: float = Field(default=30.0, gt=0)
    #: Broker users whose events the recorder and the webhook sender believe (comma-separated;
    #: RabbitMQ vouches for a message's ``user_id``). The gateway's own user is always added.
    event_publishers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["stt-daemon"])
    #: Deliveries of one event the status store may refuse (1 s apart) before it is dropped.
    recorder_max_attempts: int = Field(default=20, ge=1)
    #: Event streams open at once per gateway process (``GET /v1/jobs/{id}/events`` and
    #: ``stream=true`` transcriptions); past it, 503. Each lasts at most ``sync_timeout``.
    max_event_streams: int = Field(default=100, ge=0)
    #: Seconds without an event after which a stream sends a ``: keep-alive`` comment.
    event_stream_heartbeat: float = Field(default=15.0, gt=0)

    #: Live-transcription sessions open at once per gateway process; past it, refused.
    live_max_sessions: int = Field(default=8, ge=0)
    #: Seconds a live session may go without receiving audio before it is closed.
    live_idle_timeout: float = Field(default=30.0, gt=0)
    #: Longest live session, seconds of audio.
    live_max_seconds: float = Field(default=4 * 3600.0, gt=0)
    #: New audio between two live windows, seconds (about one request a second).
    live_step: float = Field(default=1.0, ge=0.2, le=10)
    #: Seconds a live window waits for a daemon before the next supersedes it.
    live_window_timeout: float = Field(default=5.0, gt=0, le=60)
    #: Silence that ends an utterance, seconds.
    live_end_silence: float = Field(default=0.5, ge=0.1, le=10)

    @property
    def resolved_status_url(self) -> str:
        """``STT_STATUS_URL``, or SQLite under the data directory."""
        return self.status_url or f"sqlite:///{self.data_dir.resolve() / 'status.db'}"

    @property
    def max_upload_bytes(self) -> int:
        """Upload limit in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def serves_api_docs(self) -> bool:
        """Whether ``/docs`` and ``/openapi.json`` are served."""
        keys = self.api_keys is not None or self.api_keys_file is not None
        return self.api_docs == "on" or (self.api_docs == "auto" and not keys)

    @property
    def worker_count(self) -> int:
        """``gateway_workers`` with 0 resolved to the number of cores."""
        return self.gateway_workers or usable_cores()

    @property
    def ws_max_bytes(self) -> int:
        """``ws_max_mb`` in bytes, never above the HTTP upload limit."""
        return min(int(self.ws_max_mb * 1024 * 1024), self.max_upload_bytes)

    @field_validator("event_publishers", mode="before")
    @classmethod
    def _split_publishers(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("callback_allow")
    @classmethod
    def _check_callback_allow(cls, value: str) -> str:
        # A typo in the allow-list is refused at start-up, not at the first webhook.
        EgressPolicy.parse(value)
        return value

    @field_validator("status_url")
    @classmethod
    def _check_status_url(cls, value: str | None) -> str | None:
        # A typo in the store's URL is refused at start-up, not at the first request.
        return None if value is None else check_status_url(value)
