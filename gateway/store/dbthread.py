"""One sqlite3 connection and the one thread that uses it: SQLite off the event loop.

sqlite3 blocks while it waits for another process's lock (the busy timeout): on the
event loop, one gateway process's write froze every request of another for seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class StoreBusy(RuntimeError):
    """Another process held the database's write lock for longer than we wait."""


#: Calls one batch may hold: a transaction stays short while calls pile up.
_MAX_BATCH = 256
#: A call waiting for the connection's thread: the work, its future and that future's loop.
_Call = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


class Connection:
    """One sqlite3 connection and the one thread that ever uses it.

    sqlite3 blocks while it waits for another process's lock (up to the busy
    timeout); here that wait blocks this thread, never the event loop. The thread
    lives as long as the store (no thread per call) and takes the calls waiting for
    it in batches: one wake-up of the loop hands back a whole batch's answers, and on
    the writer (``batch_writes``) a batch is one transaction, each call in a
    savepoint of its own, so a storm of events costs one lock and one commit.
    """

    def __init__(
        self,
        path: Path,
        name: str,
        lock_timeout: float,
        setup: Callable[[sqlite3.Connection], None],
        *,
        batch_writes: bool,
    ) -> None:
        self._lock_timeout = lock_timeout
        self._batch_writes = batch_writes
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._stopped = False
        opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        # A daemon thread: a store nobody closed must not keep the process alive.
        self._thread = threading.Thread(
            target=self._serve, args=(path, setup, opened), name=name, daemon=True
        )
        self._thread.start()
        # Waited for: this runs once at start-up, before any request, and a database
        # that cannot be opened must stop the start.
        opened.result()

    def _serve(
        self,
        path: Path,
        setup: Callable[[sqlite3.Connection], None],
        opened: concurrent.futures.Future[None],
    ) -> None:
        try:
            db = sqlite3.connect(path, isolation_level=None)
            try:
                db.row_factory = sqlite3.Row
                db.execute(f"PRAGMA busy_timeout={int(self._lock_timeout * 1000)}")
                db.execute("PRAGMA synchronous=NORMAL")
                setup(db)
            except BaseException:
                db.close()
                raise
        except BaseException as exc:
            opened.set_exception(exc)
            return
        opened.set_result(None)
        try:
            while (batch := self._next_batch()) is not None:
                run = self._write if self._batch_writes else self._read
                _settle(batch, run(db, batch))
        finally:
            db.close()

    def _next_batch(self) -> list[_Call] | None:
        """The calls waiting now (at least one); None once the store is closed."""
        first = self._calls.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < _MAX_BATCH:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if call is None:
                self._calls.put(None)  # served after this batch
                break
            batch.append(call)
        return batch

    def _read(self, db: sqlite3.Connection, batch: list[_Call]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        for work, _, _ in batch:
            try:
                outcomes.append((work(db), None))
            except Exception as exc:
                outcomes.append((None, self._clear(exc)))
        return outcomes

    def _write(self, db: sqlite3.Connection, batch: list[_Call]) -> list[_Outcome]:
        """The batch in one immediate transaction (the write lock first, so that each
        read-modify-write is atomic across processes); a call that fails is rolled
        back to its savepoint and the others still commit."""
        outcomes: list[_Outcome] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for work, _, _ in batch:
                db.execute("SAVEPOINT call")
                try:
                    outcomes.append((work(db), None))
                except Exception as exc:
                    if not db.in_transaction:  # SQLite rolled back all of it (I/O, full disk)
                        raise
                    db.execute("ROLLBACK TO call")
                    outcomes.append((None, self._clear(exc)))
                db.execute("RELEASE call")
            db.execute("COMMIT")
        except Exception as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # answered with ``exc`` all the same
                    db.execute("ROLLBACK")
            failed = self._clear(exc)
            return [(None, failed)] * len(batch)
        return outcomes

    def _clear(self, exc: Exception) -> Exception:
        """A lock held past our wait as :class:`StoreBusy`; other errors as they are."""
        if (
            isinstance(exc, sqlite3.OperationalError)
            and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY
        ):
            busy = StoreBusy(
                f"the status database stayed locked by another process for "
                f"{self._lock_timeout:g} s ({exc})"
            )
            busy.__cause__ = exc
            return busy
        return exc

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` on the connection's thread; the loop goes on meanwhile."""
        if self._stopped:
            # Queued behind the stop, a call would never be answered.
            raise RuntimeError("the status store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((work, future, loop))
        return await future

    def stop(self) -> None:
        """Let the thread close the connection and end, after the calls already made."""
        if not self._stopped:
            self._stopped = True
            self._calls.put(None)

    async def close(self) -> None:
        """:meth:`stop`, and wait for the thread to end."""
        self.stop()
        await asyncio.to_thread(self._thread.join)


#: What one call came to: its answer, or the error it raised.
_Outcome = tuple[Any, Exception | None]


def _settle(batch: list[_Call], outcomes: list[_Outcome]) -> None:
    """Hand the answers back, one wake-up per loop (there is one loop in practice)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Outcome]]] = {}
    for (_, future, loop), outcome in zip(batch, outcomes, strict=True):
        by_loop.setdefault(loop, []).append((future, outcome))
    for loop, answers in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_answer, answers)


def _answer(answers: list[tuple[asyncio.Future[Any], _Outcome]]) -> None:
    for future, (value, error) in answers:
        if future.done():  # the caller was cancelled; its work was done all the same
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
