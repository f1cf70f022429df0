"""Timing and peak-memory helpers shared by the benchmark scripts.

Times are the minimum over repeats, with the methods interleaved so that machine noise hits them alike; every
script prints ratios against a baseline measured in the same process. On CPU, peak memory is the growth of the
process's resident set during one call (Linux): freed heap memory is returned to the OS first (``malloc_trim``), the
kernel's peak counter is reset (``/proc/self/clear_refs``), and ``VmHWM`` is read after the call. On CUDA, times are
taken after ``torch.cuda.synchronize()`` and peak memory is the growth of ``torch.cuda.max_memory_allocated``.
"""

import argparse
import ctypes
import gc
import time

import torch

_LIBC = ctypes.CDLL("libc.so.6")


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def device_parser():
    """An ``ArgumentParser`` with the benchmarks' common ``--device`` option (a ``torch.device``, default CPU)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"), help="cpu, cuda, cuda:1, ...")
    return parser


def peak_memory_mb(fn, device="cpu"):
    """Extra memory (MB) at the peak of one ``fn()`` call: resident memory on CPU, allocated memory on CUDA."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(torch.cuda.max_memory_allocated(device) - start, 0) / 2**20
    _LIBC.malloc_trim(0)
    start = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    fn()
    return max(_status_kb("VmHWM") - start, 0) / 1024


def time_ms(fns, repeats=10, warmup=2, device="cpu"):
    """{name: min time in ms} for ``fns = {name: callable}``, interleaved over ``repeats`` rounds."""
    cuda = torch.device(device).type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: 1e3 * t for name, t in best.items()}


def print_table(rows, baseline):
    """rows: {name: (ms, MB)}; prints time and memory with ratios against ``rows[baseline]``."""
    base_t, base_m = rows[baseline]
    print(f"{'method':44s} {'time (ms)':>10s} {'x base':>7s} {'peak MB':>9s} {'x base':>7s}")
    for name, (t, m) in rows.items():
        print(f"{name:44s} {t:10.1f} {t / base_t:7.2f} {m:9.1f} {m / max(base_m, 1e-9):7.2f}")


def op_counts(fn, device="cpu"):
    """"aten ops / syncing ops" of one ``fn()`` call (``utils.profiling.count_ops``), and on CUDA also the kernels it
    launches and the host synchronisations it makes (CUDA runtime calls that wait for the device)."""
    from pml_hyperbolic.utils.profiling import count_ops

    ops, syncs, _, _ = count_ops(fn)
    text = f"{ops} ops / {syncs} syncing"
    if torch.device(device).type == "cuda":
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        torch.cuda.synchronize(device)
        with torch.profiler.profile(activities=acts) as prof:
            fn()
            torch.cuda.synchronize(device)
        events = prof.events()
        kernels = sum(e.device_type == torch.autograd.DeviceType.CUDA and "Memset" not in e.name
                      and "Memcpy" not in e.name for e in events)
        waits = sum(e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaEventSynchronize")
                    for e in events) - 1  # the profiler's own final synchronize
        text += f"; {kernels} kernels / {waits} host syncs"
    return text


def graphed(fn, device):
    """A callable that replays ``fn()`` (a training step on static tensors) captured in a CUDA graph."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def print_counts(counts):
    """counts: {name: op_counts text}."""
    for name, text in counts.items():
        print(f"{name:44s} {text}")


def step_fn(loss_fn, embeddings, labels):
    """One forward + backward of ``loss_fn`` (gradients reset first, as in a training step)."""

    def step():
        loss_fn.zero_grad(set_to_none=True)
        embeddings.grad = None
        loss_fn(embeddings, labels).backward()

    return step
