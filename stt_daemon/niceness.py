"""Transcription threads run at a lower CPU priority than the event loop.

A daemon's event loop does little but must do it on time: answer live windows,
settle deliveries, beat heartbeats. Its transcription threads want every cycle the
cores have. At equal priority the loop waits for its turn behind them (on two busy
cores, 12 ms at p99 per live window round trip); niced, they yield to it as soon as
it has something to do, and take the same cycles the rest of the time.

Linux gives each thread its own nice value and a new thread the value of the thread
that made it, so the model is loaded in a thread of its own, niced: CTranslate2's
worker threads, made while loading, inherit it. The event loop's thread keeps its
priority: an unprivileged process may raise a nice value but never lower it again.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import structlog

log = structlog.get_logger("stt_daemon.niceness")

T = TypeVar("T")


def in_niced_thread(increment: int, make: Callable[[], T]) -> T:
    """``make()`` in a new thread ``increment`` nice levels down; its result.

    Threads that ``make`` starts keep the lower priority. 0 runs it unchanged (still
    in a thread of its own). Blocks: call it through ``asyncio.to_thread``.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if increment > 0:
                _lower_own_priority(increment)
            outcome.append(make())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="model-loader")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def _lower_own_priority(increment: int) -> None:
    if not sys.platform.startswith("linux"):
        return  # elsewhere nice is per process: lowering it would slow the loop too
    tid = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + increment))
    except OSError as exc:  # a sandbox without setpriority: run at the same priority
        log.warning("niceness.not_applied", error=str(exc))


def thread_nice(tid: int) -> int:
    """The nice value of one of this process's threads (Linux), for tests and checks."""
    with open(f"/proc/self/task/{tid}/stat") as stat:
        # The comm field may hold spaces and parentheses: count from the last ")".
        return int(stat.read().rsplit(")", 1)[1].split()[16])
