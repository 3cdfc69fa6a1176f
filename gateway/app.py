"""``create_app(settings)``: the FastAPI application and the lifespan that owns its connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from gateway.auth import install_auth, log_auth_mode
from gateway.broker import BrokerLink
from gateway.callbacks import CallbackSender
from gateway.config import GatewaySettings
from gateway.errors import install_error_handlers
from gateway.fleet import Fleet
from gateway.jobfeed import JobFeed
from gateway.livebroker import LiveClient
from gateway.livesessions import LiveSessions
from gateway.metrics import GatewayMetrics, MetricsMiddleware
from gateway.recorder import Recorder
from gateway.requestid import RequestIdMiddleware
from gateway.routes import compat, health, jobs, metrics, models, openai, realtime, whisperlive
from gateway.services import Services
from gateway.store import open_store, purge_periodically, redacted
from stt_daemon import __version__
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.logs import configure_logging

log = structlog.get_logger("gateway")


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Build the app; settings come from the environment when not given."""
    settings = settings or GatewaySettings()
    gateway_metrics = GatewayMetrics(settings.names)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(
            settings.resolved_status_url,
            namespace=settings.namespace,
            result_ttl=settings.result_ttl,
        )
        # Retention: deletes final jobs past STT_RESULT_TTL (Redis expires them by itself).
        purger = asyncio.create_task(purge_periodically(store, settings.result_ttl))
        publisher = BrokerLink(settings, role="publish")
        # The recorder gets a connection of its own: a memory alarm that blocks
        # publishing must not stop statuses from being recorded.
        recorder_link = BrokerLink(settings, role="recorder")
        recorder = Recorder.from_settings(store, settings, gateway_metrics.event_recorded)
        recorder_link.on_connected(recorder.start)
        # Queue depths are read on the recorder's connection: it never publishes,
        # so a memory alarm that blocks publishers does not stall a scrape.
        recorder_link.on_connected(gateway_metrics.attach)
        fleet = Fleet(settings.names)
        recorder_link.on_connected(fleet.start)
        # Event streams: this process's own copy of the job events (gateway/jobfeed.py).
        app.state.jobfeed = JobFeed.from_settings(settings)
        recorder_link.on_connected(app.state.jobfeed.start)
        callbacks = _callback_sender(settings)
        if callbacks is not None:
            recorder_link.on_connected(callbacks.start)
        # Live windows get a connection of their own: they must not queue behind
        # uploads' job publishes, nor stall when the recorder is busy.
        live_link = BrokerLink(settings, role="live")
        live_client = LiveClient(settings.names, settings.amqp_url, settings.publish_timeout)
        live_link.on_connected(live_client.start)
        app.state.services = Services(
            settings=settings,
            blobs=BlobStore(settings.resolved_blob_url),
            store=store,
            broker=publisher,
            fleet=fleet,
            metrics=gateway_metrics,
        )
        services = app.state.services
        services.live = LiveSessions(settings, live_client, store, publisher, gateway_metrics)
        publisher.start()
        live_link.start()
        recorder_link.start()
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
            await live_link.close()
            await publisher.close()
            await recorder_link.close()
            if callbacks is not None:
                await callbacks.close()
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
            await store.close()
            log.info("gateway.stopped", events_recorded=recorder.applied)

    app = FastAPI(
        title="stt-jobs gateway",
        version=__version__,
        description="Whisper transcription jobs over RabbitMQ.",
        lifespan=lifespan,
        # With API keys, the API's map is not handed to whoever asks (STT_API_DOCS).
        docs_url="/docs" if settings.serves_api_docs else None,
        redoc_url="/redoc" if settings.serves_api_docs else None,
        openapi_url="/openapi.json" if settings.serves_api_docs else None,
    )
    install_error_handlers(app, settings.retry_after)
    # Keys are loaded here, not in the lifespan: an unreadable key file stops the start.
    install_auth(app, settings)
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
    # Added last, so outermost: the request id is bound before anything else runs.
    app.add_middleware(MetricsMiddleware, metrics=gateway_metrics)
    app.add_middleware(RequestIdMiddleware)
    return app


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
