"""The live gate: batch work holds while live windows decode and a moment after, bounded."""

from __future__ import annotations

import threading
import time

from stt_daemon.live import LiveGate


def test_batch_goes_on_at_once_without_live_work() -> None:
    gate = LiveGate(linger=0.5)
    started = time.monotonic()
    gate.wait_turn(timeout=2)
    assert time.monotonic() - started < 0.05


def test_batch_waits_for_a_live_window_and_its_linger() -> None:
    gate = LiveGate(linger=0.3)
    released = threading.Event()

    def live_window() -> None:
        with gate.live():
            released.wait(2)

    thread = threading.Thread(target=live_window)
    thread.start()
    time.sleep(0.05)
    started = time.monotonic()
    threading.Timer(0.2, released.set).start()
    gate.wait_turn(timeout=5)
    waited = time.monotonic() - started
    thread.join()
    # 0.15 s more of the window, then the linger.
    assert 0.4 <= waited < 1.0, waited


def test_endless_live_work_never_stops_batch_for_longer_than_the_bound() -> None:
    gate = LiveGate(linger=10)
    with gate.live():
        started = time.monotonic()
        gate.wait_turn(timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 0.8


def test_paced_items_come_through_in_order() -> None:
    gate = LiveGate(linger=0.01)
    assert list(gate.paced(iter([1, 2, 3]))) == [1, 2, 3]


def test_held_jobs_go_on_one_overdue_window_at_a_time() -> None:
    # Three batch jobs held by endless live work: when their holds run out, one runs a
    # window while the others keep waiting, so live work always finds a free worker.
    gate = LiveGate(linger=10, max_hold=0.3)
    running: list[int] = []
    most = [0]
    lock = threading.Lock()

    def window() -> int:
        with lock:
            running.append(1)
            most[0] = max(most[0], len(running))
        time.sleep(0.15)
        with lock:
            running.pop()
        return 1

    def batch_job() -> None:
        for _ in gate.paced(window() for _ in range(2)):
            pass

    with gate.live():
        started = time.monotonic()
        jobs = [threading.Thread(target=batch_job) for _ in range(3)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(timeout=30)
    assert all(not job.is_alive() for job in jobs)
    assert most[0] == 1  # before: all three at once
    assert time.monotonic() - started < 10
