r"""Triton kernels of two row-wise maps on CUDA: the Triton twins of ``csrc/tangent_map.c`` and
``csrc/relaxed_similarity.c`` (same formulas; the torch ops they replace are their references in the tests).

**Tangent map** (:func:`pml_hyperbolic.poincare.tangent_to_ball`): for a row u, n = ‖u‖,

.. math:: \text{out} = s(n)\,u,\qquad s(n) = \min(\tanh(\sqrt c\,\min(n, r)),\ \rho_{max}) / (\sqrt c\, n)

and :math:`\partial L/\partial u = s\,G + (s'(n)/n)\,(G\cdot u)\,u` with :math:`s'(n)/n = c\,(1 - t^2 - s)/z^2`
(:math:`z = \sqrt c\,n`, :math:`t = \tanh z`) where neither the clipping nor :math:`\rho_{max}` is active, else
:math:`-s/n^2`; its series :math:`c\,(8z^2/15 - 2/3)` below z = 1e-2. The per-row scalars are computed in float64.

**Relaxed similarity** (``HyperbolicSoftTripleLoss``): for the block m (R×K×C), sign σ and temperature γ,

.. math:: p_{ikc} = \operatorname{softmax}_k(\sigma m_{ikc}/\gamma),\qquad S_{ic} = \sigma\sum_k p_{ikc}\,m_{ikc},
          \qquad \partial L/\partial m_{ikc} = p_{ikc}\,(\sigma G_{ic}(1 - S_{ic}/\gamma) + G_{ic}\,m_{ikc}/\gamma)

One launch forward and one backward each, no host synchronisation.
"""

import torch
import triton
import triton.language as tl

from . import launch

_ROWS, _COLS = 16, 128


@triton.jit
def _tanh_pos(z):
    """tanh(z) for z >= 0 in float64: 1 - 2 / (exp(2z) + 1), its series z - z^3/3 below 1e-4."""
    big = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
    return tl.where(z < 1e-4, z - z * z * z / 3.0, big)


@triton.jit
def _tangent_scale(nn, sqrt_c, clip_r, rho_max, CLIP: tl.constexpr):
    """(s, s'(n)/n) in float64 of rows with squared norm nn."""
    n = tl.sqrt(tl.maximum(nn, 1e-300))
    if CLIP:
        clipped = n >= clip_r
        z = sqrt_c * tl.minimum(n, clip_r)
    else:
        clipped = n < 0.0
        z = sqrt_c * n
    t = _tanh_pos(z)
    s = tl.minimum(t, rho_max) / (sqrt_c * n)
    c = sqrt_c * sqrt_c
    free = c * tl.where(z < 1e-2, 8.0 / 15.0 * z * z - 2.0 / 3.0, (1.0 - t * t - s) / tl.maximum(z * z, 1e-300))
    slope = tl.where(clipped | (t >= rho_max), -s / (n * n), free)
    return s, slope


@triton.jit
def _tangent_forward(u_ptr, out_ptr, N, D, sqrt_hi, sqrt_lo, clip_r, rho_max,
                     CLIP: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    sqrt_c = tl.cast(sqrt_hi, tl.float64) + tl.cast(sqrt_lo, tl.float64)
    nn = tl.zeros((BR,), dtype=tl.float64)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        mask = (rows < N)[:, None] & (cols < D)[None, :]
        x = tl.load(u_ptr + rows[:, None].to(tl.int64) * D + cols[None, :], mask=mask, other=0.0).to(tl.float64)
        nn += tl.sum(x * x, axis=1)
    s, _ = _tangent_scale(nn, sqrt_c, tl.cast(clip_r, tl.float64), tl.cast(rho_max, tl.float64), CLIP)
    s = s.to(tl.float32)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        mask = (rows < N)[:, None] & (cols < D)[None, :]
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        x = tl.load(u_ptr + offs, mask=mask, other=0.0)
        tl.store(out_ptr + offs, x * s[:, None], mask=mask)


@triton.jit
def _tangent_backward(u_ptr, g_ptr, out_ptr, N, D, sqrt_hi, sqrt_lo, clip_r, rho_max,
                      CLIP: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    sqrt_c = tl.cast(sqrt_hi, tl.float64) + tl.cast(sqrt_lo, tl.float64)
    nn = tl.zeros((BR,), dtype=tl.float64)
    gu = tl.zeros((BR,), dtype=tl.float64)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        mask = (rows < N)[:, None] & (cols < D)[None, :]
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        x = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float64)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float64)
        nn += tl.sum(x * x, axis=1)
        gu += tl.sum(g * x, axis=1)
    s, slope = _tangent_scale(nn, sqrt_c, tl.cast(clip_r, tl.float64), tl.cast(rho_max, tl.float64), CLIP)
    s32, w = s.to(tl.float32), (slope * gu).to(tl.float32)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        mask = (rows < N)[:, None] & (cols < D)[None, :]
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        x = tl.load(u_ptr + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        tl.store(out_ptr + offs, g * s32[:, None] + x * w[:, None], mask=mask)


def _split(value):
    """A float as two float32 parts (hi + lo carries it to about 48 bits into the kernel)."""
    hi = float(torch.tensor(value, dtype=torch.float32))
    return hi, value - hi


def tangent_to_ball_forward(u, sqrt_c, clip_r, rho_max):
    """``poincare.tangent_to_ball`` of the float32 rows ``u`` (N×D)."""
    u = u.contiguous()
    out = torch.empty_like(u)
    n, d = u.shape
    with launch("tangent_forward", u.device):
        _tangent_forward[(triton.cdiv(n, _ROWS),)](u, out, n, d, *_split(sqrt_c), clip_r or 0.0, rho_max,
                                                   CLIP=clip_r is not None, BR=_ROWS, BD=_COLS)
    return out


def tangent_to_ball_backward(u, grad, sqrt_c, clip_r, rho_max):
    """dL/du of :func:`tangent_to_ball_forward` for ``grad`` = dL/dout."""
    u, grad = u.contiguous(), grad.to(torch.float32).contiguous()
    out = torch.empty_like(u)
    n, d = u.shape
    with launch("tangent_backward", u.device):
        _tangent_backward[(triton.cdiv(n, _ROWS),)](u, grad, out, n, d, *_split(sqrt_c), clip_r or 0.0, rho_max,
                                                    CLIP=clip_r is not None, BR=_ROWS, BD=_COLS)
    return out


@triton.jit
def _relaxed_forward(m_ptr, s_ptr, p_ptr, R, K, C, scale, sign, BC: tl.constexpr):
    """One program per (row, block of classes): loops over the K proxies twice (maximum, then softmax and sum)."""
    i = tl.program_id(0)
    scale, sign = tl.cast(scale, tl.float32), tl.cast(sign, tl.float32)  # (the interpreter passes float64)
    cls = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = cls < C
    base = m_ptr + i.to(tl.int64) * K * C + cls
    top = tl.full((BC,), float("-inf"), dtype=tl.float32)
    for k in range(0, K):
        top = tl.maximum(top, tl.load(base + k * C, mask=mask, other=0.0) * scale)
    total = tl.zeros((BC,), dtype=tl.float32)
    dot = tl.zeros((BC,), dtype=tl.float32)
    for k in range(0, K):
        m = tl.load(base + k * C, mask=mask, other=0.0)
        e = tl.exp(m * scale - top)
        total += e
        dot += e * m
    inv = 1.0 / total
    for k in range(0, K):
        m = tl.load(base + k * C, mask=mask, other=0.0)
        tl.store(p_ptr + i.to(tl.int64) * K * C + k * C + cls, tl.exp(m * scale - top) * inv, mask=mask)
    tl.store(s_ptr + i.to(tl.int64) * C + cls, sign * dot * inv, mask=mask)


@triton.jit
def _relaxed_backward(m_ptr, s_ptr, p_ptr, g_ptr, out_ptr, R, K, C, inv_gamma, sign, BC: tl.constexpr):
    i = tl.program_id(0)
    inv_gamma, sign = tl.cast(inv_gamma, tl.float32), tl.cast(sign, tl.float32)
    cls = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = cls < C
    g = tl.load(g_ptr + i.to(tl.int64) * C + cls, mask=mask, other=0.0)
    s = tl.load(s_ptr + i.to(tl.int64) * C + cls, mask=mask, other=0.0)
    alpha = sign * g * (1.0 - s * inv_gamma)
    beta = g * inv_gamma
    for k in range(0, K):
        offs = i.to(tl.int64) * K * C + k * C + cls
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
        p = tl.load(p_ptr + offs, mask=mask, other=0.0)
        tl.store(out_ptr + offs, p * (alpha + beta * m), mask=mask)


def relaxed_similarity_forward(m, sign, gamma):
    """(S, p) for the float32 block ``m`` (R×K×C)."""
    m = m.contiguous()
    r, k, c = m.shape
    s = torch.empty(r, c, dtype=torch.float32, device=m.device)
    p = torch.empty_like(m)
    with launch("relaxed_similarity_forward", m.device):
        _relaxed_forward[(r, triton.cdiv(c, _COLS))](m, s, p, r, k, c, sign / gamma, sign, BC=_COLS)
    return s, p


def relaxed_similarity_backward(m, s, p, sign, gamma, grad):
    """dL/dm (R×K×C) for ``grad`` = dL/dS (R×C) and the forward's m, S, p."""
    grad = grad.to(torch.float32).contiguous()
    r, k, c = m.shape
    out = torch.empty_like(m)
    with launch("relaxed_similarity_backward", m.device):
        _relaxed_backward[(r, triton.cdiv(c, _COLS))](m, s, p, grad, out, r, k, c, 1.0 / gamma, sign, BC=_COLS)
    return out
