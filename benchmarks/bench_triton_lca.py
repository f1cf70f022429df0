"""Forward + backward of HIER's LCA pass on CUDA: the Triton kernels (``backends/triton_lca.py``) against the torch
implementation HIERLoss runs on a GPU without them (``_TripletLCAHinge`` in torch ops), in one process.

Two sizes: the paper's HIER (P = 512 proxies; 180 anchors × 50 data triplets + 512 × 50 proxy triplets) and CHEST's
default HIER (P = 32; 180 × 10 + 32 × 10). Rows: the 180 batch points and the P proxies; distances spread like
HIER's blocks; tau = 0.1, margin = 0.1. Timed, each a full forward + backward:

* torch: ``_TripletLCAHinge`` with 2×T×P uniforms from ``torch.rand`` (what HIERLoss draws on CUDA);
* triton, key: one key drawn on the device (``random_``), the noise computed in the kernels;
* triton, uniforms: the same kernels reading injected uniforms (``torch.rand`` as for torch);
* triton, CUDA graph: the "key" step captured once and replayed (the key is redrawn inside the graph).

Also printed: CUDA kernels and aten ops per step (torch.profiler), and a cross-check of the two paths on the same
uniforms (LCAs equal, gradient difference).

    python benchmarks/bench_triton_lca.py [--device cuda] [--repeats 20]
"""

import argparse
import sys

import torch
from bench_utils import graphed, time_ms

B, TAU, MARGIN = 180, 0.1, 0.1
SIZES = [(512, 50), (32, 10)]  # (P, triplets per anchor)


def inputs(p, per_anchor, device):
    """The distance block ((B + P) × P), the data and proxy triplets, and the hinge weights' upstream gradient."""
    g = torch.Generator().manual_seed(0)
    r = B + p
    dist = torch.rand(r, p, generator=g) * torch.rand(r, 1, generator=g) * 6 + 2
    data = [torch.arange(B).repeat_interleave(per_anchor), *torch.randint(0, B, (2, B * per_anchor), generator=g)]
    proxy = [torch.arange(B, r).repeat_interleave(per_anchor), *torch.randint(B, r, (2, p * per_anchor), generator=g)]
    triplets = [torch.cat([d, q]).to(device) for d, q in zip(data, proxy)]
    t = len(triplets[0])
    return dist.to(device), triplets, torch.full((t,), 1 / t, device=device)


def steps(dist, triplets, upstream):
    """{name: one forward + backward} for the methods above (the graph is added by the caller)."""
    from pml_hyperbolic.backends import triton_lca
    from pml_hyperbolic.losses.hier_lca import _TripletLCAHinge

    t, p = len(triplets[0]), dist.shape[1]
    key = torch.zeros((), dtype=torch.int64, device=dist.device)

    def uniforms():
        return torch.rand(2, t, p, device=dist.device).clamp_min_(torch.finfo(torch.float32).tiny)

    def torch_step():
        d = dist.detach().requires_grad_()
        losses, _, _ = _TripletLCAHinge.apply(d, *triplets, MARGIN, TAU, uniforms(), False)
        losses.backward(upstream)
        return d.grad

    def triton_step(noise):
        scaled = dist * (1 / TAU)
        a, b, _, active = triton_lca.lca_forward(scaled, dist, *triplets, noise, MARGIN)
        return triton_lca.lca_backward(scaled, *triplets, noise, a, b, active * upstream)

    def triton_key():
        key.random_()
        return triton_step(key)

    return {"torch": torch_step, "triton, key": triton_key, "triton, uniforms": lambda: triton_step(uniforms())}


def counts(fn):
    """(CUDA kernels incl. memset/memcpy, aten ops) of one call, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.events()
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    aten = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.name.startswith("aten::"))
    return kernels, aten


def cross_check(dist, triplets, upstream):
    """Both paths on the same uniforms: (LCAs equal?, max |grad difference| / max |grad|)."""
    from pml_hyperbolic.backends import triton_lca
    from pml_hyperbolic.losses.hier_lca import _TripletLCAHinge

    u = torch.rand(2, len(triplets[0]), dist.shape[1], device=dist.device).clamp_min_(1e-7)
    d = dist.detach().requires_grad_()
    losses, a, b = _TripletLCAHinge.apply(d, *triplets, MARGIN, TAU, u, False)
    losses.backward(upstream)
    scaled = dist * (1 / TAU)
    a2, b2, _, active = triton_lca.lca_forward(scaled, dist, *triplets, u, MARGIN)
    grad = triton_lca.lca_backward(scaled, *triplets, u, a2, b2, active * upstream)
    same = torch.equal(a, a2) and torch.equal(b, b2)
    return same, ((grad - d.grad).abs().max() / d.grad.abs().max()).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=torch.device, default=torch.device("cuda"))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.device.type != "cuda" or not torch.cuda.is_available():
        print(f"CUDA not available (device {args.device}): the Triton LCA kernels are timed on a GPU only.")
        return 0
    device = torch.device("cuda", torch.cuda.current_device() if args.device.index is None else args.device.index)
    torch.cuda.set_device(device)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, triton {__import__('triton').__version__}")
    for p, per_anchor in SIZES:
        dist, triplets, upstream = inputs(p, per_anchor, device)
        t = len(triplets[0])
        print(f"\nP = {p}, T = {B} x {per_anchor} + {p} x {per_anchor} = {t}")
        same, rel = cross_check(dist, triplets, upstream)
        print(f"same uniforms: LCAs equal {same}, max |grad difference| / max |grad| = {rel:.1e}")
        fns = steps(dist, triplets, upstream)
        counted = {name: counts(fn) for name, fn in fns.items()}
        fns["triton, CUDA graph"] = graphed(fns["triton, key"], device)
        counted["triton, CUDA graph"] = ("-", "-")
        ms = time_ms(fns, repeats=args.repeats, warmup=3, device=device)
        base = ms["torch"]
        print(f"{'method':22s} {'ms':>8s} {'x torch':>8s} {'kernels':>8s} {'aten ops':>9s}")
        for name, value in ms.items():
            kernels, aten = counted[name]
            print(f"{name:22s} {value:8.3f} {value / base:8.3f} {kernels!s:>8s} {aten!s:>9s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
