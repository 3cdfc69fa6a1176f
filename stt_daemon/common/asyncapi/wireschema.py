"""JSON Schemas of the wire messages, generated from their pydantic models.

The AsyncAPI document (:mod:`stt_daemon.common.asyncapi`) takes its message
schemas from here, so they cannot drift from the models that decode the messages:
bodies from :data:`BODY_MODELS`, and the two kinds of options that travel as AMQP
headers (a raw-audio job's, a live window's) from the fields of their models.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from stt_daemon.common.liveprotocol import (
    HEADER_DEADLINE,
    HEADER_LANGUAGE,
    HEADER_PROMPT,
    HEADER_SESSION,
    HEADER_TASK,
    LiveReply,
    SessionEvent,
    WindowOptions,
)
from stt_daemon.common.protocol import (
    INLINE_OPTION_HEADERS,
    CancelRequest,
    DaemonAnnouncement,
    JobEvent,
    JobMessage,
    JobOptions,
)

#: Where the schemas live in the document; pydantic writes its references this way.
REF_TEMPLATE = "#/components/schemas/{model}"
#: The models whose JSON is a whole message body.
BODY_MODELS: tuple[type[BaseModel], ...] = (
    JobMessage,
    JobEvent,
    SessionEvent,
    CancelRequest,
    DaemonAnnouncement,
    LiveReply,
)
#: The schema of a raw-audio job's headers (the options of :class:`JobOptions` it may set).
INLINE_OPTIONS = "InlineJobOptions"
#: The schema of a live window's headers, named after the model they decode to.
WINDOW_OPTIONS = WindowOptions.__name__
#: Which header carries which field of :class:`WindowOptions`.
WINDOW_HEADERS = {
    "session": HEADER_SESSION,
    "language": HEADER_LANGUAGE,
    "task": HEADER_TASK,
    "prompt": HEADER_PROMPT,
    "deadline": HEADER_DEADLINE,
}


def ref(name: str) -> dict[str, str]:
    """A reference to the component schema ``name``."""
    return {"$ref": REF_TEMPLATE.format(model=name)}


def component_schemas() -> dict[str, Any]:
    """Every schema the messages use, by name: bodies, what they nest, and the two header sets."""
    _, top = models_json_schema([(m, "validation") for m in BODY_MODELS], ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = dict(top["$defs"])
    schemas[INLINE_OPTIONS] = inline_option_headers()
    schemas[WINDOW_OPTIONS] = window_headers()
    return {name: draft07(schemas[name]) for name in sorted(schemas)}


def inline_option_headers() -> dict[str, Any]:
    """The headers of a raw-audio job: the :class:`JobOptions` fields that ``decode_job`` reads."""
    options = JobOptions.model_json_schema(ref_template=REF_TEMPLATE)
    return {
        "title": INLINE_OPTIONS,
        "description": (
            "The job's options as AMQP headers, each optional (JobOptions). Values may be "
            "typed or strings: flags read `true`, `1` or `yes` as true; numbers are parsed. "
            "Without `model`, the job takes the model of the queue it was routed to."
        ),
        "type": "object",
        "properties": {name: options["properties"][name] for name in INLINE_OPTION_HEADERS},
    }


def window_headers() -> dict[str, Any]:
    """The headers of a live window, each a field of :class:`WindowOptions`."""
    fields = WindowOptions.model_json_schema(ref_template=REF_TEMPLATE)
    if set(WINDOW_HEADERS) != set(fields["properties"]):
        # A new field needs its header here, or the document would not show it.
        raise RuntimeError(f"WINDOW_HEADERS does not name every field of {WINDOW_OPTIONS}")
    properties = {header: fields["properties"][name] for name, header in WINDOW_HEADERS.items()}
    properties[HEADER_DEADLINE] = {
        **properties[HEADER_DEADLINE],
        "description": (
            "Unix time (seconds, written with 3 decimals) after which nobody waits for the "
            "answer: a daemon that takes the window later skips it."
        ),
    }
    return {
        "title": WINDOW_OPTIONS,
        "description": f"{WindowOptions.__doc__} Carried in AMQP headers, one per field.",
        "type": "object",
        "properties": properties,
    }


def draft07(schema: Any) -> Any:
    """``schema`` (pydantic writes JSON Schema 2020-12) in the draft-07 dialect AsyncAPI 3.0 uses.

    The one keyword of 2020-12 that pydantic emits here is ``prefixItems`` (tuples),
    which draft-07 spells as an array-valued ``items``.
    """
    if isinstance(schema, list):
        return [draft07(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: draft07(value) for key, value in schema.items()}
    if "prefixItems" in converted:
        converted["items"] = converted.pop("prefixItems")
        converted["additionalItems"] = False
    return converted
