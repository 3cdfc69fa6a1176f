"""The broker contract as an AsyncAPI 3.0 document, generated from the code.

Exchanges, queues and their arguments come from running
:func:`~stt_daemon.common.topology.declare_topology` against a recording channel
(:mod:`~stt_daemon.common.asyncapi.topologyscan`); message schemas from the pydantic models
(:mod:`~stt_daemon.common.asyncapi.wireschema`). What the code cannot say (what each channel
is for, who publishes what) is written here. ``docs/broker/asyncapi.yaml`` is this
module's output, and ``tests/unit/test_asyncapi.py`` fails when it is stale::

    python -m stt_daemon.common.asyncapi > docs/broker/asyncapi.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, get_args

from stt_daemon.common.asyncapi import blockyaml
from stt_daemon.common.asyncapi.channels import ChannelSpec, channels
from stt_daemon.common.asyncapi.messages import messages
from stt_daemon.common.asyncapi.operations import OperationSpec, operations
from stt_daemon.common.asyncapi.wireschema import component_schemas
from stt_daemon.common.liveprotocol import SessionEvent
from stt_daemon.common.protocol import SCHEMA_VERSION, DaemonAnnouncement, EventType
from stt_daemon.common.topology import Names

ASYNCAPI_VERSION = "3.0.0"
#: AsyncAPI's AMQP 0-9-1 bindings.
AMQP_BINDING_VERSION = "0.3.0"

_DESCRIPTION = """\
How gateways, daemons and outside programs talk over RabbitMQ: the exchanges and
queues every process declares at start, the messages on them and who sends what.
Producers in any language submit jobs to the jobs exchange and may await the final
event as an RPC reply; listeners bind their own queues to the results exchange.

Names are shown for the default namespace `stt` (`STT_NAMESPACE`); every name
starts with it. Queue arguments that come from settings are shown at their
defaults: `x-max-length` is `STT_MAX_QUEUED` - 1, `x-delivery-limit` is
`STT_DELIVERY_LIMIT`. Every JSON body has `schema_version` 1; unknown fields are
ignored, so new optional fields do not break older consumers."""

_TAGS = {
    "producer": "Submits jobs (any program with the producer role).",
    "listener": "Follows results from its own queues on the results exchange.",
    "gateway": "The HTTP gateway.",
    "daemon": "A transcription daemon (and `stt-dead`, which runs as one).",
}


def build(names: Names | None = None) -> dict[str, Any]:
    """The whole document, for ``names`` (default namespace ``stt``)."""
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "stt-jobs broker contract",
            "version": str(SCHEMA_VERSION),
            "description": _DESCRIPTION,
            "license": {"name": "MIT"},
            "tags": [{"name": name, "description": text} for name, text in _TAGS.items()],
        },
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "A RabbitMQ node or cluster (quorum queues, streams): STT_AMQP_URL.",
            }
        },
        "defaultContentType": "application/json",
        "channels": {spec.id: _channel(spec) for spec in channels(names or Names())},
        "operations": {op.id: _operation(op) for op in operations()},
        "components": {
            "messages": messages(),
            "schemas": component_schemas(),
            "parameters": _parameters(),
        },
    }


def _channel(spec: ChannelSpec) -> dict[str, Any]:
    """One channel object: its address, messages, parameters and AMQP binding."""
    channel: dict[str, Any] = {"address": spec.address, "title": spec.title}
    channel["description"] = spec.description
    channel["messages"] = {m: {"$ref": f"#/components/messages/{m}"} for m in spec.messages}
    if spec.parameters:
        channel["parameters"] = {
            name: {"$ref": f"#/components/parameters/{ref}"} for name, ref in spec.parameters
        }
    channel["bindings"] = {"amqp": {**spec.binding, "bindingVersion": AMQP_BINDING_VERSION}}
    return channel


def _parameters() -> dict[str, Any]:
    """The variable parts of addresses."""
    events = [e.value.removeprefix("job.") for e in EventType]
    news = [
        e.removeprefix("session.") for e in get_args(SessionEvent.model_fields["event"].annotation)
    ]
    states = list(get_args(DaemonAnnouncement.model_fields["state"].annotation))
    return {
        "model": {
            "description": (
                "A model name: letters, digits, `.`, `_` or `-`, at most 64. Each gateway and "
                "daemon declares the queues of the models it is configured with (STT_MODELS)."
            ),
            "examples": ["tiny.en", "base"],
        },
        "jobEvent": {"description": "The event (`job.<event>`).", "enum": events},
        "sessionEvent": {"description": "The news (`session.<event>`).", "enum": news},
        "state": {"description": "The daemon's state.", "enum": states},
        "delay_ms": {
            "description": "A webhook retry delay, milliseconds; one queue per delay in use.",
            "examples": ["1000"],
        },
    }


def _operation(op: OperationSpec) -> dict[str, Any]:
    """One operation object: who sends or receives which messages, and any reply."""
    body: dict[str, Any] = {
        "action": op.action,
        "channel": {"$ref": f"#/channels/{op.channel}"},
        "summary": op.summary,
        "description": op.description,
        "tags": [{"name": tag} for tag in op.tags],
        "messages": [{"$ref": f"#/channels/{op.channel}/messages/{m}"} for m in op.messages],
    }
    if op.amqp:
        body["bindings"] = {"amqp": {**op.amqp, "bindingVersion": AMQP_BINDING_VERSION}}
    if op.reply is not None:
        body["reply"] = {
            "address": {
                "description": "The request's reply_to property.",
                "location": "$message.header#/reply_to",
            },
            "channel": {"$ref": f"#/channels/{op.reply.channel}"},
            "messages": [
                {"$ref": f"#/channels/{op.reply.channel}/messages/{m}"} for m in op.reply.messages
            ],
        }
    return body


def render(document: dict[str, Any], form: str = "yaml") -> str:
    """The document as YAML (block style) or JSON text."""
    if form == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return blockyaml.dump(document)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the document to standard output."""
    parser = argparse.ArgumentParser(
        prog="python -m stt_daemon.common.asyncapi",
        description="Print the AsyncAPI document of the broker contract.",
    )
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")
    parser.add_argument("--namespace", default="stt", help="STT_NAMESPACE (default: stt)")
    args = parser.parse_args(argv)
    sys.stdout.write(render(build(Names(args.namespace)), args.format))
    return 0
