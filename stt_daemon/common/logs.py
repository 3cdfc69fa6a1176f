"""structlog set-up shared by every process: one line shape for ours and stdlib's logs."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

# Libraries whose stdlib logs are routed through structlog's formatter.
_NOISY = {"aiormq": logging.WARNING, "aio_pika": logging.WARNING, "faster_whisper": logging.WARNING}


def configure_logging(
    level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """JSON lines when stdout is not a terminal (or when asked), a console renderer otherwise."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [_stdout_handler(shared, as_json)]
    root.setLevel(level.upper())
    _route_libraries(root.level)


def _stdout_handler(shared: list[structlog.types.Processor], as_json: bool) -> logging.Handler:
    """The one handler: ours and stdlib's records rendered alike, on stdout."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else _keep,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    return handler


def _route_libraries(root_level: int) -> None:
    """Quieten the chatty libraries; uvicorn's records go through the root's handler."""
    for name, floor in _NOISY.items():
        logging.getLogger(name).setLevel(max(floor, root_level))
    # uvicorn installs its own handlers; send its records through ours instead.
    for name in ("uvicorn", "uvicorn.error"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
    # Except its access line: the gateway writes one of its own (with the request id,
    # the route and the job), and uvicorn logs its own whenever this logger has a
    # handler anywhere up the tree, whatever access_log says.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False


def _keep(
    logger: object, name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    return event_dict
