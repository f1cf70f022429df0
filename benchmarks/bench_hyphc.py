"""Cost of HypHCProxyRegularizer against the step it regularizes: HyperbolicSoftTripleLoss's forward + backward.

SOP scale: C = 11,318 classes x K = 10 proxies, batch 180, D = 64 and 128, T = 4,500 triplets per step (the
defaults: uniform sampling; CHEST's batch sampling at 25 per sample draws as many). Rows, all in one process:

* ``softtriple``: HyperbolicSoftTripleLoss alone (the baseline);
* ``softtriple + reg (weight_regularizer)``: the regularizer as its ``weight_regularizer`` (the regularizer runs after
  the loss, so its backward runs first and its proxy gradient is alive during the loss's backward);
* ``reg first, then softtriple``: the regularizer on ``get_proxies()`` computed before the loss (CHEST's order):
  its backward runs after the loss's, once the loss's large buffers are freed;
* ``reg alone (uniform / batch + euclidean)``: the regularizer's forward + backward on the ball proxies.

Target: the extra time and memory of the regularizer at most 5 % of the SoftTriple step. On CPU the peak memory
(growth of the resident set during one call, ``bench_utils.peak_memory_mb``) is measured in a child process started
with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so that every freed tensor leaves the
resident set and the figures count live tensors only; the times are taken here, with the default allocator.

On a shared CPU, ``--process-time --threads 1`` times the process's own CPU time on one thread instead of the wall
clock (descheduling by other processes then does not count; memory-bandwidth contention still does).

    python benchmarks/bench_hyphc.py [--device cuda] [--dims 64 128] [--threads 1 --process-time]
"""

import json
import os
import subprocess
import sys
import time

import torch
from bench_utils import device_parser, peak_memory_mb, print_table, step_fn, time_ms

from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.losses import HyperbolicSoftTripleLoss
from pml_hyperbolic.regularizers import HypHCProxyRegularizer

C, K, B = 11318, 10, 180


def main():
    parser = device_parser()
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--process-time", action="store_true", help="CPU time of this process, not wall time")
    parser.add_argument("--memory-only", action="store_true", help="print the peak memory figures as JSON")
    args = parser.parse_args()
    device = args.device
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = {dim: step_fns(dim, device) for dim in args.dims}
    if args.memory_only:
        print(json.dumps({dim: peak_memory(fns, device) for dim, fns in steps.items()}))
        return
    timer = process_time_ms if args.process_time else time_ms
    times = {dim: timer(fns, repeats=7, device=device) for dim, fns in steps.items()}
    if device.type == "cpu":
        del steps
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
        child = [sys.executable, __file__, "--memory-only", "--dims", *map(str, args.dims)]
        memory = json.loads(subprocess.run(child, env=env, capture_output=True, text=True, check=True).stdout)
    else:
        memory = {str(dim): peak_memory(fns, device) for dim, fns in steps.items()}
    for dim in args.dims:
        rows = {name: (t, memory[str(dim)][name]) for name, t in times[dim].items()}
        print(f"\nC = {C} x K = {K} proxies, D = {dim}, batch {B}, T = 4500 triplets (forward + backward, {device})")
        print_table(rows, baseline="softtriple")


def process_time_ms(fns, repeats, device):
    """{name: min CPU time of this process in ms} over ``repeats`` interleaved rounds, after one warm-up call."""
    if torch.device(device).type != "cpu":
        raise SystemExit("--process-time measures CPU time: use it without --device cuda.")
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t0)
    return {name: 1e3 * t for name, t in best.items()}


def peak_memory(fns, device):
    """{name: peak MB of one call after a warm-up call} (the warm-up allocates the gradients once)."""
    out = {}
    for name, fn in fns.items():
        fn()
        out[name] = peak_memory_mb(fn, device)
    return out


def step_fns(dim, device):
    """{row name: one forward + backward} at width ``dim``."""
    features = torch.randn(B, dim, device=device)
    labels = torch.randint(0, C, (B,), device=device)
    ball = ToPoincare(c=0.1, clip_r=2.3)(features).detach().requires_grad_(True)
    loss = HyperbolicSoftTripleLoss(C, dim, centers_per_class=K).to(device)
    with_reg = HyperbolicSoftTripleLoss(
        C, dim, centers_per_class=K, weight_regularizer=HypHCProxyRegularizer(C, K, generator=0)
    ).to(device)
    reg_first = HypHCProxyRegularizer(C, K, generator=0).to(device)
    reg_batch = HypHCProxyRegularizer(C, K, similarity="euclidean", sampling="batch", generator=0).to(device)
    euclidean = torch.randn(dim, C * K, device=device)  # pml SoftTripleLoss.fc layout (D_E, C·K)
    proxies = loss.get_proxies().detach().requires_grad_(True)

    def chest_order():
        loss.zero_grad(set_to_none=True)
        reg_first.zero_grad(set_to_none=True)
        ball.grad = None
        (reg_first(loss.get_proxies()) + loss(ball, labels)).backward()

    def alone(reg, *args):
        def step():
            reg.zero_grad(set_to_none=True)
            proxies.grad = None
            reg(proxies, *args).backward()

        return step

    return {
        "softtriple": step_fn(loss, ball, labels),
        "softtriple + reg (weight_regularizer)": step_fn(with_reg, ball, labels),
        "reg first, then softtriple": chest_order,
        "reg alone (uniform, hyperbolic)": alone(reg_first),
        "reg alone (batch, euclidean)": alone(reg_batch, labels, euclidean.t()),
    }


if __name__ == "__main__":
    main()
