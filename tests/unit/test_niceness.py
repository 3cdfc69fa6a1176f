"""Threads made while loading the model run niced; the caller's thread does not."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from stt_daemon.niceness import in_niced_thread, thread_nice

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice")


def start_worker() -> int:
    """What CTranslate2 does while loading: start a long-lived thread; its id."""
    ready = threading.Event()
    ids: list[int] = []

    def work() -> None:
        ids.append(threading.get_native_id())
        ready.set()
        time.sleep(2)

    threading.Thread(target=work, daemon=True).start()
    ready.wait(5)
    return ids[0]


def test_threads_started_inside_inherit_the_lower_priority() -> None:
    before = thread_nice(threading.get_native_id())
    worker = in_niced_thread(5, start_worker)
    assert thread_nice(worker) == min(19, before + 5)
    assert thread_nice(threading.get_native_id()) == before


def test_zero_leaves_the_priority_alone() -> None:
    before = thread_nice(threading.get_native_id())
    assert thread_nice(in_niced_thread(0, start_worker)) == before


def test_a_failure_reaches_the_caller() -> None:
    def broken() -> int:
        raise LookupError("no such model")

    with pytest.raises(LookupError, match="no such model"):
        in_niced_thread(5, broken)
