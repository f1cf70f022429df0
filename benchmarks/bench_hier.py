"""Forward + backward time and peak memory of HIERLoss at B = 180, P = 512, D = 512 and D = 128 (2 CPU threads).

Inputs follow the official recipe: batch of 90 classes × 2 images, embeddings clipped onto the r = 2.3 sphere by
ToPoincare(riemannian=True), 512 hierarchical proxies, topk = 20, 50 triplets per anchor.

Baseline, run in the same process: "official-style", the formulas of hier/losses.py re-implemented in this file for
measurement only (not the official code): the (B+P)×(B+P)×D Möbius-addition distance tensor, a Python loop over
anchors with numpy sampling, and F.gumbel_softmax with plain autograd. It needs ~7 GB at D = 512 (skip it with
--no-official). HIERLoss is timed with the official Gumbel LCAs, with lca="argmax" (no noise to draw) and with
torch ops only (no C / Triton kernels); on CUDA also replayed from a CUDA graph. Op counts: aten ops and syncing ops
of one step (on CUDA also kernels launched and host syncs).

    python benchmarks/bench_hier.py [--dims 512 128] [--no-official] [--threads 2] [--device cuda]
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from bench_utils import device_parser, graphed, op_counts, peak_memory_mb, print_counts, print_table, time_ms

from pml_hyperbolic import backends
from pml_hyperbolic.backends import native
from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.losses import HIERLoss

B, P, C, CLIP, TOPK, T_PER_ANCHOR = 180, 512, 0.1, 2.3, 20, 50


def official_style_dist(x, y, c):
    """Möbius-addition distance with the (N, M, D) intermediate of the official code."""
    xy = -x @ y.t()
    x2 = (x * x).sum(1, keepdim=True)
    y2 = (y * y).sum(1, keepdim=True).t()
    num = (1 + 2 * c * xy + c * y2).unsqueeze(2) * (-x).unsqueeze(1) + (1 - c * x2).unsqueeze(2) * y.unsqueeze(0)
    den = 1 + 2 * c * xy + c**2 * x2 * y2
    norm = (num / (den.unsqueeze(2) + 1e-5)).norm(dim=2)
    return 2 / math.sqrt(c) * torch.atanh((math.sqrt(c) * norm).clamp(max=1 - 1e-5))


def official_style_mine(sim, topk, t):
    """Mutual top-k triplets with a Python loop over anchors (one host sync per row)."""
    knn = torch.zeros_like(sim).scatter_(1, sim.topk(topk, dim=1).indices, 1)
    r = (knn + knn.t()) / 2
    r.fill_diagonal_(-1)
    a, p, n = [], [], []
    for i in range(len(sim)):
        pos = (r[i] == 1).nonzero().squeeze(1).cpu().numpy()
        if len(pos) <= 1:
            continue
        neg = (r[i] < 1).nonzero().squeeze(1).cpu().numpy()
        a += [i] * t
        p += list(np.random.choice(pos, t))
        n += list(np.random.choice(neg, t))
    return tuple(torch.tensor(v, device=sim.device) for v in (a, p, n))


def official_style_ghhc(d, triplets, margin=0.1, tau=0.1):
    i, j, k = triplets
    m_ij = torch.maximum(d[i], d[j])
    pi_ij = F.gumbel_softmax(-m_ij / tau, dim=1, hard=True)
    pi_ijk = F.gumbel_softmax(-torch.maximum(d[k], m_ij) / tau, dim=1, hard=True)
    di, dj, dk = d[i], d[j], d[k]
    loss = (
        F.relu((di * pi_ij).sum(1) - (di * pi_ijk).sum(1) + margin)
        + F.relu((dj * pi_ij).sum(1) - (dj * pi_ijk).sum(1) + margin)
        + F.relu((dk * pi_ijk).sum(1) - (dk * pi_ij).sum(1) + margin)
    )
    return (loss * (pi_ij.argmax(1) != pi_ijk.argmax(1))).mean()


class OfficialStyleHIER(torch.nn.Module):
    """hier/losses.py::HIERLoss's formulas, for measurement only."""

    def __init__(self, num_proxies, dim):
        super().__init__()
        self.lcas = torch.nn.Parameter(torch.randn(num_proxies, dim) / math.sqrt(dim) * CLIP * 0.9)
        self.to_ball = ToPoincare(c=C, clip_r=CLIP, riemannian=True)

    def forward(self, z, labels):
        lcas = self.to_ball(self.lcas)
        d = official_style_dist(torch.cat([z, lcas]), torch.cat([z, lcas]), C)
        b = len(z)
        sim = torch.exp(-d[:b, :b]).detach() + (labels[:, None] == labels[None, :])
        data = official_style_ghhc(d[:b, b:], official_style_mine(sim, TOPK, T_PER_ANCHOR))
        proxy = official_style_ghhc(d[b:, b:], official_style_mine(torch.exp(-d[b:, b:]).detach(), TOPK, T_PER_ANCHOR))
        return data + proxy


def without_kernel(step):
    """``step`` with HIERLoss's torch implementation of everything (what runs without the C / Triton kernels)."""

    def no_kernel_step():
        with backends.use("torch"):
            step()

    return no_kernel_step


def main():
    parser = device_parser()
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 128])
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    device = args.device
    torch.set_num_threads(args.threads)
    for dim in args.dims:
        torch.manual_seed(0)
        np.random.seed(0)
        features = torch.randn(B, dim, device=device) * 10
        labels = torch.arange(B, device=device) // 2
        head = ToPoincare(c=C, clip_r=CLIP, riemannian=True)
        kwargs = dict(num_proxies=P, c=C, clip_r=CLIP, topk=TOPK, triplets_per_anchor=T_PER_ANCHOR, generator=0)

        def run(loss_fn):
            def step():
                f = features.clone().requires_grad_()
                loss_fn(head(f), labels).backward()

            return step

        ours = {
            "HIERLoss (official Gumbel LCAs)": run(HIERLoss(dim, **kwargs).to(device)),
            'HIERLoss lca="argmax"': run(HIERLoss(dim, lca="argmax", **kwargs).to(device)),
        }
        if device.type == "cpu" and native.library() is not None or device.type == "cuda":
            ours["HIERLoss, Gumbel, torch ops only"] = without_kernel(run(HIERLoss(dim, **kwargs).to(device)))
        if device.type == "cuda":
            ours["HIERLoss (Gumbel), CUDA graph replay"] = graphed(ours["HIERLoss (official Gumbel LCAs)"], device)
        counts = HIERLoss(dim, collect_stats=True, **kwargs).to(device)
        counts(head(features), labels)
        print(
            f"\nB={B}, P={P}, D={dim}: {counts.num_data_triplets} data triplets, "
            f"{counts.num_proxy_triplets} proxy triplets, {device}"
        )
        rows = {}
        if not args.no_official:
            official = run(OfficialStyleHIER(P, dim).to(device))
            rows["official-style (N×N×D tensor, loop mining)"] = (
                time_ms({"o": official}, repeats=2, warmup=1, device=device)["o"],
                peak_memory_mb(official, device),
            )
        times = time_ms(ours, repeats=args.repeats, device=device)
        for name, fn in ours.items():
            rows[name] = (times[name], peak_memory_mb(fn, device))
        print_table(rows, baseline=next(iter(rows)))
        print_counts({name: op_counts(ours[name], device) for name in list(ours)[:2]})


if __name__ == "__main__":
    main()
