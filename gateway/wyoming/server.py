"""The Wyoming listener: connections in, a graceful stop on SIGTERM.

The first SIGTERM or SIGINT stops taking new transcriptions: idle connections
are closed, transcriptions in progress have ``SHUTDOWN_GRACE`` seconds to reach
their ``audio-stop`` and get their transcript, the rest are cut (their sessions
are still recorded). A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from functools import partial

import structlog
from wyoming.server import AsyncServer

from gateway.config import GatewaySettings
from gateway.livesessions import LiveSessions
from gateway.livestack import standalone_live
from gateway.wyoming.catalog import build_info
from gateway.wyoming.handler import WyomingContext, WyomingHandler

log = structlog.get_logger("gateway.wyoming")

#: Seconds transcriptions in progress get to finish at shutdown (as uvicorn's graceful timeout).
SHUTDOWN_GRACE = 30.0


class CannotListen(Exception):
    """The address is in use, or not ours to bind."""


def context_for(settings: GatewaySettings, live: LiveSessions) -> WyomingContext:
    """What the connections share, from the gateway's settings."""
    return WyomingContext(
        live=live,
        models=settings.model_names,
        info=build_info(settings.model_names).event(),
        idle_timeout=settings.live_idle_timeout,
        max_connections=settings.max_connections,
    )


async def serve(settings: GatewaySettings, uri: str) -> None:
    """Listen on ``uri`` (``tcp://`` or ``unix://``) until a signal; then stop in steps."""
    async with standalone_live(settings) as live:
        context = context_for(settings, live)
        server = AsyncServer.from_uri(uri)
        try:
            await server.start(partial(WyomingHandler, context))
        except OSError as exc:
            raise CannotListen(str(exc)) from None
        log.info(
            "wyoming.started",
            uri=uri,
            models=settings.model_names,
            max_sessions=settings.live_max_sessions,
        )
        await _until_signal()
        await drain(context, SHUTDOWN_GRACE)
        await server.stop()
        log.info("wyoming.stopped")


async def _until_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    count = {"signals": 0}

    def on_signal(signum: int) -> None:
        # The handler only sets an event; a second signal means the operator insists.
        count["signals"] += 1
        if count["signals"] > 1:
            log.warning("wyoming.forced_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("wyoming.signal", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stop.wait()


async def drain(context: WyomingContext, grace: float) -> None:
    """Close idle connections, let transcriptions finish within ``grace``, cut the rest."""
    context.draining = True
    handlers = list(context.open)
    for handler in handlers:
        handler.request_stop()
    tasks = [h.task for h in handlers if h.task is not None]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    if pending:
        log.warning("wyoming.transcriptions_cut", count=len(pending))
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
