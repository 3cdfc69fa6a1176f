"""``stt-gateway``: the flags of the original ``run.py`` (--host, --port, --debug, --[no]reload)."""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile

import structlog
import uvicorn

from gateway.config import GatewaySettings
from gateway.limits import ConnectionLimits, configure, uvicorn_options
from stt_daemon.common.logs import configure_logging

log = structlog.get_logger("gateway")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(prog="stt-gateway", description="Run the HTTP gateway.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level")
    parser.add_argument("--reload", action="store_true", help="restart when the code changes")
    # The original run.py took --noreload; reload is off by default here, but command
    # lines written for it (scripts, unit files) must keep working. The last one given wins.
    parser.add_argument(
        "--noreload", dest="reload", action="store_false", help="do not reload (the default)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes sharing the port; 0 = one per CPU core (default: STT_GATEWAY_WORKERS, 1)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be 0 (one per core) or more")
    return args


def share_metrics_between_workers() -> None:
    """Point prometheus_client's multiprocess mode at a fresh directory of our own.

    Each worker has its own counters; without this, a scrape would see whichever
    worker took it, and counters would jump back and forth. The variable must be set
    before a worker imports prometheus_client, hence here, in the parent.
    """
    path = tempfile.mkdtemp(prefix="stt-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Console script entry point."""
    args = parse_args(argv)
    if args.debug:
        os.environ["STT_LOG_LEVEL"] = "DEBUG"
    if args.workers is not None:
        os.environ["STT_GATEWAY_WORKERS"] = str(args.workers)
    settings = GatewaySettings()
    configure(ConnectionLimits.from_settings(settings))
    workers = settings.worker_count
    if workers > 1:
        _prepare_supervisor(settings, workers)
    uvicorn.run(
        "gateway.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        reload=args.reload,
        loop=_event_loop(),
        log_config=None,  # our structlog set-up handles uvicorn's loggers
        # gateway.requestid logs one access line per request, with the request id;
        # uvicorn's own would say it a second time.
        access_log=False,
        timeout_graceful_shutdown=30,
        workers=workers,
        # h11 with a head size cap, head/body deadlines, a socket cap and websocket
        # upload slots: what one client may hold (docs/api/limits.md).
        **uvicorn_options(settings),
    )


def _prepare_supervisor(settings: GatewaySettings, workers: int) -> None:
    """What the parent of several workers sets up before it starts them."""
    # The parent (uvicorn's supervisor) logs too: the same line shape as the workers'.
    configure_logging(settings.log_level, settings.log_format)
    share_metrics_between_workers()
    if settings.key_rate_limit > 0:
        log.warning(
            "auth.rate_limit_per_worker",
            workers=workers,
            reason="STT_KEY_RATE_LIMIT is kept per process: a key may get up to "
            "workers x the limit",
        )


def _event_loop() -> str:
    """uvicorn's loop: uvloop when it is installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


if __name__ == "__main__":
    main()
