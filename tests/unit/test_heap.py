"""The daemon's cap on glibc heaps (heap.py) really limits them."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from stt_daemon.heap import cap_arenas

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc heaps only")

#: Eight threads allocate at once, then glibc lists its heaps (``malloc_stats`` on stderr).
PROGRAM = """
import ctypes, sys, threading
from stt_daemon.heap import cap_arenas
cap_arenas(int(sys.argv[1]))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
barrier = threading.Barrier(8)
def work():
    barrier.wait()  # all at once: contended heaps are what make glibc add one
    blocks = [libc.malloc(4096) for _ in range(20000)]
    barrier.wait()
    for b in blocks:
        libc.free(ctypes.c_void_p(b))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()
"""


def heaps(cap: int, env: dict[str, str] | None = None) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(cap)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))


def test_two_heaps_at_most_with_the_cap() -> None:
    assert heaps(2) <= 2


def test_threads_make_more_heaps_without_it() -> None:
    # The control: without the cap the same program makes more, or the first test proves nothing.
    assert heaps(0) > 2


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert cap_arenas(2) is False


def test_zero_keeps_the_default() -> None:
    assert cap_arenas(0) is False


#: A freed 8 MiB block, then another: is the second one mapped on its own (``hblkhd``,
#: glibc's bytes in mapped blocks)? By default glibc raised its threshold past 8 MiB
#: when the first was freed, and carves the second from the heap, where it stays.
MMAP_PROGRAM = """
import ctypes, sys
from stt_daemon.heap import fix_mmap_threshold
fix_mmap_threshold(int(sys.argv[1]))
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = MallInfo2
libc.free(ctypes.c_void_p(libc.malloc(8 << 20)))
block = libc.malloc(8 << 20)
print(libc.mallinfo2().hblkhd)
"""


def mapped_after_a_free(threshold: int) -> int:
    done = subprocess.run(
        [sys.executable, "-c", MMAP_PROGRAM, str(threshold)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def test_large_blocks_stay_mapped_with_a_fixed_threshold() -> None:
    assert mapped_after_a_free(4 << 20) >= 8 << 20


def test_glibc_keeps_them_in_the_heap_without_it() -> None:
    assert mapped_after_a_free(0) < 8 << 20
