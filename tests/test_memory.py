"""Freed memory kept for the next model call (glibc), and given back once the server is idle."""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import sys
import threading

import pytest

from harken.service.scheduler import Scheduler

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)

# A model call in small: worker threads take 100 MB buffers from malloc (over glibc's 32 MB mmap
# ceiling, as an encoder's attention scores are), write every page and free them, as CTranslate2
# does. Prints the page faults. (Not numpy: it asks for huge pages, which fault 512 times less.)
_CALLS = """
import ctypes, json, resource, sys, threading
from harken.service.memory import keep_freed_memory, release_free_memory

taken = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 100 * 2**20

def calls():
    for _ in range(10):
        buffer = libc.malloc(SIZE)
        ctypes.memset(buffer, 1, SIZE)
        libc.free(buffer)

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) / 1024 for l in status if l.startswith("VmRSS:"))

before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
workers = [threading.Thread(target=calls) for _ in range(2)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
held = rss_mb()
release_free_memory()
print(json.dumps({"taken": taken, "faults": faults, "held_mb": held, "released_mb": rss_mb()}))
"""


def _calls(mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CALLS, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@glibc_only
def test_kept_memory_is_reused_instead_of_faulted_in_again_then_given_back():
    plain, kept = _calls("plain"), _calls("keep")
    assert kept["taken"] is True
    # 20 buffers of 25,600 pages each: glibc's default faults nearly all of them in afresh.
    assert plain["faults"] > 400_000, plain
    # Kept: each thread's first buffers fault in, later ones reuse them.
    assert kept["faults"] < plain["faults"] / 4, (plain, kept)
    # What was kept goes back to the system on release.
    assert kept["held_mb"] > 150, kept
    assert kept["released_mb"] < kept["held_mb"] - 150, kept


def test_the_idle_hook_runs_once_after_a_quiet_spell_and_not_while_work_comes():
    calls: list[float] = []

    async def scenario() -> None:
        scheduler = Scheduler(workers=1, max_queue=4)
        scheduler.idle_seconds = 0.3
        scheduler.when_idle = lambda: calls.append(threading.get_ident())
        try:
            await scheduler.run(sum, [1, 2])
            await asyncio.sleep(0.1)
            await scheduler.run(sum, [3])  # work again before the quiet spell is over
            await asyncio.sleep(0.15)
            assert calls == []  # the first timer saw the second job come
            await asyncio.sleep(0.4)
            assert len(calls) == 1
        finally:
            scheduler.shutdown()

    asyncio.run(scenario())
    assert calls and calls[0] != threading.get_ident()  # on a spare thread, not the loop's
