"""The HTTP client of webhook calls: it connects only where :mod:`gateway.egress` allows.

The check sits in the connection itself, not before the request: the name is
resolved once, every address is checked, and the socket is opened to one of
those checked addresses. A receiver's DNS that answers a public address to a
first lookup and 127.0.0.1 to the next (DNS rebinding) gains nothing, since
there is no second lookup. TLS still verifies the certificate against the
URL's host name, and the Host header is the URL's, as httpcore sends them
from the request, not from the address it was given to connect to.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import httpx

from gateway.egress import EgressPolicy, IPAddress, ip_literal, normal_host

#: ``(host, port) -> addresses``: the system resolver, or a fake one in tests.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``getaddrinfo`` gives for ``host`` (numeric spellings included)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ip_literal(str(sockaddr[0]))
        if address is not None and address not in found:
            found.append(address)
    return found


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the policy allows, checked just before."""

    def __init__(
        self,
        policy: EgressPolicy,
        resolve: Resolver = system_resolve,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolve = resolve
        self._backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve, refuse (:class:`~gateway.egress.EgressRefused`) or connect to a checked IP."""
        name = normal_host(host)
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolve(name, port)
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {name}: {exc}") from None
        self._policy.check_addresses(name, addresses)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc  # the next address may answer (a name with IPv4 and IPv6)
        assert error is not None  # check_addresses refuses a name without addresses
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: a webhook goes over TCP."""
        raise httpcore.ConnectError("webhooks do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        """The wrapped backend's sleep."""
        await self._backend.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport on a pool that connects through a :class:`GuardedBackend`."""

    def __init__(
        self, policy: EgressPolicy, resolve: Resolver = system_resolve, max_connections: int = 64
    ) -> None:
        # No proxies, no .netrc from the environment: a proxy would connect on our
        # behalf, past the check, and .netrc credentials must never reach a receiver.
        super().__init__(trust_env=False)
        # httpx has no parameter for the network backend, so the pool it built is
        # replaced by an equal one that has ours (same SSL context and defaults).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections // 4,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(policy, resolve),
        )


def webhook_client(
    policy: EgressPolicy,
    *,
    connect_timeout: float,
    timeout: float,
    resolve: Resolver = system_resolve,
) -> httpx.AsyncClient:
    """The client of the callback sender: guarded, short timeouts, no redirects, no env."""
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, resolve),
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        follow_redirects=False,
        trust_env=False,
    )
