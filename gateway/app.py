"""``create_app(settings)``: the FastAPI application and the lifespan that owns its connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import structlog
from fastapi import FastAPI

from gateway.auth import install_auth, log_auth_mode
from gateway.broker import BrokerLink
from gateway.callbacks import CallbackSender
from gateway.config import GatewaySettings
from gateway.errors import install_error_handlers
from gateway.fleet import Fleet
from gateway.jobfeed import JobFeed
from gateway.livestack import live_sessions
from gateway.metrics import GatewayMetrics, MetricsMiddleware
from gateway.recorder import Recorder
from gateway.requestid import RequestIdMiddleware
from gateway.routes import compat, health, jobs, metrics, models, openai, realtime, whisperlive
from gateway.services import Services
from gateway.store import StatusStore, open_store, purge_periodically, redacted
from stt_daemon import __version__
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.logs import configure_logging

log = structlog.get_logger("gateway")


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Build the app; settings come from the environment when not given."""
    settings = settings or GatewaySettings()
    gateway_metrics = GatewayMetrics(settings.names)
    app = FastAPI(
        title="stt-jobs gateway",
        version=__version__,
        description="Whisper transcription jobs over RabbitMQ.",
        lifespan=_lifespan(settings, gateway_metrics),
        # With API keys, the API's map is not handed to whoever asks (STT_API_DOCS).
        docs_url="/docs" if settings.serves_api_docs else None,
        redoc_url="/redoc" if settings.serves_api_docs else None,
        openapi_url="/openapi.json" if settings.serves_api_docs else None,
    )
    install_error_handlers(app, settings.retry_after)
    # Keys are loaded here, not in the lifespan: an unreadable key file stops the start.
    install_auth(app, settings)
    _include_routers(app)
    # Added last, so outermost: the request id is bound before anything else runs.
    app.add_middleware(MetricsMiddleware, metrics=gateway_metrics)
    app.add_middleware(RequestIdMiddleware)
    return app


def _include_routers(app: FastAPI) -> None:
    """One router per resource."""
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(compat.router)
    app.include_router(openai.router)
    app.include_router(models.router)
    app.include_router(metrics.router)
    # OpenAI's realtime transcription: ws /v1/realtime?intent=transcription.
    app.include_router(realtime.router)
    # WhisperLive's clients connect to ws://host:port (the root path).
    app.include_router(whisperlive.router)


def _lifespan(
    settings: GatewaySettings, gateway_metrics: GatewayMetrics
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The lifespan: connections opened once at start-up, closed in ``finally``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = _start(app, settings, gateway_metrics)
        log.info(
            "gateway.started",
            models=settings.model_names,
            status_url=redacted(settings.resolved_status_url),
            blob_url=settings.resolved_blob_url,
        )
        log_auth_mode(app.state.auth, settings)
        try:
            yield
        finally:
            await running.close()
            log.info("gateway.stopped", events_recorded=running.recorder.applied)

    return lifespan


@dataclass
class _Running:
    """What the lifespan opened, closed in its own order by :meth:`close`."""

    store: StatusStore
    purger: asyncio.Task[None]
    publisher: BrokerLink
    recorder_link: BrokerLink
    live_link: BrokerLink
    recorder: Recorder
    callbacks: CallbackSender | None

    async def close(self) -> None:
        """Links first (live, publish, recorder), then callbacks, the purge, the store."""
        await self.live_link.close()
        await self.publisher.close()
        await self.recorder_link.close()
        if self.callbacks is not None:
            await self.callbacks.close()
        self.purger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.purger
        await self.store.close()


def _start(app: FastAPI, settings: GatewaySettings, gateway_metrics: GatewayMetrics) -> _Running:
    """Open the store, wire the three broker links and the services, start the links."""
    store = open_store(
        settings.resolved_status_url,
        namespace=settings.namespace,
        result_ttl=settings.result_ttl,
    )
    # Retention: deletes final jobs past STT_RESULT_TTL (Redis expires them by itself).
    purger = asyncio.create_task(purge_periodically(store, settings.result_ttl))
    publisher = BrokerLink(settings, role="publish")
    fleet = Fleet(settings.names)
    recorder_link, recorder, callbacks = _recording(app, settings, store, gateway_metrics, fleet)
    # Live windows get a connection of their own: they must not queue behind
    # uploads' job publishes, nor stall when the recorder is busy.
    live_link, live = live_sessions(settings, store, publisher, gateway_metrics)
    app.state.services = Services(
        settings=settings,
        blobs=BlobStore(settings.resolved_blob_url),
        store=store,
        broker=publisher,
        fleet=fleet,
        metrics=gateway_metrics,
        live=live,
    )
    publisher.start()
    live_link.start()
    recorder_link.start()
    return _Running(store, purger, publisher, recorder_link, live_link, recorder, callbacks)


def _recording(
    app: FastAPI,
    settings: GatewaySettings,
    store: StatusStore,
    gateway_metrics: GatewayMetrics,
    fleet: Fleet,
) -> tuple[BrokerLink, Recorder, CallbackSender | None]:
    """The recorder's link (not started yet) and what consumes on it.

    The recorder gets a connection of its own: a memory alarm that blocks
    publishing must not stop statuses from being recorded.
    """
    recorder_link = BrokerLink(settings, role="recorder")
    recorder = Recorder.from_settings(store, settings, gateway_metrics.event_recorded)
    recorder_link.on_connected(recorder.start)
    # Queue depths are read on the recorder's connection: it never publishes,
    # so a memory alarm that blocks publishers does not stall a scrape.
    recorder_link.on_connected(gateway_metrics.attach)
    recorder_link.on_connected(fleet.start)
    # Event streams: this process's own copy of the job events (gateway/jobfeed.py).
    app.state.jobfeed = JobFeed.from_settings(settings)
    recorder_link.on_connected(app.state.jobfeed.start)
    callbacks = _callback_sender(settings)
    if callbacks is not None:
        recorder_link.on_connected(callbacks.start)
    return recorder_link, recorder, callbacks


def _callback_sender(settings: GatewaySettings) -> CallbackSender | None:
    if settings.callback_secret is None:
        log.info("callbacks.disabled", reason="STT_CALLBACK_SECRET is not set")
        return None
    return CallbackSender.from_settings(settings)


def app_from_env() -> FastAPI:
    """uvicorn factory: settings and logging from the environment (used by ``--reload``)."""
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
