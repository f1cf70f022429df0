"""Timing and peak-memory helpers shared by the benchmark scripts.

Times are the minimum over repeats, with the methods interleaved so that machine noise hits them alike; every
script prints ratios against a baseline measured in the same process. Peak memory is measured in a forked child
process: the growth of its resident set (``ru_maxrss``) over its size when the measured call starts.
"""

import multiprocessing as mp
import os
import resource
import time


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_child(fn, queue):
    fn()  # warm-up: allocator pools, lazy initialisation
    start = _rss_bytes()
    fn()
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start)


def peak_memory_mb(fn):
    """Extra resident memory (MB) at the peak of ``fn()``, measured in a forked child (Linux)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(fn, queue))
    proc.start()
    proc.join()
    return max(queue.get(), 0) / 2**20


def time_ms(fns, repeats=10, warmup=2):
    """{name: min time in ms} for ``fns = {name: callable}``, interleaved over ``repeats`` rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: 1e3 * t for name, t in best.items()}


def print_table(rows, baseline):
    """rows: {name: (ms, MB)}; prints time and memory with ratios against ``rows[baseline]``."""
    base_t, base_m = rows[baseline]
    print(f"{'method':44s} {'time (ms)':>10s} {'x base':>7s} {'peak MB':>9s} {'x base':>7s}")
    for name, (t, m) in rows.items():
        print(f"{name:44s} {t:10.1f} {t / base_t:7.2f} {m:9.1f} {m / max(base_m, 1e-9):7.2f}")
