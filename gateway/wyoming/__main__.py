"""``stt-wyoming``: serve the gateway's models to Home Assistant over the Wyoming protocol.

Settings are the gateway's (``STT_`` environment: broker, models, status store,
live limits). Wyoming has no authentication: when the gateway is configured
with API keys, starting this server would open a way around them, so it refuses
unless ``--allow-unauthenticated`` says the network in front of it is trusted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlparse

import structlog

from gateway.auth import KeyFileError, load_keys
from gateway.config import GatewaySettings
from stt_daemon.common.logs import configure_logging

log = structlog.get_logger("gateway.wyoming")

DEFAULT_URI = "tcp://0.0.0.0:10300"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        prog="stt-wyoming",
        description="Speech-to-text for Home Assistant (Wyoming protocol) over the live "
        "sessions of the daemons. No authentication: listen on a trusted network only.",
    )
    parser.add_argument(
        "--uri",
        default=DEFAULT_URI,
        help=f"where to listen: tcp://HOST:PORT or unix://PATH (default {DEFAULT_URI})",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="start even though the gateway has API keys (Wyoming cannot check them)",
    )
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level")
    args = parser.parse_args(argv)
    problem = uri_problem(args.uri)
    if problem:
        parser.error(problem)
    return args


def uri_problem(uri: str) -> str | None:
    """Why ``--uri`` cannot be listened on, or None."""
    try:
        parsed = urlparse(uri)
        port = parsed.port
    except ValueError as exc:
        return f"--uri: {exc}"
    if parsed.scheme == "tcp":
        if not parsed.hostname or port is None:
            return "--uri: tcp:// needs a host and a port (tcp://0.0.0.0:10300)"
        return None
    if parsed.scheme == "unix":
        return None if parsed.path else "--uri: unix:// needs a socket path"
    return "--uri must be tcp://HOST:PORT or unix://PATH"


def check_exposure(settings: GatewaySettings, allow_unauthenticated: bool) -> str | None:
    """Why the server must not start (API keys it would bypass), or None; warns when allowed."""
    try:
        keys = load_keys(settings)
    except KeyFileError as exc:
        return str(exc)
    if not keys:
        log.warning(
            "wyoming.unauthenticated",
            reason="Wyoming has no authentication: anyone who reaches the port may transcribe; "
            "listen on a trusted network only",
        )
        return None
    if not allow_unauthenticated:
        return (
            "the gateway has API keys (STT_API_KEYS / STT_API_KEYS_FILE) and Wyoming cannot "
            "check them: pass --allow-unauthenticated if the network in front of this port "
            "is trusted"
        )
    log.warning(
        "wyoming.bypasses_api_keys",
        keys=len(keys),
        reason="--allow-unauthenticated: Wyoming clients transcribe without a key",
    )
    return None


def main(argv: list[str] | None = None) -> None:
    """Console script entry point."""
    args = parse_args(argv)
    settings = GatewaySettings()
    configure_logging("DEBUG" if args.debug else settings.log_level, settings.log_format)
    refusal = check_exposure(settings, args.allow_unauthenticated)
    if refusal:
        log.error("wyoming.refused_to_start", reason=refusal)
        sys.exit(2)
    try:
        # Imported here: the wyoming package comes with an optional extra.
        from gateway.wyoming.server import CannotListen, serve
    except ImportError as exc:
        log.error("wyoming.not_installed", error=str(exc), hint="pip install 'stt-jobs[wyoming]'")
        sys.exit(2)
    try:
        _run(serve(settings, args.uri))
    except CannotListen as exc:
        log.error("wyoming.cannot_listen", uri=args.uri, error=str(exc))
        sys.exit(1)


def _run(main_coro: Coroutine[Any, Any, None]) -> None:
    """Run under uvloop where it is installed (not on Windows)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coro)
    else:
        uvloop.run(main_coro)


if __name__ == "__main__":
    main()
