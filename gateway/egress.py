"""Where webhook calls may go: the destination policy of ``callback_url``.

A ``callback_url`` is chosen by whoever submits a job, and the gateway calls it
from inside the network, so by default it may only reach global (public)
addresses: never loopback, private, link-local (cloud metadata at
169.254.169.254), shared, multicast, unspecified or reserved ones.
``STT_CALLBACK_ALLOW`` lets internal receivers through by network or by name.

The rules are applied twice: at submission to literal addresses (a clear 422
at once), and when sending to every address a name resolves to, immediately
before connecting to one of them (see :mod:`gateway.webhook_http`).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")
#: RFC 6052 prefix: a NAT64 gateway reaches the IPv4 address in the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class EgressRefused(ValueError):
    """A callback destination the policy refuses; the message says why (no credentials)."""


@dataclass(frozen=True)
class EgressPolicy:
    """Global addresses only, plus the networks and host names of the allow-list."""

    networks: tuple[IPNetwork, ...] = ()
    #: Exact names (``hooks.internal``) and suffixes (``.corp.example`` from ``*.corp.example``).
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, value: str | None) -> EgressPolicy:
        """Read ``STT_CALLBACK_ALLOW``: comma-separated CIDRs, addresses and host names."""
        return _parse(value or "")

    def describe(self) -> list[str]:
        """The allow-list, for the start-up log line."""
        suffixes = sorted(n for n in self.names if n.startswith("."))
        exact = sorted(n for n in self.names if not n.startswith("."))
        return [*map(str, self.networks), *exact, *("*" + s for s in suffixes)]

    def allows_name(self, host: str) -> bool:
        """True when the allow-list names this host (then any address it has is fine)."""
        host = normal_host(host)
        if host in self.names:
            return True
        return any(n.startswith(".") and host.endswith(n) for n in self.names)

    def check_address(self, host: str, address: IPAddress) -> None:
        """Raise :class:`EgressRefused` unless ``address`` (one of ``host``'s) may be called."""
        plain = _embedded_ipv4(address) or address
        if any(a in net for a in (address, plain) for net in self.networks):
            return
        reason = forbidden_reason(address)
        if reason is not None:
            raise EgressRefused(
                f"callback host {host} is {reason} ({plain}); "
                "allow it with STT_CALLBACK_ALLOW if it is an internal receiver"
            )

    def check_addresses(self, host: str, addresses: list[IPAddress]) -> None:
        """Every address must pass: a name with one bad address may be made to use it."""
        if self.allows_name(host):
            return
        if not addresses:
            raise EgressRefused(f"callback host {host} has no address")
        for address in addresses:
            self.check_address(host, address)


@lru_cache(maxsize=8)
def _parse(value: str) -> EgressPolicy:
    networks: list[IPNetwork] = []
    names: set[str] = set()
    for raw in value.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = normal_host(entry[2:] if entry.startswith("*.") else entry)
        if not name or "/" in name or "@" in name or ":" in name:
            raise ValueError(f"STT_CALLBACK_ALLOW: {raw.strip()!r} is not a CIDR, address or name")
        names.add("." + name if entry.startswith("*.") else name)
    return EgressPolicy(tuple(networks), frozenset(names))


def normal_host(host: str) -> str:
    """Lower case, no brackets, no trailing dot: one spelling per name."""
    return host.strip().strip("[]").rstrip(".").lower()


def forbidden_reason(address: IPAddress) -> str | None:
    """Why a webhook may not call this address by default, or None when it is global."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        # ::ffff:127.0.0.1, 2002:7f00:1::, 64:ff9b::a9fe:a9fe all lead to an IPv4 address.
        return forbidden_reason(embedded)
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        # Shared (100.64/10, carrier NAT) and other special-purpose ranges.
        return "a reserved address"
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any spelling a resolver accepts, else None.

    ``0x7f000001``, ``2130706433``, ``0177.0.0.1`` and ``127.1`` all mean 127.0.0.1
    to ``inet_aton`` (and so to ``getaddrinfo``): they are read the same way here.
    """
    host = normal_host(host)
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if not host or not all(c in "0123456789abcdefx." for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@dataclass(frozen=True)
class Destination:
    """The parts of a callback URL the sender needs, credentials excluded by construction."""

    scheme: str
    host: str
    port: int

    @property
    def key(self) -> str:
        """Whose receiver this is, for per-destination limits."""
        return self.host


def check_callback_url(url: str, policy: EgressPolicy) -> Destination:
    """Refuse what no send could make right: scheme, credentials, forbidden literal address."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise EgressRefused("callback_url is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise EgressRefused("callback_url must be an http:// or https:// URL")
    if "@" in parts.netloc:
        # Credentials in a callback URL end up in logs and in every stored copy of
        # the job; a receiver authenticates calls with the signature header instead.
        raise EgressRefused(
            "callback_url must not carry credentials (user:password@); "
            "verify the X-STT-Signature header instead"
        )
    host = normal_host(parts.hostname or "")
    if not host:
        raise EgressRefused("callback_url has no host")
    address = ip_literal(host)
    if address is not None and not policy.allows_name(host):
        policy.check_address(host, address)
    return Destination(scheme, host, port or (443 if scheme == "https" else 80))


def redact_url(url: str) -> str:
    """The URL for logs: no credentials, no query string, no fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"
