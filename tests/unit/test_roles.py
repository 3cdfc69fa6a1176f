"""Broker roles: the permission patterns and the shipped definitions agree."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

from stt_daemon import roles
from stt_daemon.common.topology import Names

REPO = Path(__file__).resolve().parents[2]


def _allowed(pattern: str, name: str) -> bool:
    # RabbitMQ matches the whole pattern with re:run semantics; ours are anchored.
    return re.search(pattern, name) is not None


NAMES = Names("stt")
JOB_QUEUE = NAMES.job_queue("tiny.en")
QUARANTINE_QUEUE = NAMES.quarantine_queue("tiny.en")


@pytest.mark.parametrize(
    ("what", "name"),
    [
        ("read", JOB_QUEUE),  # basic.get / consume: peeking at others' jobs
        ("read", QUARANTINE_QUEUE),
        ("write", NAMES.quarantine_exchange),  # bypassing STT_MAX_QUEUED
        ("write", NAMES.results_exchange),  # forging results
        ("write", NAMES.control_exchange),  # cancelling others' jobs
        ("write", "amq.default"),  # reaching any queue directly
        ("configure", JOB_QUEUE),  # deleting or purging the job queue
        ("read", NAMES.recorder_queue),
    ],
)
def test_a_producer_may_not(what: str, name: str) -> None:
    grant = roles.permissions("producer")
    assert not _allowed(getattr(grant, what), name)


def test_a_producer_may_submit_and_read_its_own_replies() -> None:
    grant = roles.permissions("producer")
    assert _allowed(grant.write, NAMES.jobs_exchange)
    assert _allowed(grant.read, "amq.gen-Xyz") and _allowed(grant.configure, "amq.gen-Xyz")
    assert _allowed(grant.read, "amq.rabbitmq.reply-to")


def test_a_listener_binds_to_results_only() -> None:
    grant = roles.permissions("listener")
    assert _allowed(grant.read, NAMES.results_exchange)
    assert _allowed(grant.configure, "stt.listen.billing")
    for exchange in (NAMES.jobs_exchange, NAMES.control_exchange, NAMES.dead_exchange):
        assert not _allowed(grant.read, exchange)
    assert not _allowed(grant.write, NAMES.results_exchange)


def test_daemons_never_read_the_gateways_queues() -> None:
    gateway, daemon = roles.permissions("gateway"), roles.permissions("daemon")
    assert _allowed(gateway.read, NAMES.recorder_queue)
    assert _allowed(daemon.read, JOB_QUEUE) and _allowed(daemon.read, NAMES.cancel_stream)
    assert not _allowed(daemon.read, NAMES.recorder_queue)
    assert not _allowed(daemon.read, NAMES.callbacks_queue)


def test_another_namespace_is_out_of_reach() -> None:
    for role in roles.ROLES:
        grant = roles.permissions(role)
        for what in ("configure", "write", "read"):
            assert not _allowed(getattr(grant, what), "other.jobs.tiny.en")
            assert not _allowed(getattr(grant, what), "sttx.jobs")


def test_password_hash_is_rabbitmqs_sha256_scheme() -> None:
    hashed = base64.b64decode(roles.password_hash("pw", salt=b"\x01\x02\x03\x04"))
    assert hashed[:4] == b"\x01\x02\x03\x04"
    assert hashed[4:] == hashlib.sha256(b"\x01\x02\x03\x04pw").digest()


def test_shipped_definitions_are_the_generated_ones() -> None:
    shipped = json.loads((REPO / "deploy/rabbitmq/definitions.json").read_text())
    assert shipped == roles.definitions()


def test_shipped_kubernetes_objects_are_the_generated_ones() -> None:
    shipped = (REPO / "deploy/kubernetes/broker-roles.yaml").read_text()
    assert shipped == roles.kubernetes()
