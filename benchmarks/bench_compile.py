"""torch.compile of the distance's plain formula against the C kernels and torch.cdist on the CPU (docs/design.md):
forward + backward of 512 × 2000 × 128, 2 threads, minimum over 15 interleaved repeats.

    python benchmarks/bench_compile.py
"""

import warnings

import torch
from bench_utils import time_ms

from pml_hyperbolic import poincare

C = 0.1


def plain_distance(a, b):
    """The formula in torch ops (what torch.compile fuses): no close-pair recomputation, float32 norms."""
    u, v = (a * a).sum(1, keepdim=True), (b * b).sum(1)
    q = C * (u + v - 2 * a @ b.t()).clamp_min(0) / ((1 - C * u) * (1 - C * v))
    return 2 / C**0.5 * torch.asinh(q.sqrt())


def main():
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x = poincare.expmap0(torch.randn(512, 128, generator=g), C)
    y = poincare.expmap0(torch.randn(2000, 128, generator=g), C)
    grad = torch.rand(512, 2000, generator=g)

    def step(fn):
        def run():
            a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
            fn(a, b).backward(grad)

        return run

    runs = {
        "torch.cdist": step(torch.cdist),
        "PoincareDistance (C kernels)": step(lambda a, b: poincare.cdist(a, b, C)),
        "plain formula, eager torch": step(plain_distance),
        "plain formula, torch.compile": step(torch.compile(plain_distance)),
    }
    times = time_ms(runs, repeats=15, warmup=2)
    for name, t in times.items():
        print(f"{name:32s} {t:7.2f} ms  {t / times['torch.cdist']:.2f}x")


if __name__ == "__main__":
    main()
