"""PoincareDistance (pml_hyperbolic.poincare.cdist) against torch.cdist, for four distributions of the points.

Forward + backward of the full N×M matrix with a random upstream gradient, both methods timed in this process
(interleaved repeats, minimum time; on CUDA after synchronisation), and the max relative error of the Poincaré
distances against a float64 reference from exact differences (d >= 1e-3, on a subset of rows). The distributions
look like real embeddings and include the hard cases:

* ``sphere``: every point at 0.62 of the ball's radius (what ToPoincare's clipping produces);
* ``spread``: radii uniform in [0, 0.95 R] (what a hierarchy looks like in the ball);
* ``clustered``: spread radii, points in tight clusters shared by x and y (>= 1 % of pairs at d < 0.01);
* ``boundary``: every point at 0.999 R.

    python benchmarks/bench_distance.py                 # the CPU sizes (2 threads)
    python benchmarks/bench_distance.py --quick         # small sizes, under a minute on 2 cores
    python benchmarks/bench_distance.py --device cuda   # the GPU sizes
"""

import math
import platform

import torch
from bench_utils import device_parser, peak_memory_mb, time_ms

from pml_hyperbolic import backends, poincare

C = 0.1
R = 1 / math.sqrt(C)
KINDS = ("sphere", "spread", "clustered", "boundary")
SIZES = {
    "cpu": [(512, 2000, 128), (180, 20000, 128), (512, 2000, 384)],
    "quick": [(256, 1000, 128), (64, 4000, 64)],
    "cuda": [(4096, 113180, 128), (8192, 60000, 384), (512, 2000, 384), (180, 20000, 128)],
}


def _directions(n, dim, gen, device):
    v = torch.randn(n, dim, generator=gen, device=device)
    return v / v.norm(dim=1, keepdim=True)


def make_points(kind, n, m, dim, gen, device):
    """x (n×dim), y (m×dim) float32 ball points of curvature C with the distribution ``kind``."""
    if kind == "clustered":
        centres = make_points("spread", 50, 0, dim, gen, device)[0] * 0.97  # 50 clusters: 2 % of pairs share one
        pick = torch.randint(50, (n + m,), generator=gen, device=device)
        lam = 2 / (1 - C * centres[pick].pow(2).sum(1, keepdim=True))  # d ~ lam ||offset|| for close points
        length = (0.003 / lam) * torch.rand(n + m, 1, generator=gen, device=device)
        offset = _directions(n + m, dim, gen, device) * length
        points = centres[pick] + offset
    else:
        radius = {"sphere": 0.62, "boundary": 0.999}.get(kind)
        if radius is None:
            r = 0.95 * torch.rand(n + m, 1, generator=gen, device=device)
        else:
            r = torch.full((n + m, 1), radius, device=device)
        points = _directions(n + m, dim, gen, device) * r * R
    points = poincare.project(points, C)
    return points[:n].contiguous(), points[n:].contiguous()


def reference(x, y):
    """float64 distances from exact differences (x: a few rows)."""
    x, y = x.double(), y.double()
    A = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").square()
    q = C * A / ((1 - C * x.pow(2).sum(1))[:, None] * (1 - C * y.pow(2).sum(1))[None, :])
    return 2 / math.sqrt(C) * torch.asinh(q.sqrt())


def max_rel_err(x, y, rows=64):
    with torch.no_grad():
        d, ref = poincare.cdist(x[:rows], y, C).double(), reference(x[:rows], y)
    keep = ref >= 1e-3
    return ((d - ref).abs() / ref)[keep].max().item(), (ref < 0.01).double().mean().item()


def fwd_bwd(fn, x, y, grad):
    def run():
        xg, yg = x.detach().requires_grad_(), y.detach().requires_grad_()
        fn(xg, yg).backward(grad)

    return run


def main():
    parser = device_parser()
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats (under a minute on 2 CPU cores)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 10, quick 3)")
    parser.add_argument("--memory", action="store_true", help="also measure peak extra memory (slower)")
    args = parser.parse_args()
    device = args.device
    torch.set_num_threads(2)
    repeats = args.repeats or (3 if args.quick else 10)
    sizes = SIZES["quick" if args.quick else device.type]
    methods = {"torch.cdist": lambda x, y: torch.cdist(x, y), "PoincareDistance": lambda x, y: poincare.cdist(x, y, C)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"# {name}, torch {torch.__version__}, {torch.get_num_threads()} threads; PoincareDistance backend: "
          f"{backends.select(torch.empty(1, device=device))}; forward + backward, float32")
    print("| N × M × D | points | pairs d < 0.01 | torch.cdist (ms) | PoincareDistance (ms) | ratio | max rel. error |"
          + (" peak MB (cdist / ours) |" if args.memory else ""))
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|" if args.memory else ""))
    gen = torch.Generator(device=device).manual_seed(0)
    for n, m, dim in sizes:
        for kind in KINDS:
            x, y = make_points(kind, n, m, dim, gen, device)
            grad = torch.rand(n, m, generator=gen, device=device)
            runs = {label: fwd_bwd(fn, x, y, grad) for label, fn in methods.items()}
            t = time_ms(runs, repeats=repeats, warmup=1 if args.quick else 2, device=device)
            err, close = max_rel_err(x, y)
            row = (f"| {n} × {m} × {dim} | {kind} | {100 * close:.1f} % | {t['torch.cdist']:.2f} | "
                   f"{t['PoincareDistance']:.2f} | {t['PoincareDistance'] / t['torch.cdist']:.2f} | {err:.1e} |")
            if args.memory:
                mem = [peak_memory_mb(run, device) for run in runs.values()]
                row += f" {mem[0]:.0f} / {mem[1]:.0f} |"
            print(row, flush=True)
            del x, y, grad, runs


if __name__ == "__main__":
    main()
