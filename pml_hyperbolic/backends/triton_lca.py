"""HIER's LCA pass on the GPU: the Triton counterpart of ``csrc/hier_lca.c`` (same semantics and results).

Notation of the C kernel: ``scaled`` s (R×P) is the distance block D divided by tau; a triplet t = (i, j, k) has

    m1 = max(s_i, s_j),  m2 = max(m1, s_k)                                            (element-wise over P columns)
    w_b = exp(min(m_b) - m_b) / log U_b  (<= 0),  y_b = w_b / sum(w_b),  lca_b = argmin(w_b)          (b = 1, 2)

(y_b is softmax(-m_b + g) with Gumbel noise g = -log(-log U); lca_b its argmax, the first index on ties). Without
noise (``lca="argmax"``) lca_b = argmin(m_b), first index on ties, and only the direct gradient below flows.

U is either given (2×T×P uniforms) or computed in the kernel from a 64-bit key read from device memory:
element p of row b·T + t of :func:`pml_hyperbolic.utils.random.counter_uniform` (SplitMix64 row seeds, lowbias32
per element; the same bits as the C kernel). Reading the key from a device tensor keeps a CUDA graph replayable: the
graph draws the key on the device (e.g. ``torch.randint`` on the device generator) and the kernels read it.

Forward (one launch): per triplet, the hinges on the unscaled block D (a = lca1, b = lca2)
h = (D_ia - D_ib, D_ja - D_jb, D_kb - D_ka) + margin, active = h > 0 and a != b, loss = the sum of the active h.

Backward (one launch after a zero fill): with hinge weights e = (e_i, e_j, e_k) and C = e_i s_i + e_j s_j - e_k s_k,
dL/dm1 = y1 (<y1, C> - C), dL/dm2 = y2 (C - <y2, C>) (y recomputed from s and U, never stored), routed through the
maxima as the C kernel does (to s_k where s_k > max(s_i, s_j), else into m1; to s_i where s_i > s_j, else to s_j),
plus the direct path +-e at the selected columns. The result is dL/dD for the block D = tau·s.

Layout: each program takes BLOCK_T triplets and loops over the P columns in chunks of BLOCK_P (one chunk for
P <= 1024): a pass for the row minima, then a pass for the argmin (forward) or for sum(w) and <w, C> (backward),
then the gradient pass. Gradients of triplets that share rows are accumulated with relaxed float atomics, so the
backward is deterministic only up to float32 rounding of the summation order (as torch's ``index_add_`` on CUDA);
triplets with e = 0 add nothing. No host synchronisation and fixed launch shapes: both functions can be captured
in a CUDA graph (compile them once outside the capture). Under ``TRITON_INTERPRET=1`` they run on CPU tensors.

Accuracy: float32 throughout, like the C kernel and torch's ops; on the GPU ``tl.exp`` is ``ex2.approx`` of
x·log2(e): relative error below 3e-6 at x = -87, below 6e-7 for x > -8 (where the soft samples that matter are).
"""

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from . import launch

_ARGMAX, _UNIFORMS, _KEY = 0, 1, 2  # noise modes
_MAX_BLOCK_P, _TILE = 1024, 1024  # columns per chunk, elements per program and chunk


@triton.jit
def _row_seed(key, r):
    """Output r of SplitMix64 seeded with key (uint64, wrapping arithmetic, logical shifts)."""
    z = key + (r + 1) * 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


@triton.jit
def _mix32(x):
    """lowbias32 (C. Wellons) on uint32."""
    x = (x ^ (x >> 16)) * 0x7FEB352D
    x = (x ^ (x >> 15)) * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _uniforms(noise_ptr, key_ptr, row, P, cols, mask, NOISE: tl.constexpr):
    """U at (row, cols) ([BLOCK_T] x [BLOCK_P]): loaded from the 2×T×P noise, or counter_uniform of the key."""
    if NOISE == 1:
        u = tl.load(noise_ptr + row[:, None] * P + cols[None, :], mask=mask, other=0.5)
    else:
        seed = _row_seed(tl.load(key_ptr).to(tl.uint64, bitcast=True), row.to(tl.uint64))
        lo, hi = seed.to(tl.uint32), (seed >> 32).to(tl.uint32)
        x = _mix32(_mix32(lo[:, None] + cols.to(tl.uint32)[None, :] * 0x9E3779B9) ^ hi[:, None])
        u = ((x >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # (top 23 bits + 1/2) 2^-23
    return u


@triton.jit
def _maxima(s_ptr, s_stride, ri, rj, rk, cols, mask):
    """Rows s_i, s_j, s_k at cols and m1 = max(s_i, s_j), m2 = max(m1, s_k)."""
    si = tl.load(s_ptr + ri[:, None] * s_stride + cols[None, :], mask=mask, other=0.0)
    sj = tl.load(s_ptr + rj[:, None] * s_stride + cols[None, :], mask=mask, other=0.0)
    sk = tl.load(s_ptr + rk[:, None] * s_stride + cols[None, :], mask=mask, other=0.0)
    m1 = tl.maximum(si, sj)
    return si, sj, sk, m1, tl.maximum(m1, sk)


@triton.jit
def _minima(s_ptr, s_stride, ri, rj, rk, live, P, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    """min over the columns of m1 and of m2."""
    lo1 = tl.full([BLOCK_T], float("inf"), tl.float32)
    lo2 = tl.full([BLOCK_T], float("inf"), tl.float32)
    for start in range(0, P, BLOCK_P):
        cols = start + tl.arange(0, BLOCK_P)
        mask = live[:, None] & (cols < P)[None, :]
        _, _, _, m1, m2 = _maxima(s_ptr, s_stride, ri, rj, rk, cols, mask)
        lo1 = tl.minimum(lo1, tl.min(tl.where(mask, m1, float("inf")), axis=1))
        lo2 = tl.minimum(lo2, tl.min(tl.where(mask, m2, float("inf")), axis=1))
    return lo1, lo2


@triton.jit
def _weights(m, lo, u, mask, fill):
    """w = exp(lo - m) / log U, ``fill`` outside mask (where lo - m may be huge: not evaluated there)."""
    return tl.where(mask, tl.exp(tl.where(mask, lo[:, None] - m, 0.0)) / tl.log(u), fill)


@triton.jit
def _first_min(v, start, best, arg):
    """Running (min, first argmin) over chunks: a later chunk wins only if strictly smaller."""
    value, index = tl.min(v, axis=1, return_indices=True, return_indices_tie_break_left=True)
    better = value < best
    return tl.where(better, value, best), tl.where(better, index + start, arg)


@triton.jit
def _lca_forward_kernel(s_ptr, s_stride, d_ptr, d_stride0, d_stride1, i_ptr, j_ptr, k_ptr, noise_ptr, key_ptr,
                        lca_ptr, loss_ptr, active_ptr, T, P, margin,
                        NOISE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    live = t < T
    ri = tl.load(i_ptr + t, mask=live, other=0)
    rj = tl.load(j_ptr + t, mask=live, other=0)
    rk = tl.load(k_ptr + t, mask=live, other=0)
    if NOISE != 0:
        lo1, lo2 = _minima(s_ptr, s_stride, ri, rj, rk, live, P, BLOCK_T, BLOCK_P)
    best1 = tl.full([BLOCK_T], float("inf"), tl.float32)
    best2 = tl.full([BLOCK_T], float("inf"), tl.float32)
    arg1 = tl.zeros([BLOCK_T], tl.int32)
    arg2 = tl.zeros([BLOCK_T], tl.int32)
    for start in range(0, P, BLOCK_P):
        cols = start + tl.arange(0, BLOCK_P)
        mask = live[:, None] & (cols < P)[None, :]
        _, _, _, m1, m2 = _maxima(s_ptr, s_stride, ri, rj, rk, cols, mask)
        if NOISE != 0:
            v1 = _weights(m1, lo1, _uniforms(noise_ptr, key_ptr, t, P, cols, mask, NOISE), mask, float("inf"))
            v2 = _weights(m2, lo2, _uniforms(noise_ptr, key_ptr, t + T, P, cols, mask, NOISE), mask, float("inf"))
        else:
            v1 = tl.where(mask, m1, float("inf"))
            v2 = tl.where(mask, m2, float("inf"))
        best1, arg1 = _first_min(v1, start, best1, arg1)
        best2, arg2 = _first_min(v2, start, best2, arg2)
    a, b = arg1.to(tl.int64), arg2.to(tl.int64)
    tl.store(lca_ptr + t, a, mask=live)
    tl.store(lca_ptr + T + t, b, mask=live)
    di, dj, dk = d_ptr + ri * d_stride0, d_ptr + rj * d_stride0, d_ptr + rk * d_stride0
    h_i = tl.load(di + a * d_stride1, mask=live, other=0.0) - tl.load(di + b * d_stride1, mask=live, other=0.0)
    h_j = tl.load(dj + a * d_stride1, mask=live, other=0.0) - tl.load(dj + b * d_stride1, mask=live, other=0.0)
    h_k = tl.load(dk + b * d_stride1, mask=live, other=0.0) - tl.load(dk + a * d_stride1, mask=live, other=0.0)
    h_i, h_j, h_k = h_i + margin, h_j + margin, h_k + margin
    split = a != b
    on_i, on_j, on_k = (h_i > 0) & split, (h_j > 0) & split, (h_k > 0) & split
    loss = tl.where(on_i, h_i, 0.0) + tl.where(on_j, h_j, 0.0) + tl.where(on_k, h_k, 0.0)
    tl.store(loss_ptr + t, loss, mask=live)
    tl.store(active_ptr + t, on_i.to(tl.float32), mask=live)
    tl.store(active_ptr + T + t, on_j.to(tl.float32), mask=live)
    tl.store(active_ptr + 2 * T + t, on_k.to(tl.float32), mask=live)


@triton.jit
def _lca_backward_kernel(s_ptr, s_stride, grad_ptr, i_ptr, j_ptr, k_ptr, lca_pair_ptr, lca_triplet_ptr, e_ptr,
                         noise_ptr, key_ptr, T, P,
                         NOISE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    live = t < T
    ei = tl.load(e_ptr + t, mask=live, other=0.0)
    ej = tl.load(e_ptr + T + t, mask=live, other=0.0)
    ek = tl.load(e_ptr + 2 * T + t, mask=live, other=0.0)
    live = live & ((ei != 0) | (ej != 0) | (ek != 0))
    ri = tl.load(i_ptr + t, mask=live, other=0)
    rj = tl.load(j_ptr + t, mask=live, other=0)
    rk = tl.load(k_ptr + t, mask=live, other=0)
    a = tl.load(lca_pair_ptr + t, mask=live, other=0)
    b = tl.load(lca_triplet_ptr + t, mask=live, other=0)
    gi, gj, gk = grad_ptr + ri * P, grad_ptr + rj * P, grad_ptr + rk * P
    # direct path: the hinges' own values at the selected columns
    tl.atomic_add(gi + a, ei, mask=live, sem="relaxed")
    tl.atomic_add(gi + b, -ei, mask=live, sem="relaxed")
    tl.atomic_add(gj + a, ej, mask=live, sem="relaxed")
    tl.atomic_add(gj + b, -ej, mask=live, sem="relaxed")
    tl.atomic_add(gk + b, ek, mask=live, sem="relaxed")
    tl.atomic_add(gk + a, -ek, mask=live, sem="relaxed")
    if NOISE != 0:  # straight-through path through the soft samples
        lo1, lo2 = _minima(s_ptr, s_stride, ri, rj, rk, live, P, BLOCK_T, BLOCK_P)
        ei, ej, ek = ei[:, None], ej[:, None], ek[:, None]
        total1 = tl.zeros([BLOCK_T], tl.float32)
        total2 = tl.zeros([BLOCK_T], tl.float32)
        wc1 = tl.zeros([BLOCK_T], tl.float32)
        wc2 = tl.zeros([BLOCK_T], tl.float32)
        for start in range(0, P, BLOCK_P):
            cols = start + tl.arange(0, BLOCK_P)
            mask = live[:, None] & (cols < P)[None, :]
            si, sj, sk, m1, m2 = _maxima(s_ptr, s_stride, ri, rj, rk, cols, mask)
            c = ei * si + ej * sj - ek * sk
            w1 = _weights(m1, lo1, _uniforms(noise_ptr, key_ptr, t, P, cols, mask, NOISE), mask, 0.0)
            w2 = _weights(m2, lo2, _uniforms(noise_ptr, key_ptr, t + T, P, cols, mask, NOISE), mask, 0.0)
            total1 += tl.sum(w1, axis=1)
            total2 += tl.sum(w2, axis=1)
            wc1 += tl.sum(w1 * c, axis=1)
            wc2 += tl.sum(w2 * c, axis=1)
        inv1, inv2 = 1.0 / tl.where(live, total1, -1.0), 1.0 / tl.where(live, total2, -1.0)
        dot1, dot2 = (wc1 * inv1)[:, None], (wc2 * inv2)[:, None]  # <y1, C>, <y2, C>
        inv1, inv2 = inv1[:, None], inv2[:, None]
        for start in range(0, P, BLOCK_P):
            cols = start + tl.arange(0, BLOCK_P)
            mask = live[:, None] & (cols < P)[None, :]
            si, sj, sk, m1, m2 = _maxima(s_ptr, s_stride, ri, rj, rk, cols, mask)
            c = ei * si + ej * sj - ek * sk
            y1 = _weights(m1, lo1, _uniforms(noise_ptr, key_ptr, t, P, cols, mask, NOISE), mask, 0.0) * inv1
            y2 = _weights(m2, lo2, _uniforms(noise_ptr, key_ptr, t + T, P, cols, mask, NOISE), mask, 0.0) * inv2
            g_pair, g_trip = y1 * (dot1 - c), y2 * (c - dot2)  # dL/dm1, dL/dm2
            to_k = sk > m1
            g = tl.where(to_k, g_pair, g_pair + g_trip)  # dL/dm1 with the part of dL/dm2 that flows into m1
            to_i = si > sj
            tl.atomic_add(gk[:, None] + cols[None, :], g_trip, mask=mask & to_k, sem="relaxed")
            tl.atomic_add(gi[:, None] + cols[None, :], g, mask=mask & to_i, sem="relaxed")
            tl.atomic_add(gj[:, None] + cols[None, :], g, mask=mask & ~to_i, sem="relaxed")


def _blocks(p, block_p):
    """(BLOCK_T, BLOCK_P, num_warps): one chunk of columns up to 1024, about _TILE elements per program."""
    block_p = block_p or min(max(triton.next_power_of_2(p), 16), _MAX_BLOCK_P)
    return max(1, min(64, _TILE // block_p)), block_p, 4


def _noise_mode(noise, t, p, device):
    """(mode, uniforms or None, key tensor or None), with a clear error for any other ``noise``."""
    if noise is None:
        return _ARGMAX, None, None
    if not isinstance(noise, torch.Tensor) or noise.device != device:
        raise ValueError(f"noise must be None or a tensor on {device}, got {noise!r:.80}.")
    if noise.dtype == torch.int64 and noise.ndim == 0:
        return _KEY, None, noise
    if noise.dtype != torch.float32 or noise.shape != (2, t, p):
        raise ValueError(
            f"noise must be float32 uniforms of shape {(2, t, p)} or a 0-dim int64 key tensor, got "
            f"{noise.dtype} {tuple(noise.shape)}."
        )
    return _UNIFORMS, noise.contiguous(), None


def _check(scaled, triplets, *names_and_tensors):
    if scaled.device.type != "cuda" and not isinstance(_lca_forward_kernel, InterpretedFunction):
        raise ValueError(
            f"The Triton LCA kernels need CUDA tensors, got {scaled.device}: on the CPU use the C kernel "
            "(backends.native), or set TRITON_INTERPRET=1 before importing pml_hyperbolic to run Triton's interpreter."
        )
    if scaled.ndim != 2 or scaled.dtype != torch.float32 or scaled.shape[1] == 0:
        raise ValueError(f"scaled must be a float32 R×P block with P >= 1, got {scaled.dtype} {tuple(scaled.shape)}.")
    t = len(triplets[0])
    for name, x in zip("ijk", triplets):
        if x.dtype != torch.int64 or x.shape != (t,) or x.device != scaled.device:
            raise ValueError(
                f"Triplet index {name} must be an int64 tensor of shape ({t},) on {scaled.device}, got {x.dtype} "
                f"{tuple(x.shape)} on {x.device}."
            )
    for name, x, dtype, shape in names_and_tensors:
        if x.dtype != dtype or x.shape != shape or x.device != scaled.device:
            raise ValueError(
                f"{name} must be {dtype} of shape {shape} on {scaled.device}, got {x.dtype} {tuple(x.shape)} on "
                f"{x.device}."
            )


def lca_forward(scaled, dist, i, j, k, noise, margin, block_p=None):
    """(lca_pair, lca_triplet, losses, active) of the T triplets (i, j, k) (int64, length T) on the float32 block
    ``scaled`` (R×P, D / tau) with the hinges on ``dist`` (R×P, D itself, any strides) and ``margin``.

    ``noise``: None (argmax LCAs), float32 uniforms (2×T×P), or a 0-dim int64 tensor on the device holding the key of
    ``counter_uniform(key, (2, T, P))`` (the int64's bits as the uint64 key). Returns int64 (T,), int64 (T,),
    float32 (T,) and float32 (3×T, 1 or 0) like ``native.lca_forward``. ``block_p``: columns per chunk (a power of
    two; default: P rounded up, at most 1024).
    """
    t, p = len(i), scaled.shape[1]
    _check(scaled, (i, j, k), ("dist", dist, torch.float32, scaled.shape))
    mode, uniforms, key = _noise_mode(noise, t, p, scaled.device)
    scaled = scaled if scaled.stride(1) == 1 else scaled.contiguous()
    lca = torch.empty(2, t, dtype=torch.int64, device=scaled.device)
    losses = torch.empty(t, dtype=torch.float32, device=scaled.device)
    active = torch.empty(3, t, dtype=torch.float32, device=scaled.device)
    if t:
        block_t, block_p, warps = _blocks(p, block_p)
        with launch("lca_forward", scaled.device):
            _lca_forward_kernel[(triton.cdiv(t, block_t),)](
                scaled, scaled.stride(0), dist, dist.stride(0), dist.stride(1), i.contiguous(), j.contiguous(),
                k.contiguous(), scaled if uniforms is None else uniforms, scaled if key is None else key,
                lca, losses, active, t, p, float(margin),
                NOISE=mode, BLOCK_T=block_t, BLOCK_P=block_p, num_warps=warps,
            )
    return lca[0], lca[1], losses, active


def lca_backward(scaled, i, j, k, noise, lca_pair, lca_triplet, e, block_p=None):
    """dL/dD (R×P float32, D = tau · ``scaled``) for the hinge weights ``e`` (3×T float32, zero for inactive hinges)
    and the forward's LCAs; ``noise`` as given to :func:`lca_forward` (the soft samples are recomputed from it)."""
    t, p = len(i), scaled.shape[1]
    _check(scaled, (i, j, k), ("lca_pair", lca_pair, torch.int64, (t,)),
           ("lca_triplet", lca_triplet, torch.int64, (t,)), ("e", e, torch.float32, (3, t)))
    mode, uniforms, key = _noise_mode(noise, t, p, scaled.device)
    scaled = scaled if scaled.stride(1) == 1 else scaled.contiguous()
    grad = torch.zeros(scaled.shape, dtype=torch.float32, device=scaled.device)
    if t:
        block_t, block_p, warps = _blocks(p, block_p)
        with launch("lca_backward", scaled.device):
            _lca_backward_kernel[(triton.cdiv(t, block_t),)](
                scaled, scaled.stride(0), grad, i.contiguous(), j.contiguous(), k.contiguous(),
                lca_pair.contiguous(), lca_triplet.contiguous(), e.contiguous(),
                scaled if uniforms is None else uniforms, scaled if key is None else key, t, p,
                NOISE=mode, BLOCK_T=block_t, BLOCK_P=block_p, num_warps=warps,
            )
    return grad
