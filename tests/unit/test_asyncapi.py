"""The AsyncAPI document of the broker contract: current, valid, and complete.

``docs/broker/asyncapi.yaml`` must be what ``python -m stt_daemon.common.asyncapi``
writes now, must validate against the official AsyncAPI 3.0.0 JSON Schema
(vendored in tests/fixtures/asyncapi/, from the ``@asyncapi/specs`` npm package),
and must show every wire model and every broker name the code has.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml
from jsonschema import Draft7Validator
from pydantic import BaseModel

from gateway import callbacks
from stt_daemon import provenance, quarantine
from stt_daemon.common import asyncapi, liveprotocol, protocol
from stt_daemon.common.asyncapi import messages as asyncapi_messages
from stt_daemon.common.claims import ClaimSigner
from stt_daemon.common.liveprotocol import LiveReply, LiveWord, SessionEvent, WindowOptions
from stt_daemon.common.protocol import (
    AudioRef,
    CancelRequest,
    DaemonAnnouncement,
    EventType,
    JobEvent,
    JobMessage,
    JobOptions,
    TranscriptResult,
)
from stt_daemon.common.topology import Names

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "broker" / "asyncapi.yaml"
SCHEMA = ROOT / "tests" / "fixtures" / "asyncapi" / "asyncapi-3.0.0.schema.json"
REGENERATE = "python -m stt_daemon.common.asyncapi > docs/broker/asyncapi.yaml"
#: Models of the wire modules that never travel, and why.
NOT_ON_THE_WIRE = {"InboundJob": "a job as decoded, message and audio bytes together"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document as generated now, in its JSON form."""
    built: dict[str, Any] = json.loads(json.dumps(asyncapi.build()))
    return built


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    """The official AsyncAPI 3.0.0 schema (self-contained: every $ref is inside it)."""
    schema = json.loads(SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def test_the_committed_document_is_current() -> None:
    committed = COMMITTED.read_text(encoding="utf-8")
    assert committed == asyncapi.render(asyncapi.build()), (
        f"{COMMITTED.relative_to(ROOT)} is stale: regenerate it with `{REGENERATE}`"
    )


def test_the_yaml_reads_back_as_the_document(document: dict[str, Any]) -> None:
    assert yaml.safe_load(COMMITTED.read_text(encoding="utf-8")) == document


def test_the_json_form_is_the_same_document(
    document: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert asyncapi.main(["--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == document


def test_the_document_validates_against_the_asyncapi_schema(
    document: dict[str, Any], validator: Draft7Validator
) -> None:
    errors = [
        f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)
    ]
    assert errors == []


def _drop_operation_action(doc: dict[str, Any]) -> None:
    del doc["operations"]["submitJob"]["action"]


def _bad_exchange_type(doc: dict[str, Any]) -> None:
    doc["channels"]["jobs"]["bindings"]["amqp"]["exchange"]["type"] = "x-consistent-hash"


def _bad_payload_schema(doc: dict[str, Any]) -> None:
    doc["components"]["schemas"]["JobEvent"]["properties"]["job_id"]["type"] = "text"


def _server_without_host(doc: dict[str, Any]) -> None:
    del doc["servers"]["rabbitmq"]["host"]


@pytest.mark.parametrize(
    "breaks",
    [_drop_operation_action, _bad_exchange_type, _bad_payload_schema, _server_without_host],
)
def test_the_validation_catches_a_broken_document(
    document: dict[str, Any], validator: Draft7Validator, breaks: Callable[[dict[str, Any]], None]
) -> None:
    # Each break sits behind several $refs of the schema (operation, AMQP channel
    # binding 0.3.0, JSON Schema draft-07 meta-schema, server): seen only if they resolve.
    broken = copy.deepcopy(document)
    breaks(broken)
    assert list(validator.iter_errors(broken))


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _pointer(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    # JSON Schema validation does not follow the document's own $refs: a typo in a
    # channel or message id would pass it, and break client generators.
    refs = {v for k, v in _walk_items(document) if k == "$ref"}
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        try:
            _pointer(document, ref)
        except (KeyError, TypeError):
            pytest.fail(f"{ref} points at nothing in the document")


def _walk_items(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk_items(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_items(item)


def test_every_address_parameter_is_declared(document: dict[str, Any]) -> None:
    for channel_id, channel in document["channels"].items():
        wanted = set(re.findall(r"{(\w+)}", channel.get("address") or ""))
        assert wanted == set(channel.get("parameters", {})), channel_id


def _wire_models() -> set[str]:
    """Every public pydantic model of the wire modules."""
    found = set()
    for module in (protocol, liveprotocol):
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseModel)
                and value.__module__.startswith(module.__name__)
                and not name.startswith("_")
            ):
                found.add(name)
    return found


def test_every_wire_model_has_its_schema(document: dict[str, Any]) -> None:
    models = _wire_models()
    assert {"JobMessage", "JobEvent", "LiveReply", "WindowOptions"} <= models  # the scan works
    missing = models - set(NOT_ON_THE_WIRE) - set(document["components"]["schemas"])
    assert not missing, f"wire models missing from the document: {sorted(missing)}"


def test_every_body_model_is_a_message_payload(document: dict[str, Any]) -> None:
    payloads = {
        message["payload"].get("$ref", "").rsplit("/", 1)[-1]
        for message in document["components"]["messages"].values()
    }
    bodies = {"JobMessage", "JobEvent", "SessionEvent", "CancelRequest"}
    bodies |= {"DaemonAnnouncement", "LiveReply"}
    assert bodies <= payloads


def _names_in(names: Names) -> dict[str, str]:
    """Every name ``Names`` gives, by member, with ``{parameter}`` for each argument."""
    found = {}
    for member, value in inspect.getmembers(type(names)):
        if member.startswith("_"):
            continue
        if isinstance(value, property):
            found[member] = getattr(names, member)
        elif inspect.isfunction(value):
            found[member] = _name_with_parameters(getattr(names, member))
    return found


def _name_with_parameters(name_of: Callable[..., str]) -> str:
    placeholders: dict[str, Any] = {}
    parameters = inspect.signature(name_of, eval_str=True).parameters.values()
    for number, parameter in enumerate(parameters):
        is_int = parameter.annotation is int
        placeholders[parameter.name] = 7_000_001 + number if is_int else f"PARAMETER{number}"
    name = name_of(**placeholders)
    for argument, placeholder in placeholders.items():
        name = name.replace(str(placeholder), f"{{{argument}}}")
    return name


def test_every_exchange_and_queue_name_is_in_the_document(document: dict[str, Any]) -> None:
    names = _names_in(Names())
    assert {"jobs_exchange", "job_queue", "cancel_stream", "callback_retry_queue"} <= set(names)
    assert names["job_queue"] == "stt.jobs.{model}"
    strings = set(_strings(document))
    missing = {member: name for member, name in names.items() if name not in strings}
    assert not missing, f"broker names missing from the document: {missing}"


def test_the_namespace_changes_every_name() -> None:
    document = json.loads(json.dumps(asyncapi.build(Names("acme"))))
    strings = set(_strings(document))
    assert all(name in strings for name in _names_in(Names("acme")).values())
    assert not any(s.startswith("stt.") for s in strings)


def test_headers_named_outside_the_common_package_match_their_owners(
    document: dict[str, Any],
) -> None:
    # The generator may import only stt_daemon.common; these names live elsewhere.
    assert asyncapi_messages.PRODUCER_HEADER == provenance.PRODUCER_HEADER
    assert asyncapi_messages.ATTEMPTS_HEADER == quarantine.ATTEMPTS_HEADER
    assert asyncapi_messages.CALLBACK_HEADERS == (
        callbacks.ATTEMPTS_HEADER,
        callbacks.DEFERRALS_HEADER,
    )
    bound = document["channels"]["callbacksQueue"]["bindings"]["amqp"]["x-bindings"]
    assert [b["routingKey"] for b in bound] == [e.value for e in callbacks.FINAL_EVENTS]


def _validate(document: dict[str, Any], schema: str, instance: Any) -> list[str]:
    """Errors of ``instance`` against the document's component schema ``schema``."""
    rooted = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    return [e.message for e in Draft7Validator(rooted).iter_errors(instance)]


def test_real_messages_match_their_schemas(document: dict[str, Any]) -> None:
    result = TranscriptResult(text="hi", duration=1.0, model="tiny.en", segments=[])
    event = JobEvent(event=EventType.SUCCEEDED, job_id="j1", model="tiny.en", result=result)
    word = LiveWord(start=0, end=1, word="hi", probability=0.9)
    reply = LiveReply(words=[word], speech=[(0.0, 1.0)])
    assert _validate(document, "JobEvent", json.loads(event.model_dump_json())) == []
    assert _validate(document, "LiveReply", json.loads(reply.model_dump_json())) == []


def test_the_schemas_refuse_what_the_models_refuse(document: dict[str, Any]) -> None:
    assert _validate(document, "JobEvent", {"event": "job.exploded", "job_id": "j1"})
    # A tuple of two (pydantic's prefixItems, written as draft-07 items).
    assert _validate(document, "LiveReply", {"speech": [[0.0, 1.0, 2.0]]})


def _encoded_messages() -> dict[str, aio_pika.Message]:
    """One message of each kind, as the publishers' encoders write it."""
    audio = AudioRef(url="file:///blobs/j1", sha256="0" * 64, size=1)
    announcement = DaemonAnnouncement(worker="w", models=["tiny.en"], prefetch=1, interval=5)
    news = SessionEvent(event="session.ended", session_id="s1", model="tiny.en")
    return {
        "jobClaimCheck": protocol.encode_job(
            JobMessage(job_id="j1", audio=audio),
            user_id="stt-gateway",
            sign=ClaimSigner("key").sign,
            headers={provenance.PRODUCER_HEADER: "stt-producer", quarantine.ATTEMPTS_HEADER: 1},
        ),
        "jobRawAudio": protocol.encode_audio_job(
            "j1",
            b"RIFF",
            content_type="audio/wav",
            options=JobOptions(model="base", language="en", word_timestamps=True, split=False),
        ),
        "jobEvent": protocol.encode_event(JobEvent(event=EventType.STARTED, job_id="j1")),
        "sessionEvent": liveprotocol.encode_session_event(news, user_id="stt-gateway"),
        "cancelRequest": protocol.encode_cancel(CancelRequest(job_id="j1"), user_id="g"),
        "daemonAnnouncement": protocol.encode_announcement(announcement, user_id="d"),
        "gatewayHello": protocol.encode_hello(),
        "liveWindow": liveprotocol.encode_window(
            b"\0\0",
            WindowOptions(session="s1", language="en", prompt="so"),
            wait=2.0,
            reply_to="amq.rabbitmq.reply-to",
            correlation_id="c1",
            user_id="g",
        ),
        "liveReply": liveprotocol.encode_reply(LiveReply(), correlation_id="c1", user_id="d"),
    }


def _header_names(document: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """The header names a message's headers schema allows (following refs and allOf)."""
    if "$ref" in schema:
        return _header_names(document, _pointer(document, schema["$ref"]))
    names = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        names |= _header_names(document, part)
    return names


def test_every_message_is_what_its_encoder_writes(document: dict[str, Any]) -> None:
    described = document["components"]["messages"]
    encoded = _encoded_messages()
    assert set(encoded) == set(described)
    for kind, message in encoded.items():
        if kind != "jobRawAudio":  # any audio type, set by the producer
            assert described[kind]["contentType"] == message.content_type, kind
        headers = _header_names(document, described[kind].get("headers", {}))
        assert set(message.headers) <= headers, kind


@pytest.mark.parametrize(
    ("operation", "kind"),
    [
        ("submitJob", "jobClaimCheck"),
        ("submitJob", "jobRawAudio"),
        ("cancelJob", "cancelRequest"),
        ("announceDaemon", "daemonAnnouncement"),
        ("publishSessionEvent", "sessionEvent"),
    ],
)
def test_delivery_modes_are_what_the_encoders_set(
    document: dict[str, Any], operation: str, kind: str
) -> None:
    promised = document["operations"][operation]["bindings"]["amqp"]["deliveryMode"]
    assert _encoded_messages()[kind].delivery_mode == promised
