"""``create_app(settings)``: the FastAPI application and the lifespan that owns its connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from gateway.broker import BrokerLink
from gateway.callbacks import CallbackSender
from gateway.config import GatewaySettings
from gateway.errors import install_error_handlers
from gateway.fleet import Fleet
from gateway.recorder import Recorder
from gateway.routes import compat, health, jobs, models, openai
from gateway.services import Services
from gateway.store import open_store
from stt_daemon import __version__
from stt_daemon.blobs import BlobStore
from stt_daemon.logs import configure_logging

log = structlog.get_logger("gateway")


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Build the app; settings come from the environment when not given."""
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings.resolved_status_url)
        publisher = BrokerLink(settings, role="publish")
        # The recorder gets a connection of its own: a memory alarm that blocks
        # publishing must not stop statuses from being recorded.
        recorder_link = BrokerLink(settings, role="recorder")
        recorder = Recorder(store, settings.names, settings.recorder_prefetch)
        recorder_link.on_connected(recorder.start)
        fleet = Fleet(settings.names)
        recorder_link.on_connected(fleet.start)
        callbacks = _callback_sender(settings)
        if callbacks is not None:
            recorder_link.on_connected(callbacks.start)
        app.state.services = Services(
            settings=settings,
            blobs=BlobStore(settings.resolved_blob_url),
            store=store,
            broker=publisher,
            fleet=fleet,
        )
        publisher.start()
        recorder_link.start()
        log.info(
            "gateway.started",
            models=settings.model_names,
            status_url=settings.resolved_status_url,
            blob_url=settings.resolved_blob_url,
        )
        try:
            yield
        finally:
            await publisher.close()
            await recorder_link.close()
            if callbacks is not None:
                await callbacks.close()
            await store.close()
            log.info("gateway.stopped", events_recorded=recorder.applied)

    app = FastAPI(
        title="stt-jobs gateway",
        version=__version__,
        description="Whisper transcription jobs over RabbitMQ.",
        lifespan=lifespan,
    )
    install_error_handlers(app, settings.retry_after)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(compat.router)
    app.include_router(openai.router)
    app.include_router(models.router)
    return app


def _callback_sender(settings: GatewaySettings) -> CallbackSender | None:
    if settings.callback_secret is None:
        log.info("callbacks.disabled", reason="STT_CALLBACK_SECRET is not set")
        return None
    return CallbackSender(
        settings.names,
        settings.callback_secret.get_secret_value().encode(),
        max_attempts=settings.callback_max_attempts,
        backoff=settings.callback_backoff,
    )


def app_from_env() -> FastAPI:
    """uvicorn factory: settings and logging from the environment (used by ``--reload``)."""
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
