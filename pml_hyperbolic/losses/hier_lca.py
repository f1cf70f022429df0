"""HIER's LCA pass, the core of :class:`~pml_hyperbolic.losses.HIERLoss`: per triplet, the lowest common ancestors of
the pair and of the triplet among P candidate proxies (hard Gumbel-softmax with a straight-through gradient, or the
argmin) and the three hinges; kernels in C (CPU) and Triton (CUDA), torch ops elsewhere."""

import torch

from ..backends import native
from ..utils.random import counter_uniform

# Rows × candidates per step of the LCA function (each step stacks the pair and triplet blocks: twice this).
_CHUNK_ELEMENTS = 1 << 17


def _select(m, noise):
    """LCA per row of m (..., P: max-distances / tau): the hard Gumbel sample of softmax(-m) with its soft sample
    (index, y) when ``noise`` (uniforms U) is given, else (argmin, None).

    softmax(-m + g) with g = -log E, E = -log U, is exp(min m - m) / E normalised: one exp and one log per element.
    Here w = exp(min m - m) / log U = -exp(min m - m) / E <= 0, so the sample is argmin w and y = w / sum(w).
    """
    if noise is None:
        return m.argmin(-1), None
    w = torch.sub(m.amin(-1, keepdim=True), m).exp_().div_(torch.log(noise))
    return w.argmin(-1), w.div_(w.sum(-1, keepdim=True))


class _TripletLCAHinge(torch.autograd.Function):
    """Forward: (losses, lca_pair, lca_triplet) of HIER's triplets on the distance block ``dist``.

    ``noise``: None (argmax LCAs), uniforms (2, T, P), or the int key of ``counter_uniform(key, (2, T, P))``
    (computed chunk by chunk, or in place by the kernel; on CUDA a 0-dim int64 device tensor). ``kind`` is the backend:
    ``"native"`` (the C kernel of :mod:`pml_hyperbolic.backends.native`) and ``"triton"``
    (:mod:`pml_hyperbolic.backends.triton_lca`) recompute the soft samples in the backward; ``"torch"`` runs torch
    ops in row chunks, keeping the soft samples (2·T·P floats).

    Backward: the hard samples' values give the direct gradient ±e at the selected columns (e: the weights of the
    active hinges); the straight-through path gives, with C = (e_i D_i + e_j D_j - e_k D_k)/tau and the soft samples
    y1, y2: dL/dM_ij = -y1 (C - <y1, C>), dL/dM_ijk = y2 (C - <y2, C>), routed through the element-wise maxima (a tie
    goes to one side; torch.maximum would split it, the total per point is the same).
    """

    @staticmethod
    def forward(ctx, dist, i, j, k, margin, tau, noise, kind):
        with torch.autocast(device_type=dist.device.type, enabled=False):
            scaled = dist * (1 / tau)
            ctx.kind, ctx.noise, ctx.soft = kind, noise, None
            if kind == "native":
                key = noise if isinstance(noise, int) else 0
                uniforms = None if isinstance(noise, int) else noise.contiguous()
                i, j, k = i.contiguous(), j.contiguous(), k.contiguous()
                a, b, losses, active = native.lca_forward(scaled.contiguous(), i, j, k, uniforms, key, dist, margin)
                ctx.noise = (uniforms, key)
            elif kind == "triton":
                from ..backends import triton_lca

                a, b, losses, active = triton_lca.lca_forward(scaled, dist, i, j, k, noise, margin)
            else:
                a, b, ctx.soft, ctx.step = _select_chunks(scaled, i, j, k, noise)
                hinge = torch.stack([dist[i, a] - dist[i, b], dist[j, a] - dist[j, b], dist[k, b] - dist[k, a]])
                active = (hinge.add_(margin) > 0) & (a != b)
                losses = hinge.clamp_min_(0).mul_(active).sum(0)
        ctx.save_for_backward(scaled, i, j, k, a, b, active)
        ctx.mark_non_differentiable(a, b)
        return losses, a, b

    @staticmethod
    def backward(ctx, grad, _grad_pair, _grad_triplet):
        scaled, i, j, k, a, b, active = ctx.saved_tensors
        with torch.autocast(device_type=scaled.device.type, enabled=False):
            e = active.to(scaled.dtype) * grad.to(scaled.dtype)  # weights of the 3 hinges of each triplet
            if ctx.kind == "native":
                uniforms, key = ctx.noise
                grad_dist = native.lca_backward(scaled.contiguous(), i, j, k, uniforms, key, a, b, e.contiguous())
                return grad_dist.to(scaled.dtype), None, None, None, None, None, None, None
            if ctx.kind == "triton":
                from ..backends import triton_lca

                grad_dist = triton_lca.lca_backward(scaled, i, j, k, ctx.noise, a, b, e.contiguous())
                return grad_dist, None, None, None, None, None, None, None
            grad_dist = torch.zeros_like(scaled)
            # direct path: +-e at the selected LCAs (the values of the hard samples)
            rows = torch.cat([i, i, j, j, k, k])
            cols = torch.cat([a, b, a, b, b, a])
            grad_dist.index_put_((rows, cols), torch.cat([e[0], -e[0], e[1], -e[1], e[2], -e[2]]), accumulate=True)
            if ctx.soft[0] is not None:
                for n, (y1, y2) in enumerate(ctx.soft):
                    sl = slice(n * ctx.step, (n + 1) * ctx.step)
                    ic, jc, kc = i[sl], j[sl], k[sl]
                    di, dj, dk = scaled.index_select(0, ic), scaled.index_select(0, jc), scaled.index_select(0, kc)
                    C = di * e[0, sl, None]
                    C.addcmul_(dj, e[1, sl, None]).addcmul_(dk, e[2, sl, None], value=-1)  # (sum_a ±e_a D_a) / tau
                    g_pair = torch.linalg.vecdot(y1, C).unsqueeze(1).sub(C).mul_(y1)  # dL/dM_ij, direct
                    g_trip = C.sub_(torch.linalg.vecdot(y2, C).unsqueeze(1)).mul_(y2)  # dL/dM_ijk
                    mask = torch.gt(dk, torch.maximum(di, dj), out=dk)  # 1 where D_k is the max of M_ijk
                    g_k = g_trip.mul(mask)
                    grad_dist.index_add_(0, kc, g_k)
                    g_pair.add_(g_trip).sub_(g_k)
                    mask = torch.gt(di, dj, out=dk)  # 1 where D_i is the max of M_ij
                    g_trip = torch.mul(g_pair, mask, out=g_trip)
                    grad_dist.index_add_(0, ic, g_trip)
                    grad_dist.index_add_(0, jc, g_pair.sub_(g_trip))
        return grad_dist, None, None, None, None, None, None, None


def _select_chunks(scaled, i, j, k, noise):
    """LCAs of all rows in torch ops, in chunks of about _CHUNK_ELEMENTS: (lca_pair, lca_triplet, soft, step)."""
    n_rows, n_cols = len(i), scaled.shape[1]
    step = max(1, _CHUNK_ELEMENTS // n_cols)
    lca_pair = torch.empty(n_rows, dtype=torch.long, device=scaled.device)
    lca_triplet = torch.empty_like(lca_pair)
    soft = []
    for s in range(0, n_rows, step):
        ic, jc, kc = i[s : s + step], j[s : s + step], k[s : s + step]
        m = torch.empty(2, len(ic), n_cols, dtype=scaled.dtype, device=scaled.device)  # M_ij, M_ijk
        torch.maximum(scaled.index_select(0, ic), scaled.index_select(0, jc), out=m[0])
        torch.maximum(m[0], scaled.index_select(0, kc), out=m[1])
        if isinstance(noise, int):  # rows s... of both blocks of counter_uniform(noise, (2, n_rows, n_cols))
            u = [counter_uniform(noise, m.shape[1:], scaled.dtype, first_row=s + b * n_rows) for b in (0, 1)]
            lca, y = _select(m, torch.stack(u))
        else:
            lca, y = _select(m, None if noise is None else noise[:, s : s + step])
        lca_pair[s : s + step], lca_triplet[s : s + step] = lca
        soft.append(y)
    return lca_pair, lca_triplet, soft, step
