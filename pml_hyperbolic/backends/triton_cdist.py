r"""Triton kernels of :func:`pml_hyperbolic.poincare.cdist`: the Poincaré distance matrix on CUDA.

For x (N×D), y (M×D) and a constant curvature c, with :math:`u_i = \|x_i\|^2`, :math:`a_i = 1/(1 - c u_i)`,
:math:`v_j = \|y_j\|^2`, :math:`b_j = 1/(1 - c v_j)`:

.. math::

    A_{ij} = u_i + v_j - 2\,x_i\cdot y_j,\qquad q_{ij} = c\,a_i b_j A_{ij},\qquad
    d_{ij} = \tfrac{2}{\sqrt c}\operatorname{asinh}\sqrt{q_{ij}}

**Forward** (one launch): each program computes a tile of products :math:`x_i\cdot y_j` with ``tl.dot`` in IEEE
float32 (``input_precision="ieee"``: no TF32 setting of the process can touch it), the norms in float64 on the way,
and the distances in its epilogue. The product cancels only for close pairs: a pair is recomputed from exact
differences when :math:`A_{ij} \le \kappa\,(u_i + v_j)`. That bound is per pair: the rounding error of the product is
a few ulps of :math:`\|x_i\|\|y_j\| \le (u_i + v_j)/2`, so every other pair has a relative error of about
ulp/κ in A, whatever the norms of the other points (a bound over the whole row, as with :math:`\max_j v_j`, would
send every small-norm pair of a set with one large norm to the slow path). A tile with flagged pairs recomputes
them column by column, :math:`\sum_k (x_{ik} - y_{jk})^2` over the tile's rows, in the same launch; tiles without
them pay nothing. q is saved for the backward with the flagged pairs negated.

**Backward** (two launches, plus a sum when a matrix side is split): with :math:`G = \partial L/\partial d`,
:math:`E = G\,/\,(\sqrt c\sqrt{q(1+q)})` and :math:`K = E\,b_j`,

.. math::

    \partial L/\partial x_i = 2c\,a_i\Big[x_i \sum_j (K_{ij} + E_{ij} q_{ij}) - \sum_j K_{ij} y_j\Big],\qquad
    \partial L/\partial y_j = 2c\Big[y_j \sum_i (K_{ij} a_i + b_j E_{ij} q_{ij}) - \sum_i K_{ij} a_i x_i\Big]

computed FlashAttention-style: K is formed tile by tile in registers and multiplied at once (``tl.dot``, IEEE), never
stored. For the flagged pairs the :math:`K_{ij}(x_i - y_j)` terms come from exact differences (K is large there and
the product form would cancel). When one side has few tiles, the other is split over programs and the partial sums
are added by one torch op (deterministic, no atomics). No host synchronisation anywhere: a training step that uses
these kernels can be captured in a CUDA graph.

Without a GPU, the same kernels run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``), which is how the
tests check them against float64 references on every machine.
"""

import functools
import math

import numpy as np
import torch
import triton
import triton.language as tl

from . import launch

# A pair is recomputed from exact differences when A_ij <= KAPPA (u_i + v_j) (see the module docstring).
KAPPA = 0.1
_BM, _BN, _BK = 64, 64, 32  # forward tile and reduction step
# backward: the width of the gradient block a program accumulates (64 or 128, tuned on CUDA), 8 warps: no register
# spills at 64, a few at 128 (sm_90); fewer blocks re-read G and q fewer times.
_BD_CHOICES = (64, 128)


@triton.jit
def _log_positive(w):
    """log(w) for normal w > 0: w = 2^e m, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(t), t = (m-1)/(m+1), by its
    series to t^9 (relative error < 3e-7; the C kernels' fastmath.h has the same function)."""
    bits = w.to(tl.int32, bitcast=True)
    e = ((bits >> 23) - 127).to(tl.float32)
    m = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > 1.41421356237
    m = tl.where(big, 0.5 * m, m)
    e = tl.where(big, e + 1.0, e)
    t = (m - 1.0) / (m + 1.0)
    z = t * t
    s = z * (2.0 / 9.0) + 2.0 / 7.0
    s = s * z + 2.0 / 5.0
    s = s * z + 2.0 / 3.0
    return t * (2.0 + z * s) + 0.693147180559945 * e


@triton.jit
def _asinh_sqrt(q):
    """asinh(sqrt(q)) for q >= 0 in three ranges, each to a few float32 ulps: the odd series of asinh to s^9 for
    q < 1/64 (s = sqrt(q)); log1p(z) = 2 atanh(z / (2 + z)) by its series for z = s + q / (1 + sqrt(1 + q))
    < sqrt(2) - 1; else log(1 + z) (at least 0.35, so the log's absolute error is small relative to it)."""
    s = tl.sqrt_rn(q)
    series = q * (35.0 / 1152.0) - 5.0 / 112.0
    series = series * q + 3.0 / 40.0
    series = series * q - 1.0 / 6.0
    series = s * (series * q + 1.0)
    z = s + q / (1.0 + tl.sqrt_rn(1.0 + q))
    t = z / (2.0 + z)
    t2 = t * t
    mid = t2 * (1.0 / 9.0) + 1.0 / 7.0
    mid = mid * t2 + 1.0 / 5.0
    mid = mid * t2 + 1.0 / 3.0
    mid = 2.0 * t * (mid * t2 + 1.0)
    big = _log_positive(1.0 + z)
    return tl.where(q < 1.0 / 64.0, series, tl.where(z < 0.41421356, mid, big))


@triton.jit
def _forward(x_ptr, y_ptr, d_ptr, q_ptr, a_ptr, b_ptr, N, M, D, c_hi, c_lo, kappa,
             STORE_Q: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    kappa = tl.cast(kappa, tl.float32)  # float scalars are float32 (the interpreter would pass float64)
    rm = pid_n * BM + tl.arange(0, BM)
    rn = pid_m * BN + tl.arange(0, BN)
    in_m, in_n = rm < N, rn < M
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    u = tl.zeros((BM,), dtype=tl.float64)
    v = tl.zeros((BN,), dtype=tl.float64)
    for k0 in range(0, D, BK):
        rk = k0 + tl.arange(0, BK)
        xs = tl.load(x_ptr + rm[:, None] * D + rk[None, :], mask=in_m[:, None] & (rk[None, :] < D), other=0.0)
        ys = tl.load(y_ptr + rn[:, None] * D + rk[None, :], mask=in_n[:, None] & (rk[None, :] < D), other=0.0)
        acc = tl.dot(xs, tl.trans(ys), acc, input_precision="ieee")
        x64, y64 = xs.to(tl.float64), ys.to(tl.float64)
        u += tl.sum(x64 * x64, axis=1)
        v += tl.sum(y64 * y64, axis=1)
    c = tl.cast(c_hi, tl.float64) + tl.cast(c_lo, tl.float64)  # the curvature to float64 accuracy
    a = 1.0 / (1.0 - c * u)
    b = (1.0 / (1.0 - c * v)).to(tl.float32)
    ca = (c * a).to(tl.float32)
    u32, v32 = u.to(tl.float32), v.to(tl.float32)
    sq = u32[:, None] + v32[None, :]
    A = sq - 2.0 * acc
    inside = in_m[:, None] & in_n[None, :]
    flag = (A <= kappa * sq + 1e-19) & inside
    q = ca[:, None] * b[None, :] * tl.maximum(A, 0.0)
    scale = 2.0 / tl.sqrt_rn(tl.cast(c_hi, tl.float32))
    offs = rm[:, None].to(tl.int64) * M + rn[None, :]
    keep = inside & ~flag
    tl.store(d_ptr + offs, scale * _asinh_sqrt(q), mask=keep)
    if STORE_Q:
        tl.store(q_ptr + offs, q, mask=keep)
    if pid_n == 0:
        tl.store(b_ptr + rn, b, mask=in_n)
    if pid_m == 0:
        tl.store(a_ptr + rm, a.to(tl.float32), mask=in_m)
    if tl.max(flag.to(tl.int32)) > 0:  # close pairs: exact differences, one column of the tile at a time
        cols = tl.arange(0, BN)
        for jj in range(0, BN):
            f = tl.max(tl.where((cols == jj)[None, :] & flag, 1, 0), axis=1) > 0
            if tl.max(f.to(tl.int32)) > 0:
                j = pid_m * BN + jj
                A_exact = tl.zeros((BM,), dtype=tl.float32)
                for k0 in range(0, D, BK):
                    rk = k0 + tl.arange(0, BK)
                    xs = tl.load(x_ptr + rm[:, None] * D + rk[None, :], mask=f[:, None] & (rk[None, :] < D), other=0.0)
                    yj = tl.load(y_ptr + j * D + rk, mask=rk < D, other=0.0)
                    diff = xs - yj[None, :]
                    A_exact += tl.sum(diff * diff, axis=1)
                bj = tl.sum(tl.where(cols == jj, b, 0.0))
                q_exact = ca * bj * A_exact
                off = rm.to(tl.int64) * M + j
                tl.store(d_ptr + off, scale * _asinh_sqrt(q_exact), mask=f)
                if STORE_Q:
                    tl.store(q_ptr + off, -q_exact, mask=f)  # negated: the backward's flag


@triton.jit
def _weights(g_ptr, q_ptr, rm, rn, in_m, in_n, M, inv_sqrt_c):
    """(E, q, flagged) of a tile: E = G / (sqrt(c) sqrt(q (1 + q))), 0 where q = 0 (identical points)."""
    offs = rm[:, None].to(tl.int64) * M + rn[None, :]
    inside = in_m[:, None] & in_n[None, :]
    g = tl.load(g_ptr + offs, mask=inside, other=0.0)
    qs = tl.load(q_ptr + offs, mask=inside, other=0.0)
    q = tl.abs(qs)
    e = tl.where(q > 0, g * inv_sqrt_c / tl.sqrt_rn(tl.maximum(q * (1.0 + q), 1e-30)), 0.0)
    return e, q, qs < 0


def _tuned(kernel):
    """The kernel with its block width BD tuned per D on CUDA (compiled once per choice, timed at the first call)."""
    configs = [triton.Config({"BD": bd}, num_warps=8) for bd in _BD_CHOICES]
    return triton.autotune(configs, key=["D"])(kernel)


@triton.jit
def _backward_x(x_ptr, y_ptr, g_ptr, q_ptr, a_ptr, b_ptr, out_ptr, N, M, D, two_c, inv_sqrt_c, tiles_per_split,
                BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """out[s, i, :] = 2c a_i [x_i sum_j (K_ij + E_ij q_ij) - sum_j K_ij y_j] over split s of the columns j, with
    K_ij (x_i - y_j) from exact differences for the flagged pairs."""
    pid_n, pid_d, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    two_c, inv_sqrt_c = tl.cast(two_c, tl.float32), tl.cast(inv_sqrt_c, tl.float32)
    rm = pid_n * BM + tl.arange(0, BM)
    rd = pid_d * BD + tl.arange(0, BD)
    in_m, in_d = rm < N, rd < D
    acc = tl.zeros((BM, BD), dtype=tl.float32)  # sum_j K_ij y_j, minus the exact terms of flagged pairs
    s = tl.zeros((BM,), dtype=tl.float32)
    cols = tl.arange(0, BN)
    t_end = tl.minimum((pid_s + 1) * tiles_per_split, tl.cdiv(M, BN))
    for t in range(pid_s * tiles_per_split, t_end):
        rn = t * BN + cols
        in_n = rn < M
        e, q, flagged = _weights(g_ptr, q_ptr, rm, rn, in_m, in_n, M, inv_sqrt_c)
        b = tl.load(b_ptr + rn, mask=in_n, other=0.0)
        k = e * b[None, :]
        k_gemm = tl.where(flagged, 0.0, k)
        s += tl.sum(k_gemm + e * q, axis=1)
        ys = tl.load(y_ptr + rn[:, None] * D + rd[None, :], mask=in_n[:, None] & in_d[None, :], other=0.0)
        acc = tl.dot(k_gemm, ys, acc, input_precision="ieee")
        if tl.max(flagged.to(tl.int32)) > 0:
            xs = tl.load(x_ptr + rm[:, None] * D + rd[None, :], mask=in_m[:, None] & in_d[None, :], other=0.0)
            for jj in range(0, BN):
                kj = tl.sum(tl.where((cols == jj)[None, :] & flagged, k, 0.0), axis=1)
                if tl.max(tl.abs(kj)) > 0:
                    yj = tl.load(y_ptr + (t * BN + jj) * D + rd, mask=in_d, other=0.0)
                    acc -= kj[:, None] * (xs - yj[None, :])
    xs = tl.load(x_ptr + rm[:, None] * D + rd[None, :], mask=in_m[:, None] & in_d[None, :], other=0.0)
    a = tl.load(a_ptr + rm, mask=in_m, other=0.0)
    out = (two_c * a)[:, None] * (xs * s[:, None] - acc)
    offs = (pid_s * N + rm[:, None]).to(tl.int64) * D + rd[None, :]
    tl.store(out_ptr + offs, out, mask=in_m[:, None] & in_d[None, :])


@triton.jit
def _backward_y(x_ptr, y_ptr, g_ptr, q_ptr, a_ptr, b_ptr, out_ptr, N, M, D, two_c, inv_sqrt_c, tiles_per_split,
                BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """out[s, j, :] = 2c [y_j sum_i (K_ij a_i + b_j E_ij q_ij) - sum_i K_ij a_i x_i] over split s of the rows i,
    with K_ij a_i (y_j - x_i) from exact differences for the flagged pairs."""
    pid_m, pid_d, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    two_c, inv_sqrt_c = tl.cast(two_c, tl.float32), tl.cast(inv_sqrt_c, tl.float32)
    rn = pid_m * BN + tl.arange(0, BN)
    rd = pid_d * BD + tl.arange(0, BD)
    in_n, in_d = rn < M, rd < D
    b = tl.load(b_ptr + rn, mask=in_n, other=0.0)
    acc = tl.zeros((BN, BD), dtype=tl.float32)  # sum_i K_ij a_i x_i, minus the exact terms of flagged pairs
    s = tl.zeros((BN,), dtype=tl.float32)
    rows = tl.arange(0, BM)
    t_end = tl.minimum((pid_s + 1) * tiles_per_split, tl.cdiv(N, BM))
    for t in range(pid_s * tiles_per_split, t_end):
        rm = t * BM + rows
        in_m = rm < N
        e, q, flagged = _weights(g_ptr, q_ptr, rm, rn, in_m, in_n, M, inv_sqrt_c)
        a = tl.load(a_ptr + rm, mask=in_m, other=0.0)
        ka = e * b[None, :] * a[:, None]
        ka_gemm = tl.where(flagged, 0.0, ka)
        s += tl.sum(ka_gemm + b[None, :] * e * q, axis=0)
        xs = tl.load(x_ptr + rm[:, None] * D + rd[None, :], mask=in_m[:, None] & in_d[None, :], other=0.0)
        acc = tl.dot(tl.trans(ka_gemm), xs, acc, input_precision="ieee")
        if tl.max(flagged.to(tl.int32)) > 0:
            ys = tl.load(y_ptr + rn[:, None] * D + rd[None, :], mask=in_n[:, None] & in_d[None, :], other=0.0)
            for ii in range(0, BM):
                ki = tl.sum(tl.where((rows == ii)[:, None] & flagged, ka, 0.0), axis=0)
                if tl.max(tl.abs(ki)) > 0:
                    xi = tl.load(x_ptr + (t * BM + ii) * D + rd, mask=in_d, other=0.0)
                    acc -= ki[:, None] * (ys - xi[None, :])
    ys = tl.load(y_ptr + rn[:, None] * D + rd[None, :], mask=in_n[:, None] & in_d[None, :], other=0.0)
    out = two_c * (ys * s[:, None] - acc)
    offs = (pid_s * M + rn[:, None]).to(tl.int64) * D + rd[None, :]
    tl.store(out_ptr + offs, out, mask=in_n[:, None] & in_d[None, :])


@functools.lru_cache(maxsize=None)
def _programs_wanted(device):
    """About two programs per streaming multiprocessor (a few in the interpreter)."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _block_k(dim):
    return max(16, min(_BK, triton.next_power_of_2(dim)))


def forward(x, y, c, need_q):
    """(d, q, a, b): distances (N×M float32), q with flagged pairs negated (None unless ``need_q``), 1/alpha, 1/beta.
    ``x``, ``y``: contiguous float32 on one device; ``c``: a float."""
    n, m, dim = x.shape[0], y.shape[0], x.shape[1]
    d = torch.empty(n, m, dtype=torch.float32, device=x.device)
    q = torch.empty_like(d) if need_q else d  # placeholder pointer when not stored
    a = torch.empty(n, dtype=torch.float32, device=x.device)
    b = torch.empty(m, dtype=torch.float32, device=x.device)
    c_hi = float(np.float32(c))
    grid = (triton.cdiv(n, _BM), triton.cdiv(m, _BN))
    with launch("cdist_forward", x.device):
        _forward[grid](x, y, d, q, a, b, n, m, dim, c_hi, c - c_hi, KAPPA,
                       STORE_Q=need_q, BM=_BM, BN=_BN, BK=_block_k(dim), num_warps=8)
    return d, (q if need_q else None), a, b


def _split(tiles, other_programs, device):
    """(splits, tiles per split) of a loop over ``tiles`` so that the grid has enough programs."""
    splits = max(1, min(tiles, -(-_programs_wanted(device) // other_programs)))
    per = -(-tiles // splits)
    return -(-tiles // per), per


_TUNED = {}  # backward kernel -> its autotuned version (CUDA)


def _launch_backward(kernel, tiles, other_tiles, rows, pointers, scalars, name):
    """One backward kernel over ``tiles`` × D-blocks × splits of its loop over ``other_tiles``: (rows × D) float32."""
    x = pointers[0]
    dim = x.shape[1]
    narrow = max(16, min(_BD_CHOICES[0], triton.next_power_of_2(dim)))  # the block width with the most blocks
    splits, per = _split(other_tiles, tiles * triton.cdiv(dim, narrow), x.device)
    out = torch.empty(splits, rows, dim, dtype=torch.float32, device=x.device)
    args = (*pointers, out, *scalars, per)
    with launch(name, x.device):
        if x.device.type == "cuda" and dim > narrow:
            tuned = _TUNED.setdefault(kernel, _tuned(kernel))
            tuned[lambda meta: (tiles, triton.cdiv(dim, meta["BD"]), splits)](*args, BM=_BM, BN=_BN)
        else:
            kernel[(tiles, triton.cdiv(dim, narrow), splits)](*args, BM=_BM, BN=_BN, BD=narrow, num_warps=8)
    return out[0] if splits == 1 else out.sum(0)


def backward(x, y, grad, q, a, b, c, need_x, need_y):
    """(dL/dx, dL/dy) for ``grad`` = dL/dd (N×M) and the forward's q, a, b (None for a gradient not needed)."""
    n, m, dim = x.shape[0], y.shape[0], x.shape[1]
    pointers = (x, y, grad.to(torch.float32).contiguous(), q, a, b)
    scalars = (n, m, dim, 2.0 * c, 1.0 / math.sqrt(c))
    grad_x = grad_y = None
    if need_x:
        grad_x = _launch_backward(_backward_x, triton.cdiv(n, _BM), triton.cdiv(m, _BN), n, pointers, scalars,
                                  "cdist_backward_x")
    if need_y:
        grad_y = _launch_backward(_backward_y, triton.cdiv(m, _BN), triton.cdiv(n, _BM), m, pointers, scalars,
                                  "cdist_backward_y")
    return grad_x, grad_y


class _TritonCdist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, c):
        need_grad = any(ctx.needs_input_grad[:2])
        d, q, a, b = forward(x, y, c, need_grad)
        if need_grad:
            ctx.save_for_backward(x, y, q, a, b)
            ctx.c = c
        return d

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, y, q, a, b = ctx.saved_tensors
        grad_x, grad_y = backward(x, y, grad, q, a, b, ctx.c, *ctx.needs_input_grad[:2])
        return grad_x, grad_y, None


def cdist(x, y, c):
    """Poincaré distance matrix (N×M float32) of float32 ``x``, ``y`` and a float ``c``, differentiable in x and y."""
    return _TritonCdist.apply(x.contiguous(), y.contiguous(), float(c))
