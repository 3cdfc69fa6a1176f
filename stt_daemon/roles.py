"""Broker roles: one RabbitMQ user each, with the least permissions it needs.

Anyone who may publish to the broker must not be able to read other tenants'
jobs, fail or delete them, or forge their results. RabbitMQ checks three
permissions per resource name (regular expressions on exchange and queue names):
*configure* (declare, delete), *write* (publish to an exchange, bind a queue)
and *read* (consume or get from a queue, bind from an exchange). The roles:

- ``gateway`` and ``daemon`` declare the topology (so both configure the
  namespace, and read the job queues, which RabbitMQ requires to declare a
  queue with a dead-letter exchange); only the gateways read the status and
  webhook queues;
- ``producer`` publishes jobs to ``<ns>.jobs`` and reads its own reply queue
  (server-named ``amq.gen-*``, or direct reply-to), nothing else: it cannot
  peek at the job queues, publish to quarantine or forge events;
- ``listener`` (downstream services) binds its own queues to ``<ns>.results``
  and reads them: server-named ones, or durable ones named ``<ns>.listen.<name>``.

The definitions (RabbitMQ's JSON, and the topology operator's ``User`` and
``Permission`` objects) are generated here, so that the shipped files, the
private node of ``stt-local`` and the tests all use the same rules.
Run ``python -m stt_daemon.roles --help``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

#: The roles, in the order they are written out.
ROLES = ("gateway", "daemon", "producer", "listener")
#: Queues without a name of their own (exclusive reply and fleet queues): named by
#: the server (``amq.gen-...``) or, for aio-pika's robust channels, by the client
#: (``amq_<uuid hex>``, so that a reconnect declares the same name again).
_SERVER_NAMED = r"amq\.gen-.*|amq_[0-9a-f]{32}"
#: Direct reply-to: the pseudo-queue a producer consumes its RPC answers from.
_DIRECT_REPLY = r"amq\.rabbitmq\.reply-to.*"
#: The default exchange: daemons answer ``reply_to`` through it, the gateway
#: parks webhook retries in their delay queues through it.
_DEFAULT_EXCHANGE = r"amq\.default"


@dataclass(frozen=True)
class Permission:
    """RabbitMQ's three permission patterns for one user on one vhost."""

    configure: str
    write: str
    read: str


def _any(*patterns: str) -> str:
    return "^(" + "|".join(patterns) + ")$"


def permissions(role: str, namespace: str = r"stt") -> Permission:
    """The permissions of ``role`` in the namespace ``namespace`` (a regular expression).

    ``namespace`` is a pattern, not a name, so that a test suite can give one set of
    users every namespace of its own (``t[0-9a-f]{10}``); pass ``re.escape(name)``.
    """
    grant = _GRANTS.get(role)
    if grant is None:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return grant(namespace)


def _bound_from(ns: str) -> str:
    """Exchanges a queue of the topology is bound from (binding needs read on them)."""
    return rf"{ns}\.(jobs|quarantine|live|dead|results|control)"


def _gateway(ns: str) -> Permission:
    return Permission(
        configure=_any(rf"{ns}\..*", _SERVER_NAMED),
        # Jobs and cancellations out; bindings of the topology; webhook retries.
        write=_any(rf"{ns}\..*", _SERVER_NAMED, _DEFAULT_EXCHANGE),
        # The job queues too, though a gateway never takes a job: RabbitMQ asks
        # for read on a queue to declare it with a dead-letter exchange (that
        # moves messages out of it), and gateways declare the topology so that
        # jobs queue durably before any daemon runs.
        read=_any(
            _bound_from(ns),
            rf"{ns}\.(jobs|quarantine)\..*",
            rf"{ns}\.(recorder|callbacks|callbacks\.retry\..*)",
            _SERVER_NAMED,
        ),
    )


def _daemon(ns: str) -> Permission:
    return Permission(
        configure=_any(rf"{ns}\..*", _SERVER_NAMED),
        # Events, quarantine and hand-back copies, parts, announcements, replies.
        write=_any(rf"{ns}\..*", _SERVER_NAMED, _DEFAULT_EXCHANGE),
        # Not the status or webhook queues: those are the gateways'.
        read=_any(
            _bound_from(ns),
            rf"{ns}\.(jobs|quarantine|live)\..*",
            rf"{ns}\.cancellations",
            _SERVER_NAMED,
        ),
    )


def _producer(ns: str) -> Permission:
    return Permission(
        configure=_any(_SERVER_NAMED),
        write=_any(rf"{ns}\.jobs"),
        read=_any(_SERVER_NAMED, _DIRECT_REPLY),
    )


def _listener(ns: str) -> Permission:
    own = rf"{ns}\.listen\..*"
    return Permission(
        configure=_any(_SERVER_NAMED, own),
        write=_any(_SERVER_NAMED, own),
        read=_any(_SERVER_NAMED, own, rf"{ns}\.results"),
    )


#: Each role's permissions, given the namespace pattern.
_GRANTS: dict[str, Callable[[str], Permission]] = {
    "gateway": _gateway,
    "daemon": _daemon,
    "producer": _producer,
    "listener": _listener,
}


def user_name(role: str, prefix: str = "stt") -> str:
    """The broker user of a role: ``stt-daemon``, ``stt-gateway``..."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return f"{prefix}-{role}"


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def definitions(
    passwords: Mapping[str, str] | None = None,
    *,
    namespace: str = r"stt",
    user_prefix: str = "stt",
    vhost: str = "/",
) -> dict[str, object]:
    """RabbitMQ definitions (``rabbitmqctl import_definitions``) of every role.

    A role without a password gets an empty hash: the user exists, with its
    permissions, but cannot log in until an operator sets its password.
    """
    passwords = passwords or {}
    users = []
    grants = []
    for role in ROLES:
        name = user_name(role, user_prefix)
        password = passwords.get(role)
        users.append(
            {
                "name": name,
                "password_hash": password_hash(password) if password else "",
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
        )
        grant = permissions(role, namespace)
        grants.append(
            {
                "user": name,
                "vhost": vhost,
                "configure": grant.configure,
                "write": grant.write,
                "read": grant.read,
            }
        )
    return {"vhosts": [{"name": vhost}], "users": users, "permissions": grants}


def kubernetes(
    *, cluster: str = "stt-rabbitmq", k8s_namespace: str = "stt", vhost: str = "/"
) -> str:
    """The topology operator's ``User`` and ``Permission`` objects, as YAML."""
    docs = [_operator_objects(role, cluster, k8s_namespace, vhost) for role in ROLES]
    header = (
        "# Generated by `python -m stt_daemon.roles kubernetes`: edit stt_daemon/roles.py,\n"
        "# not this file (a test checks they agree). One broker user per role, with\n"
        "# the least permissions it needs (docs/broker/security.md). Needs the RabbitMQ\n"
        "# Messaging Topology Operator beside the Cluster Operator.\n"
    )
    return header + "---\n".join(docs)


def _operator_objects(role: str, cluster: str, k8s_namespace: str, vhost: str) -> str:
    """One role's ``User`` and ``Permission`` objects."""
    name = user_name(role)
    grant = permissions(role)
    return f"""apiVersion: rabbitmq.com/v1beta1
kind: User
metadata:
  name: {name}
  namespace: {k8s_namespace}
spec:
  rabbitmqClusterReference:
    name: {cluster}
  # A Secret with keys username ({name}) and password, made by hand
  # (secrets.example.yaml); the {role}s build STT_AMQP_URL from the same Secret.
  importCredentialsSecret:
    name: stt-broker-{role}
---
apiVersion: rabbitmq.com/v1beta1
kind: Permission
metadata:
  name: {name}
  namespace: {k8s_namespace}
spec:
  vhost: {json.dumps(vhost)}
  user: {name}
  permissions:
    configure: {json.dumps(grant.configure)}
    write: {json.dumps(grant.write)}
    read: {json.dumps(grant.read)}
  rabbitmqClusterReference:
    name: {cluster}
"""


def _read_passwords(path: str) -> dict[str, str]:
    """``role=password`` lines (``#`` comments and blank lines skipped)."""
    found: dict[str, str] = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            role, sep, password = line.partition("=")
            if not sep or role.strip() not in ROLES:
                raise SystemExit(f"{path}: expected role=password with a role of {ROLES}")
            found[role.strip()] = password.strip()
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stt_daemon.roles definitions|kubernetes|permissions``."""
    parser = argparse.ArgumentParser(
        prog="python -m stt_daemon.roles", description="Broker users and permissions per role."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    defs = sub.add_parser("definitions", help="RabbitMQ definitions JSON (import_definitions)")
    defs.add_argument("--namespace", default="stt", help="STT_NAMESPACE (default stt)")
    defs.add_argument("--vhost", default="/")
    defs.add_argument(
        "--passwords",
        metavar="FILE",
        help="role=password lines; without it the users cannot log in until given one",
    )
    k8s = sub.add_parser("kubernetes", help="topology operator User/Permission YAML")
    k8s.add_argument("--cluster", default="stt-rabbitmq")
    k8s.add_argument("--k8s-namespace", default="stt")
    show = sub.add_parser("permissions", help="print each role's user and patterns")
    show.add_argument("--namespace", default="stt")
    args = parser.parse_args(argv)
    if args.command == "definitions":
        passwords = _read_passwords(args.passwords) if args.passwords else None
        document = definitions(passwords, namespace=re.escape(args.namespace), vhost=args.vhost)
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.command == "kubernetes":
        sys.stdout.write(kubernetes(cluster=args.cluster, k8s_namespace=args.k8s_namespace))
    else:
        for role in ROLES:
            grant = permissions(role, re.escape(args.namespace))
            print(f"{user_name(role)}\n  configure {grant.configure}")
            print(f"  write     {grant.write}\n  read      {grant.read}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
