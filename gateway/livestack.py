"""Live sessions wired as the gateway's lifespan wires them, for any process that serves them.

``live_sessions`` is the wiring itself: a broker connection of its own for the
windows (role ``live``: windows must not queue behind job publishes), the
live-window client started on it, and :class:`LiveSessions` over the status
store and the publishing link. ``standalone_live`` adds what a process without
the HTTP gateway must own itself (``stt-wyoming``): the status store, its
retention purge and the publishing connection, opened and closed in the
gateway's order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog

from gateway.broker import BrokerLink
from gateway.config import GatewaySettings
from gateway.livebroker import LiveClient
from gateway.livesessions import LiveSessions
from gateway.metrics import GatewayMetrics
from gateway.store import StatusStore, open_store, purge_periodically, redacted

log = structlog.get_logger("gateway.live")


def live_sessions(
    settings: GatewaySettings, store: StatusStore, publisher: BrokerLink, metrics: GatewayMetrics
) -> tuple[BrokerLink, LiveSessions]:
    """The ``live`` broker link (not started yet) and the sessions that use it."""
    live_link = BrokerLink(settings, role="live")
    client = LiveClient(settings.names, settings.amqp_url, settings.publish_timeout)
    live_link.on_connected(client.start)
    return live_link, LiveSessions(settings, client, store, publisher, metrics)


@asynccontextmanager
async def standalone_live(settings: GatewaySettings) -> AsyncIterator[LiveSessions]:
    """Live sessions with a status store and broker connections of their own."""
    store = open_store(
        settings.resolved_status_url, namespace=settings.namespace, result_ttl=settings.result_ttl
    )
    # Sessions are jobs: they expire past STT_RESULT_TTL here too, gateway or not.
    purger = asyncio.create_task(purge_periodically(store, settings.result_ttl))
    # session.segment, session.ended and job.succeeded go out on this one.
    publisher = BrokerLink(settings, role="publish")
    live_link, live = live_sessions(settings, store, publisher, GatewayMetrics(settings.names))
    publisher.start()
    live_link.start()
    log.info("live.stack_started", status_url=redacted(settings.resolved_status_url))
    try:
        yield live
    finally:
        await live_link.close()
        await publisher.close()
        purger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purger
        await store.close()
