"""``stt-gateway``: the flags of the original ``run.py`` (--host, --port, --debug, --reload)."""

from __future__ import annotations

import argparse
import os

import uvicorn

from gateway.config import GatewaySettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(prog="stt-gateway", description="Run the HTTP gateway.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level")
    parser.add_argument("--reload", action="store_true", help="restart when the code changes")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    return args


def main(argv: list[str] | None = None) -> None:
    """Console script entry point."""
    args = parse_args(argv)
    if args.debug:
        os.environ["STT_LOG_LEVEL"] = "DEBUG"
    settings = GatewaySettings()
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    uvicorn.run(
        "gateway.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        reload=args.reload,
        loop=loop,
        log_config=None,  # our structlog set-up handles uvicorn's loggers
        # The websocket endpoint takes a whole recording in one message.
        ws_max_size=settings.max_upload_bytes,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
