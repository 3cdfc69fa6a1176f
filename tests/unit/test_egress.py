"""Where webhooks may go: decided before any connection, replayed without leaving the machine.

Refused destinations are given to the client by a fake resolver and a recording
network backend proves no connection was tried; the only traffic these tests
send goes to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import httpcore
import pytest

from gateway.config import GatewaySettings
from gateway.egress import (
    EgressPolicy,
    EgressRefused,
    IPAddress,
    check_callback_url,
    ip_literal,
    redact_url,
)
from gateway.webhook_http import GuardedBackend, Resolver, webhook_client

DEFAULT = EgressPolicy()


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("0x7f000001", "loopback"),  # hex
        ("2130706433", "loopback"),  # decimal
        ("0177.0.0.1", "loopback"),  # octal
        ("127.1", "loopback"),  # short form
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),  # IPv4-mapped IPv6
        ("[2002:7f00:1::]", "loopback"),  # 6to4 of 127.0.0.1
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("[fe80::1]", "link-local"),
        ("[64:ff9b::a9fe:a9fe]", "link-local"),  # NAT64 of 169.254.169.254
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("172.16.0.1", "private"),
        ("[fd00::1]", "private"),
        ("100.64.0.1", "reserved"),  # shared address space (carrier NAT)
        ("240.0.0.1", "reserved"),
        ("224.0.0.1", "multicast"),
        ("[ff02::1]", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("[::]", "unspecified"),
    ],
)
def test_forbidden_literal_addresses_are_refused_at_submit(host: str, reason: str) -> None:
    with pytest.raises(EgressRefused, match=reason):
        check_callback_url(f"http://{host}:8080/hook", DEFAULT)


def test_global_addresses_and_names_pass_at_submit() -> None:
    assert check_callback_url("https://8.8.8.8/hook", DEFAULT).host == "8.8.8.8"
    # Names are resolved and checked when sending, not here.
    destination = check_callback_url("https://Hooks.Example.com./x?y=1", DEFAULT)
    assert (destination.host, destination.port) == ("hooks.example.com", 443)


@pytest.mark.parametrize(
    "url",
    [
        "http://guest:guest@127.0.0.1:15679/api/definitions",
        "https://user:pw@example.com/hook",
        "https://token@example.com/hook",
    ],
)
def test_credentials_are_refused_even_for_allowed_hosts(url: str) -> None:
    allow_all = EgressPolicy.parse("0.0.0.0/0, example.com")
    with pytest.raises(EgressRefused, match="credentials") as refused:
        check_callback_url(url, allow_all)
    assert "guest" not in str(refused.value) and "pw" not in str(refused.value)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://x/", "//x"])
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(EgressRefused, match="http"):
        check_callback_url(url, DEFAULT)


def test_logged_urls_have_no_credentials_and_no_query() -> None:
    url = "https://alice:s3cret@hooks.example.com:8443/in/hook?token=abc#frag"
    assert redact_url(url) == "https://hooks.example.com:8443/in/hook?…"
    assert redact_url("http://[::1]:99/x") == "http://[::1]:99/x"


def test_allow_list_by_network_name_and_suffix() -> None:
    policy = EgressPolicy.parse(" 10.1.0.0/16 ,127.0.0.1, hooks.internal, *.corp.example, ")
    check_callback_url("http://10.1.2.3/hook", policy)
    check_callback_url("http://0x7f000001/hook", policy)  # the same address, spelled oddly
    check_callback_url("http://[::ffff:127.0.0.1]/hook", policy)
    with pytest.raises(EgressRefused):
        check_callback_url("http://10.2.0.1/hook", policy)
    assert policy.allows_name("hooks.internal") and policy.allows_name("HOOKS.internal.")
    assert policy.allows_name("a.b.corp.example")
    assert not policy.allows_name("corp.example") and not policy.allows_name("evilcorp.example")


@pytest.mark.parametrize("entry", ["http://x", "a@b", "10.0.0.0/40"])
def test_bad_allow_list_entries_stop_the_start(entry: str) -> None:
    with pytest.raises(ValueError, match="STT_CALLBACK_ALLOW"):
        GatewaySettings(callback_allow=entry)


def test_odd_spellings_are_read_as_the_resolver_reads_them() -> None:
    assert {ip_literal(h) for h in ("0x7f000001", "2130706433", "0177.0.0.1", "127.1")} == {
        ip_literal("127.0.0.1")
    }
    assert ip_literal("example.com") is None and ip_literal("deadbeef") is None


# --- At send time: resolve, check every address, connect to a checked one. ---


@dataclass
class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands in for the network: records what would have been connected to."""

    connects: list[tuple[str, int]] = field(default_factory=list)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        raise httpcore.ConnectError("the test network is unplugged")


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None) -> Resolver:
    async def resolve(host: str, port: int) -> list[IPAddress]:
        if calls is not None:
            calls.append(host)
        addresses = [ip_literal(a) for a in table[host]]
        return [a for a in addresses if a is not None]

    return resolve


@pytest.mark.parametrize(
    "addresses",
    [
        ["169.254.169.254"],  # metadata
        ["10.0.0.1"],
        ["::ffff:10.0.0.1"],
        ["93.184.216.34", "10.0.0.1"],  # one bad address among good ones is enough
        [],
    ],
)
async def test_names_resolving_to_forbidden_addresses_are_never_connected(
    addresses: list[str],
) -> None:
    network = RecordingBackend()
    backend = GuardedBackend(DEFAULT, fake_dns({"hooks.example.com": addresses}), network)
    with pytest.raises(EgressRefused):
        await backend.connect_tcp("hooks.example.com", 443, timeout=1)
    assert network.connects == []


async def test_the_client_refuses_before_any_byte_is_sent() -> None:
    dns = fake_dns({"metadata.example": ["169.254.169.254"]})
    async with webhook_client(DEFAULT, connect_timeout=1, timeout=1, resolve=dns) as client:
        with pytest.raises(EgressRefused, match="link-local"):
            await client.post("http://metadata.example/latest/meta-data/")


async def test_connects_to_the_checked_address() -> None:
    network = RecordingBackend()
    dns = fake_dns({"hooks.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    backend = GuardedBackend(DEFAULT, dns, network)
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("hooks.example.com", 443, timeout=1)
    # By address, each in turn, never by name: nothing is resolved a second time.
    assert network.connects == [("93.184.216.34", 443), ("2606:2800:220:1::1", 443)]


@dataclass
class LocalReceiver:
    port: int = 0
    requests: list[bytes] = field(default_factory=list)


@pytest.fixture
async def local_receiver() -> AsyncIterator[LocalReceiver]:
    state = LocalReceiver()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        state.requests.append(head)
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


async def test_loopback_receiver_is_refused_by_default(local_receiver: LocalReceiver) -> None:
    dns = fake_dns({"receiver.invalid": ["127.0.0.1"]})
    async with webhook_client(DEFAULT, connect_timeout=1, timeout=2, resolve=dns) as client:
        with pytest.raises(EgressRefused, match="loopback"):
            await client.post(f"http://receiver.invalid:{local_receiver.port}/hook", content=b"{}")
    assert local_receiver.requests == []


async def test_allow_listed_loopback_receiver_gets_the_call_by_its_name(
    local_receiver: LocalReceiver,
) -> None:
    calls: list[str] = []
    dns = fake_dns({"receiver.invalid": ["127.0.0.1"]}, calls)
    policy = EgressPolicy.parse("127.0.0.0/8")
    async with webhook_client(policy, connect_timeout=1, timeout=2, resolve=dns) as client:
        url = f"http://receiver.invalid:{local_receiver.port}/hook"
        response = await client.post(url, content=b"{}")
    assert response.status_code == 204
    # The system resolver knows no ``.invalid`` name: the connection went to the
    # address checked, after one lookup, and the receiver still saw its own name.
    assert calls == ["receiver.invalid"]
    assert (
        f"host: receiver.invalid:{local_receiver.port}".encode()
        in local_receiver.requests[0].lower()
    )
