"""``stt-daemon``: settings -> logging -> models -> run under uvloop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import structlog

from stt_daemon.common.logs import configure_logging
from stt_daemon.config import DaemonSettings
from stt_daemon.engine import Engine, WhisperEngine, threads_per_job
from stt_daemon.heap import tune_heap
from stt_daemon.metrics import DaemonMetrics
from stt_daemon.models import ModelNotFound, resolve
from stt_daemon.niceness import in_niced_thread
from stt_daemon.speakers.step import SpeakerStep, load_speakers
from stt_daemon.standin import standin_engines
from stt_daemon.worker import Daemon

log = structlog.get_logger("stt_daemon")


def load_engines(settings: DaemonSettings) -> dict[str, Engine]:
    """Load every configured model once, before consuming anything."""
    if settings.engine == "standin":
        return standin_engines(settings)
    engines: dict[str, Engine] = {}
    threads = threads_per_job(settings.cpu_threads, settings.prefetch)
    for spec in settings.models:
        ref = resolve(spec)
        engines[ref.name] = WhisperEngine(
            ref,
            # One worker more than STT_PREFETCH, so that a live window never waits for a
            # batch window to finish (batch jobs then hold at their next window, see
            # live.LiveGate). Each worker costs memory whether it runs or not: 3 -> 6
            # workers took 3 jobs in flight from 733 to 1,065 MB with glibc's default
            # heaps; with the daemon's (heap.py) one more costs 15-45 MiB (the memory test:
            # 527 MiB with 4 workers, 481-513 with 3).
            workers=settings.prefetch + 1,
            cpu_threads=threads,
            device=settings.device,
            compute_type=settings.compute_type,
            beam_size=settings.beam_size,
            batch_size=settings.resolved_batch_size,
        )
        log.info(
            "model.loaded",
            model=ref.name,
            path=str(ref.path),
            cpu_threads=threads,
            batch_size=settings.resolved_batch_size,
        )
    return engines


def load_models(settings: DaemonSettings) -> tuple[dict[str, Engine], SpeakerStep]:
    """The Whisper models, then the speaker model (whose absence only refuses diarize=speakers)."""
    return load_engines(settings), load_speakers(settings)


async def serve(settings: DaemonSettings) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    metrics = DaemonMetrics()
    metrics.serve(settings.metrics_port, settings.metrics_host)
    # CTranslate2's worker threads are made while loading: niced there, they stay niced
    engines, speakers = await asyncio.to_thread(
        in_niced_thread, settings.compute_nice, lambda: load_models(settings)
    )
    daemon = Daemon(settings, engines, metrics, speakers)
    loop = asyncio.get_running_loop()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        # First signal: graceful stop. Second: the operator insists, exit now
        # (in-flight jobs are redelivered by the broker; nothing is lost).
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("daemon.forced_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("daemon.signal", signal=signal.Signals(signum).name)
        daemon.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await daemon.run()


def main() -> None:
    """Console script entry point."""
    settings = DaemonSettings()
    configure_logging(settings.log_level, settings.log_format)
    # Before any thread (metrics server, model workers) makes a heap of its own.
    tune_heap(settings.malloc_arenas, settings.malloc_mmap_threshold)
    try:
        run_forever(serve(settings))
    except ModelNotFound as exc:
        log.error("daemon.model_not_found", error=str(exc))
        sys.exit(2)


def run_forever(main_coro: Coroutine[Any, Any, None]) -> None:
    """Run under uvloop where it is installed (not on Windows)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coro)
    else:
        uvloop.run(main_coro)


if __name__ == "__main__":
    main()
