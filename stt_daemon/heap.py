"""How much freed memory glibc may keep: heaps (malloc arenas) and large blocks.

glibc gives each thread that allocates concurrently a heap ("arena") of its own, up
to eight per core, and a heap keeps what its thread freed for that thread's next
call. CTranslate2 allocates from every worker thread, so the daemon's peak followed
its worker count rather than its work: three long jobs in flight peaked at 553 MiB
with the default, 480 MiB with two arenas (silence; 695 vs 602 MiB with ten minutes
of speech among them, see the benchmark's memory section), at no measurable cost in
speed (``make bench``). Setting it from the process itself (``mallopt``) covers every
way the daemon is started, not only those that set ``MALLOC_ARENA_MAX``.

Large blocks are the other half. glibc maps a block of its own for anything over a
threshold and unmaps it when freed, but raises that threshold (up to 32 MiB) each
time such a block is freed, after which the decoder's windows (a few MiB each: 30 s
of samples, their mel features, the encoder's output) are carved from the heaps and
kept there. A fixed threshold of 4 MiB stops that: 571 -> 513 MiB with speech among
the jobs. (128 KiB went down to 400 MiB but spent a third of the time in the kernel
mapping and unmapping.)
"""

from __future__ import annotations

import ctypes
import os
import platform

import structlog

log = structlog.get_logger("stt_daemon.heap")

#: ``M_ARENA_MAX`` and ``M_MMAP_THRESHOLD`` from glibc's malloc.h.
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3


def tune_heap(arenas: int, mmap_threshold: int) -> None:
    """Apply both limits (see the module's text); 0 leaves one as glibc has it."""
    cap_arenas(arenas)
    fix_mmap_threshold(mmap_threshold)


def cap_arenas(count: int) -> bool:
    """Let glibc keep at most ``count`` heaps; False when not applied.

    Call it before any thread starts: heaps made before stay. ``count`` 0 keeps
    glibc's default, and so does a ``MALLOC_ARENA_MAX`` in the environment (the
    operator's word wins).
    """
    if count <= 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return _mallopt(_M_ARENA_MAX, count)


def fix_mmap_threshold(size: int) -> bool:
    """Map blocks of ``size`` bytes or more on their own, returned when freed.

    0 keeps glibc's sliding threshold, and so does ``MALLOC_MMAP_THRESHOLD_`` in the
    environment. False when not applied.
    """
    if size <= 0 or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return _mallopt(_M_MMAP_THRESHOLD, size)


def _mallopt(option: int, value: int) -> bool:
    if platform.libc_ver()[0] != "glibc":
        return False  # other C libraries (musl) have neither
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    applied = bool(libc.mallopt(option, value))
    if not applied:
        log.warning("heap.mallopt_refused", option=option, value=value)
    return applied
