"""Settings both processes read: the broker, the blob store, the models, the limits they share.

Each process builds its own class on this one (``stt_daemon.config.DaemonSettings``,
``gateway.config.GatewaySettings``), so that its settings list what it reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AmqpDsn,
    Field,
    GetCoreSchemaHandler,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import core_schema
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stt_daemon.common.amqp import broker_user, split_urls, uses_guest_remotely
from stt_daemon.common.claims import ClaimSigner
from stt_daemon.common.topology import Names, QueueLimits, check_model_name
from stt_daemon.common.urls import redact

_AMQP_DSN: TypeAdapter[AmqpDsn] = TypeAdapter(AmqpDsn)


class AmqpUrls(str):
    """``STT_AMQP_URL``: one ``amqp://`` or ``amqps://`` URL, or a cluster's, comma-separated.

    Checked when made: every address must be an ``AmqpDsn``, and the default
    ``guest`` account is refused on a remote host. The value stays the text as
    configured (a ``str``), so that it goes unchanged to ``amqp.connect`` and into
    child processes' environments.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> AmqpUrls:
        for url in split_urls(value):  # ValueError when empty or not amqp(s)://
            _check_address(url)
        return super().__new__(cls, value)

    @property
    def user(self) -> str:
        """The broker user of the first address (``guest`` when none is given)."""
        return broker_user(self)

    @property
    def redacted(self) -> str:
        """The addresses without their passwords, for logs."""
        return ",".join(redact(url) for url in split_urls(self))

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Validated from a string, written as one."""
        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(), serialization=core_schema.to_string_ser_schema()
        )


def _check_address(url: str) -> None:
    """Raise ValueError (naming the address without its password) unless ``url`` will do."""
    try:
        _AMQP_DSN.validate_python(url)
    except ValidationError as exc:
        # Pydantic's own message would echo the URL, password and all.
        reason = exc.errors(include_input=False)[0]["msg"]
        raise ValueError(f"{redact(url)}: {reason}") from None
    if uses_guest_remotely(url):
        # RabbitMQ refuses guest off loopback anyway; say why here, at start.
        raise ValueError(
            f"{redact(url)} uses the default guest account on a remote host: "
            "guest is for local development only; create a user for this deployment"
        )


def model_name(spec: str) -> str:
    """The public name of a model spec: ``tiny.en``, ``name=/dir`` or ``/dir``."""
    if "=" in spec:
        return spec.split("=", 1)[0].strip()
    if "/" in spec:
        return Path(spec).name
    return spec


class CommonSettings(BaseSettings):
    """Settings shared by the gateway and the daemons."""

    # hide_input_in_errors: a refused URL must not print its password in the error.
    model_config = SettingsConfigDict(
        env_prefix="STT_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    amqp_url: AmqpUrls = AmqpUrls("amqp://guest:guest@127.0.0.1:5672/")
    #: Default home of the SQLite status store (gateway) and of the blob directory.
    data_dir: Path = Path("stt-data")
    blob_url: str | None = None
    models: Annotated[list[str], NoDecode] = ["tiny.en"]
    max_queued: int = Field(default=1000, ge=1)
    #: Prefix of every exchange and queue name (``stt`` gives ``stt.jobs``, ``stt.results``...).
    namespace: str = "stt"
    delivery_limit: int = Field(default=10, ge=2)
    heartbeat: int = Field(default=30, ge=0)
    publish_timeout: float = Field(default=10.0, gt=0)
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    #: Key of the HMAC that gateways put on claim checks and daemons check (the same
    #: on all of them). Set, daemons refuse unsigned claim checks; unset, they trust
    #: whoever may publish to the broker (stt_daemon/common/claims.py).
    claim_secret: SecretStr | None = None

    @property
    def broker_user(self) -> str:
        """The broker user this process connects as (the ``user_id`` it publishes with)."""
        return self.amqp_url.user

    @property
    def claim_signer(self) -> ClaimSigner:
        """Signs and checks claim checks with ``claim_secret``."""
        secret = self.claim_secret
        return ClaimSigner(secret.get_secret_value() if secret is not None else None)

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one model is required")
        for spec in value:
            check_model_name(model_name(spec))
        return value

    @property
    def model_names(self) -> list[str]:
        """Public names of the configured models."""
        return [model_name(spec) for spec in self.models]

    @property
    def names(self) -> Names:
        """Broker names for this deployment."""
        return Names(self.namespace)

    @property
    def queue_limits(self) -> QueueLimits:
        """Arguments of the job queues."""
        return QueueLimits(max_queued=self.max_queued, delivery_limit=self.delivery_limit)

    @property
    def resolved_blob_url(self) -> str:
        """``STT_BLOB_URL``, or a directory under the data directory."""
        return self.blob_url or (self.data_dir.resolve() / "blobs").as_uri()
