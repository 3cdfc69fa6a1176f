"""Who published a job: the broker user RabbitMQ vouches for, kept across our copies.

RabbitMQ refuses a message whose ``user_id`` property is not the user of the
connection that publishes it, so a ``user_id`` is proof of its publisher. Every
event a daemon publishes says which user published the job (``producer``); a
status store uses it so that one producer's job can never change another's
record, however it names its job.

The daemons republish jobs (quarantine, hand-back, parts of a long recording);
those copies carry the daemon's own ``user_id``, so the original producer travels
in a header, which is believed only on a message that a daemon published.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

#: Header of the daemons' copies of a job: the user that published the original.
PRODUCER_HEADER = "x-stt-producer"


def producer_of(message: AbstractIncomingMessage, daemon_user: str) -> str:
    """The producer of a delivered job ("" when its publisher set no ``user_id``)."""
    user = message.user_id or ""
    if user == daemon_user:
        given = (message.headers or {}).get(PRODUCER_HEADER)
        if isinstance(given, bytes):
            given = given.decode("utf-8", "replace")
        if isinstance(given, str):
            return given
    return user


def copy_headers(headers: Mapping[str, Any], producer: str) -> dict[str, Any]:
    """``headers`` of a daemon's copy of a job, naming the original producer."""
    return {**headers, PRODUCER_HEADER: producer}
