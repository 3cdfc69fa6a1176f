"""Wyoming events off the wire, within bounds a hostile peer cannot stretch.

An event is a JSON header line, then ``data_length`` bytes of JSON merged into
its ``data``, then ``payload_length`` bytes of payload (the ``wyoming`` package's
README, "Format"). ``wyoming.event.async_read_event`` trusts both lengths (a
peer announcing a gigabyte gets a gigabyte buffered) and lets a header without
``type`` raise ``KeyError``; this reader bounds each part and turns every
malformed event into :class:`BadEvent`, which ends that connection only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wyoming.event import Event

#: Longest header line: asyncio's default stream limit, which the listener keeps.
MAX_HEADER_BYTES = 64 * 1024
#: Longest additional data (JSON merged into ``data``).
MAX_DATA_BYTES = 64 * 1024
#: Largest payload: 1 MiB is 32 s of 16 kHz 16-bit mono, 2.7 s of 48 kHz 32-bit stereo.
MAX_PAYLOAD_BYTES = 1024 * 1024
#: Longest event type.
MAX_TYPE_CHARS = 64


class BadEvent(Exception):
    """Not an event this server accepts: the connection gets an error and is closed."""


@dataclass(frozen=True)
class Incoming:
    """An event and the protocol version its sender announced (``version`` of its header)."""

    event: Event
    version: tuple[int, ...] | None


#: Gives the largest payload accepted for an event type (or raises BadEvent).
PayloadLimit = Callable[[str], int]


def default_limit(event_type: str) -> int:
    """Audio chunks may carry :data:`MAX_PAYLOAD_BYTES`; other events a little."""
    return MAX_PAYLOAD_BYTES if event_type == "audio-chunk" else MAX_DATA_BYTES


async def read_event(
    reader: asyncio.StreamReader, payload_limit: PayloadLimit = default_limit
) -> Incoming | None:
    """The next event; None at the end of the stream (also mid-event: the peer left)."""
    try:
        line = await reader.readline()
    except ValueError:  # asyncio's LimitOverrunError: no newline within the limit
        raise BadEvent(f"event header longer than {MAX_HEADER_BYTES} bytes") from None
    if not line.endswith(b"\n"):
        return None
    header = _json_object(line, "event header")
    event_type = header.get("type")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= MAX_TYPE_CHARS:
        raise BadEvent("the event header has no valid 'type'")
    data = header.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise BadEvent(f"{event_type}: 'data' is not an object")
    data_length = _length(header, "data_length", event_type)
    payload_length = _length(header, "payload_length", event_type)
    if data_length > MAX_DATA_BYTES:
        raise BadEvent(f"{event_type}: data_length over {MAX_DATA_BYTES} bytes")
    limit = payload_limit(event_type)
    if payload_length > limit:
        raise BadEvent(f"{event_type}: payload_length {payload_length} over {limit} bytes")
    try:
        if data_length:
            data.update(_json_object(await reader.readexactly(data_length), "event data"))
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        return None
    version = parse_version(header.get("version"))
    return Incoming(Event(type=event_type, data=data, payload=payload), version)


def parse_version(value: object) -> tuple[int, ...] | None:
    """``"1.7.0"`` as ``(1, 7, 0)``; None when absent or not a dotted number."""
    if not isinstance(value, str) or len(value) > 32:
        return None
    try:
        return tuple(int(part) for part in value.split(".")[:3])
    except ValueError:
        return None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadEvent(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise BadEvent(f"{what} is not a JSON object")
    return value


def _length(header: dict[str, Any], key: str, event_type: str) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadEvent(f"{event_type}: {key} is not a non-negative integer")
    return value
