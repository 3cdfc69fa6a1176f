"""Whose job events the gateway believes: the one rule its three consumers of events apply.

The recorder (status store), the webhook sender and the event feed (streams) all
read the results exchange, and each must ignore what a forger put there. RabbitMQ
refuses a message whose ``user_id`` property is not the publishing connection's
user, so the ``user_id`` of a delivery names its publisher for certain. The
daemons set it on every event, and so does the gateway on what it publishes
itself (a cancellation, delayed webhook calls, live sessions' news); anyone else
who may publish to the exchange (a producer, a listener with too wide a grant)
sends none or its own, and is not believed.
"""

from __future__ import annotations

from collections.abc import Collection

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from yarl import URL

from gateway.config import GatewaySettings

#: The default of ``STT_EVENT_PUBLISHERS``: the daemons' broker user (stt_daemon/roles.py).
DEFAULT_PUBLISHERS = ("stt-daemon",)


def trusted_publishers(settings: GatewaySettings) -> frozenset[str]:
    """``STT_EVENT_PUBLISHERS`` and the gateway's own broker user (the events it publishes)."""
    return frozenset(settings.event_publishers) | {settings.broker_user}


def connection_user(connection: AbstractRobustConnection) -> str:
    """The broker user a connection logged in as (``guest`` when its URL names none)."""
    return URL(str(getattr(connection, "url", ""))).user or "guest"


def believed(message: AbstractIncomingMessage, trusted: Collection[str]) -> bool:
    """True when the message's broker-checked publisher is one of ``trusted``."""
    return message.user_id is not None and message.user_id in trusted
