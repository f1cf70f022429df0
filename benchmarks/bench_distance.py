"""PoincareDistance vs torch.cdist (Euclidean, default mode) vs geoopt's broadcast Poincaré dist.

Forward + backward of the full N×M matrix (upstream gradient of ones), minimum time over interleaved repeats, peak
extra memory in a forked child, and the max relative error of each Poincaré method against a float64 reference
(for d >= 1e-3) on the same inputs. Inputs are ToPoincare outputs (c = 0.1, clip_r = 2.3) of random features, with
a fraction of near-duplicate pairs (d ~ 1e-3 ... 1e-1) so that accuracy on close pairs is part of the test.

    python benchmarks/bench_distance.py            # both sizes from the issue
    python benchmarks/bench_distance.py --quick    # small sizes
    python benchmarks/bench_distance.py --device cuda
"""

import math

import geoopt
import torch
from bench_utils import device_parser, peak_memory_mb, print_table, time_ms

from pml_hyperbolic.distances import PoincareDistance
from pml_hyperbolic.layers import ToPoincare

C = 0.1


def make_inputs(n, m, dim, gen):
    to_ball = ToPoincare(c=C, clip_r=2.3)
    x = to_ball(torch.randn(n, dim, generator=gen) * 0.3)
    y = to_ball(torch.randn(m, dim, generator=gen) * 0.3)
    k = min(n, m) // 4  # near duplicates: y[:k] = x[:k] + small offsets
    scale = torch.logspace(-4, -2, k).unsqueeze(1)
    y[:k] = x[:k] + scale * torch.randn(k, dim, generator=gen) / math.sqrt(dim)
    return x, y


def ref_dist64(x, y, block=256):
    """float64 arcosh form from exact differences, in row blocks."""
    out = []
    x, y = x.double(), y.double()
    beta = 1 - C * (y * y).sum(1)
    for s in range(0, len(x), block):
        xb = x[s : s + block]
        A = torch.cdist(xb, y, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        t = 2 * C * A / ((1 - C * (xb * xb).sum(1))[:, None] * beta[None, :])
        out.append(torch.log1p(t + torch.sqrt(t * (t + 2))) / math.sqrt(C))
    return torch.cat(out)


def max_rel_err(d, ref):
    mask = ref >= 1e-3
    return ((d.double() - ref).abs() / ref)[mask].max().item()


def fwd_bwd(fn, x, y):
    def run():
        xg, yg = x.detach().requires_grad_(), y.detach().requires_grad_()
        fn(xg, yg).sum().backward()

    return run


def main():
    parser = device_parser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = args.device
    torch.set_num_threads(2)
    sizes = [(128, 500, 64), (64, 2000, 32)] if args.quick else [(512, 2000, 384), (180, 20000, 128)]
    ball = geoopt.PoincareBall(c=C)
    methods = {
        "torch.cdist (Euclidean, default)": lambda x, y: torch.cdist(x, y),
        "PoincareDistance (pml_hyperbolic)": PoincareDistance(c=C),
        "geoopt PoincareBall.dist (broadcast)": lambda x, y: ball.dist(x[:, None, :], y[None, :, :]),
    }
    gen = torch.Generator().manual_seed(0)
    for n, m, dim in sizes:
        x, y = (t.to(device) for t in make_inputs(n, m, dim, gen))
        print(f"\n== N x M x D = {n} x {m} x {dim}, float32, forward + backward, {device} ==")
        times = time_ms({name: fwd_bwd(fn, x, y) for name, fn in methods.items()}, repeats=args.repeats, device=device)
        rows = {name: (times[name], peak_memory_mb(fwd_bwd(fn, x, y), device)) for name, fn in methods.items()}
        print_table(rows, baseline="torch.cdist (Euclidean, default)")
        ref = ref_dist64(x, y)
        with torch.no_grad():
            for name in ["PoincareDistance (pml_hyperbolic)", "geoopt PoincareBall.dist (broadcast)"]:
                print(f"max relative error vs float64, d >= 1e-3: {name:40s} {max_rel_err(methods[name](x, y), ref):.2e}")
            naive = torch.cdist(x, y) ** 2  # the plain float32 GEMM form, for comparison
            t = 2 * C * naive / ((1 - C * (x * x).sum(1))[:, None] * (1 - C * (y * y).sum(1))[None, :])
            naive_d = torch.acosh(1 + t) / math.sqrt(C)
            print(f"max relative error vs float64, d >= 1e-3: {'naive float32 GEMM + arcosh':40s} {max_rel_err(naive_d, ref):.2e}")


if __name__ == "__main__":
    main()
