"""Supervising child processes: restarted alone when they exit, within a budget; stopped in order.

Used by ``stt-local``, which runs a daemon and a gateway side by side: either can
be restarted (or crash) without taking the other down, and a child that keeps
dying is given up rather than restarted forever.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from types import FrameType

import structlog

log = structlog.get_logger("stt_local")

#: A child that exits more often than this within RESTART_WINDOW seconds is given up.
MAX_QUICK_RESTARTS = 5
RESTART_WINDOW = 60.0


@dataclass
class RestartBudget:
    """At most ``limit`` restarts within ``window`` seconds; then the child is given up."""

    limit: int = MAX_QUICK_RESTARTS
    window: float = RESTART_WINDOW
    recent: list[float] = field(default_factory=list)

    def allow(self, now: float) -> bool:
        """Count a restart at ``now`` if the budget has room for it."""
        self.recent = [t for t in self.recent if now - t < self.window]
        if len(self.recent) >= self.limit:
            return False
        self.recent.append(now)
        return True

    def delay(self) -> float:
        """Pause before the restart just allowed: 0.5 s, then doubling, at most 5 s."""
        return float(min(0.5 * 2 ** max(len(self.recent) - 1, 0), 5.0))


class Signals:
    """SIGINT and SIGTERM are counted here; the main loop acts on them (as arq and uvicorn do)."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        """Catch SIGINT (Ctrl-C) and SIGTERM."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1


class Child:
    """One supervised process, restarted alone when it exits, within a :class:`RestartBudget`."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], stop_timeout: float
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.stop_timeout = stop_timeout
        self.budget = RestartBudget()
        self.popen: subprocess.Popen[bytes] | None = None
        self.restart_at: float | None = None

    def start(self) -> None:
        """Start (or restart) the process."""
        # Its own session: a Ctrl-C in the terminal reaches only stt-local, which
        # then stops each child once, in order (a second SIGTERM forces a daemon out).
        self.popen = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
        self.restart_at = None
        log.info("local.child_started", child=self.name, pid=self.popen.pid)

    def watch(self, now: float) -> bool:
        """Restart the process if it has exited (after a pause); False once it is given up."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return True
        code = self.popen.poll() if self.popen is not None else -1
        if code is None:
            return True
        if not self.budget.allow(now):
            log.error(
                "local.child_gave_up",
                child=self.name,
                code=code,
                reason=f"exited {self.budget.limit} times within {self.budget.window:.0f} s",
            )
            return False
        delay = self.budget.delay()
        log.warning("local.child_exited", child=self.name, code=code, restart_in_s=delay)
        self.restart_at = now + delay
        return True

    def stop(self, signals: Signals) -> None:
        """SIGTERM and wait; a new signal to stt-local is passed on; SIGKILL past the timeout."""
        self.restart_at = None
        popen = self.popen
        if popen is not None and popen.poll() is None:
            log.info("local.child_stopping", child=self.name, pid=popen.pid)
            popen.terminate()
            seen, deadline = signals.count, time.monotonic() + self.stop_timeout
            while popen.poll() is None:
                if time.monotonic() > deadline:
                    log.warning("local.child_killed", child=self.name, after_s=self.stop_timeout)
                    popen.kill()
                    popen.wait()
                elif signals.count > seen:
                    seen = signals.count
                    popen.terminate()
                time.sleep(0.1)
        code = popen.returncode if popen is not None else None
        log.info("local.child_stopped", child=self.name, code=code)
