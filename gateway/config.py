"""Settings of ``stt-gateway`` (env prefix ``STT_``, also read from ``.env``)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from stt_daemon.config import CommonSettings


class GatewaySettings(CommonSettings):
    """Gateway settings; ``STT_MODELS`` lists the models it accepts jobs for."""

    #: Seconds suggested to clients in ``Retry-After`` when the queue is full.
    retry_after: int = Field(default=5, ge=1)
    #: Events the recorder may hold unacknowledged (status store write batch).
    recorder_prefetch: int = Field(default=64, ge=1)
    #: Key of the HMAC-SHA256 signature on webhook calls; no secret = no callbacks.
    callback_secret: SecretStr | None = None
    #: Tries per webhook call (exponential backoff with jitter between them).
    callback_max_attempts: int = Field(default=10, ge=1)
    #: First backoff delay in seconds (doubling, capped at 300 s).
    callback_backoff: float = Field(default=1.0, ge=0)
    #: Seconds a synchronous request (OpenAI-compatible endpoints) waits for its job.
    sync_timeout: float = Field(default=300.0, gt=0)
