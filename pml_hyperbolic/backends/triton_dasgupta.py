r"""HypHC's relaxed Dasgupta loss on the GPU: the Triton twin of ``_RelaxedDasgupta`` in
:mod:`pml_hyperbolic.regularizers.hyphc_proxy_regularizer` (same formulas; the torch Function is its reference in
the tests).

A leaf l is the sum of G consecutive rows of x (R×D, any strides), :math:`x_l = \sum_{g<G} x_{lG+g}`, divided by
:math:`n_l = \max(\|x_l\|, 10^{-12})` with ``normalize`` (G = K: a class direction from its K proxies; G = 1: a
row). A triplet t = (i, j, k) of leaves has the pairs (i, j), (i, k), (j, k); for a pair (u, v):

.. math::

    c = \|u + v\|^2/4 = \cos^2(\theta/2),\quad s = \|v - u\|^2/4 = \sin^2(\theta/2),\quad y = \rho\sqrt c,\quad
    1 - y = (1 - \rho) + \rho\,s/(1 + \sqrt c),\quad \delta = \tfrac12[\operatorname{log1p}(y) - \log(1 - y)]

with :math:`\rho = 2r/(1 + r^2)`, :math:`1 - \rho = (1 - r)^2/(1 + r^2)`, and the loss
:math:`\ell_t = \sum_p w_p\,(1 - \pi_p)`, :math:`\pi = \operatorname{softmax}(\delta/\tau)` over the 3 pairs. The
similarities w are given per pair (3×T), or the pair's own c (constants), or :math:`\|e_a + e_b\|^2/4` of unit class
directions :math:`e_c = \operatorname{normalize}(\sum_{g<G_E} E_{cG_E+g})` of a second matrix E, the class of leaf
l being :math:`\lfloor l / L\rfloor` (HypHC's "euclidean" similarity, gathered in the kernel: no C×C matrix).

**Forward** (one launch, BT triplets per program): a pass over D for the leaves' norms, a pass for the six sums
c, s (the same for E), then the per-triplet scalars. It saves 12 floats per triplet (1/n_i, 1/n_j, 1/n_k, the three
c, the three s, the three w): memory O(T); the leaves are read again in the backward.

**Backward** (one launch after a zero fill): with :math:`\bar\ell` the incoming gradient,
:math:`\partial L/\partial w_p = \bar\ell(1 - \pi_p)`,
:math:`\partial L/\partial\delta_p = \pi_p(\sum_q \pi_q w_q - w_p)\,\bar\ell/\tau`,
:math:`\partial L/\partial r = \sum \partial L/\partial\delta\,\sqrt c/(1 - y^2)\cdot d\rho/dr`, and into the leaves
the torch Function's tangent form: :math:`\kappa = \partial L/\partial\delta\,\rho/(4\max(\sqrt c, 10^{-15})(1 - y^2))`,
:math:`g_u = \kappa(v - u) + 2\kappa s\,u` when c >= s (θ <= 90°), else :math:`\kappa(u + v) - 2\kappa c\,u`;
:math:`g_v = \kappa(\beta + 2[c < s])(u + v) - g_u` (β the coefficient of u): no cancellation for identical or
antipodal leaves. With ``normalize`` each is divided by its leaf's norm (the exact derivative of x/‖x‖ for a
tangent gradient); every one of the leaf's G rows receives it. (The floors 1e-12 and 1e-15 are the torch
Function's.)

Gradients of triplets that share leaves are added with relaxed float atomics (one per element and row; the radius's
once per program), so the result is deterministic only up to float32 rounding of the summation order, as torch's
``index_add_`` on CUDA. Float32 throughout; no host synchronisation and fixed launch shapes (a step can be captured
in a CUDA graph). Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors.
"""

import torch
import triton
import triton.language as tl

from . import launch, triton_interpreted

GIVEN, OWN, DIRECTIONS = 0, 1, 2  # where the similarities w come from (W_MODE)
_BT, _BD = 16, 32  # triplets per program, columns per step (4 warps: no register spills on sm_90)


@triton.jit
def _rows(x_ptr, s0, s1, leaf, G, cols, mask, BT: tl.constexpr, BD: tl.constexpr):
    """Σ_{g<G} x[leaf·G + g, cols] in float32 ([BT] leaves × [BD] columns)."""
    acc = tl.zeros([BT, BD], tl.float32)
    base = x_ptr + (leaf * G)[:, None] * s0 + cols[None, :] * s1
    for g in range(0, G):
        acc += tl.load(base + g * s0, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _inverse_norms(x_ptr, s0, s1, li, lj, lk, G, live, D, BT: tl.constexpr, BD: tl.constexpr):
    """1 / max(‖x_l‖, 1e-12) of the leaves li, lj, lk."""
    ni = tl.zeros([BT], tl.float32)
    nj = tl.zeros([BT], tl.float32)
    nk = tl.zeros([BT], tl.float32)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        mask = live[:, None] & (cols < D)[None, :]
        xi = _rows(x_ptr, s0, s1, li, G, cols, mask, BT, BD)
        xj = _rows(x_ptr, s0, s1, lj, G, cols, mask, BT, BD)
        xk = _rows(x_ptr, s0, s1, lk, G, cols, mask, BT, BD)
        ni += tl.sum(xi * xi, axis=1)
        nj += tl.sum(xj * xj, axis=1)
        nk += tl.sum(xk * xk, axis=1)
    return (1 / tl.maximum(tl.sqrt_rn(ni), 1e-12), 1 / tl.maximum(tl.sqrt_rn(nj), 1e-12),
            1 / tl.maximum(tl.sqrt_rn(nk), 1e-12))


@triton.jit
def _halves(x_ptr, s0, s1, li, lj, lk, inv_i, inv_j, inv_k, G, live, D,
            NORMALIZE: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """c = ‖u + v‖²/4 and s = ‖v − u‖²/4 of the pairs (i, j), (i, k), (j, k) of the leaves u = x_l (/ n_l)."""
    cij = tl.zeros([BT], tl.float32)
    cik = tl.zeros([BT], tl.float32)
    cjk = tl.zeros([BT], tl.float32)
    sij = tl.zeros([BT], tl.float32)
    sik = tl.zeros([BT], tl.float32)
    sjk = tl.zeros([BT], tl.float32)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        mask = live[:, None] & (cols < D)[None, :]
        ui = _rows(x_ptr, s0, s1, li, G, cols, mask, BT, BD)
        uj = _rows(x_ptr, s0, s1, lj, G, cols, mask, BT, BD)
        uk = _rows(x_ptr, s0, s1, lk, G, cols, mask, BT, BD)
        if NORMALIZE:
            ui, uj, uk = ui * inv_i[:, None], uj * inv_j[:, None], uk * inv_k[:, None]
        a, b, c = ui + uj, ui + uk, uj + uk
        cij += tl.sum(a * a, axis=1)
        cik += tl.sum(b * b, axis=1)
        cjk += tl.sum(c * c, axis=1)
        a, b, c = uj - ui, uk - ui, uk - uj
        sij += tl.sum(a * a, axis=1)
        sik += tl.sum(b * b, axis=1)
        sjk += tl.sum(c * c, axis=1)
    return cij / 4, cik / 4, cjk / 4, sij / 4, sik / 4, sjk / 4


@triton.jit
def _triplets(tri_ptr, ts0, ts1, T, BT: tl.constexpr):
    t = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    live = t < T
    li = tl.load(tri_ptr + t * ts1, mask=live, other=0)
    lj = tl.load(tri_ptr + ts0 + t * ts1, mask=live, other=0)
    lk = tl.load(tri_ptr + 2 * ts0 + t * ts1, mask=live, other=0)
    return t, live, li, lj, lk


@triton.jit
def _radius(r_ptr, rho, one_minus_rho, LEARNED: tl.constexpr):
    """(ρ, 1 − ρ, dρ/dr): read from r_ptr (a learned radius, float32) or the given constants (dρ/dr unused)."""
    if LEARNED:
        r = tl.load(r_ptr)
        r2 = r * r
        rho = 2 * r / (1 + r2)
        one_minus_rho = (1 - r) * (1 - r) / (1 + r2)
        drho = 2 * (1 - r2) / ((1 + r2) * (1 + r2))
    else:
        drho = rho * 0.0
    return rho, one_minus_rho, drho


@triton.jit
def _depth(c, s, rho, one_minus_rho):
    """(δ, √c, y, 1 − y); log1p(y) as log(1 + y)·y/((1 + y) − 1) (exact to a few ulps, Goldberg)."""
    root = tl.sqrt_rn(c)
    y = rho * root
    one_minus_y = one_minus_rho + rho * s / (1 + root)
    one_plus = 1 + y
    small = one_plus == 1
    log1p = tl.where(small, y, tl.log(one_plus) * (y / tl.where(small, 1.0, one_plus - 1)))
    return (log1p - tl.log(one_minus_y)) / 2, root, y, one_minus_y


@triton.jit
def _softmax3(a, b, c):
    top = tl.maximum(tl.maximum(a, b), c)
    ea, eb, ec = tl.exp(a - top), tl.exp(b - top), tl.exp(c - top)
    total = ea + eb + ec
    return ea / total, eb / total, ec / total


@triton.jit
def _forward_kernel(x_ptr, xs0, xs1, tri_ptr, ts0, ts1, w_ptr, e_ptr, es0, es1, r_ptr, loss_ptr, save_ptr,
                    T, D, DE, G, GE, L, rho, one_minus_rho, tau,
                    NORMALIZE: tl.constexpr, W_MODE: tl.constexpr, LEARNED: tl.constexpr,
                    BT: tl.constexpr, BD: tl.constexpr):
    rho, one_minus_rho = tl.cast(rho, tl.float32), tl.cast(one_minus_rho, tl.float32)  # (interpreter: float64)
    tau = tl.cast(tau, tl.float32)
    t, live, li, lj, lk = _triplets(tri_ptr, ts0, ts1, T, BT)
    if NORMALIZE:
        inv_i, inv_j, inv_k = _inverse_norms(x_ptr, xs0, xs1, li, lj, lk, G, live, D, BT, BD)
    else:
        inv_i = tl.full([BT], 1.0, tl.float32)
        inv_j, inv_k = inv_i, inv_i
    cij, cik, cjk, sij, sik, sjk = _halves(x_ptr, xs0, xs1, li, lj, lk, inv_i, inv_j, inv_k, G, live, D, NORMALIZE,
                                           BT, BD)
    if W_MODE == 0:  # GIVEN
        wij = tl.load(w_ptr + t, mask=live, other=0.0).to(tl.float32)
        wik = tl.load(w_ptr + T + t, mask=live, other=0.0).to(tl.float32)
        wjk = tl.load(w_ptr + 2 * T + t, mask=live, other=0.0).to(tl.float32)
    elif W_MODE == 1:  # OWN
        wij, wik, wjk = cij, cik, cjk
    else:  # DIRECTIONS
        ci, cj, ck = li // L, lj // L, lk // L
        ei, ej, ek = _inverse_norms(e_ptr, es0, es1, ci, cj, ck, GE, live, DE, BT, BD)
        wij, wik, wjk, _, _, _ = _halves(e_ptr, es0, es1, ci, cj, ck, ei, ej, ek, GE, live, DE, True, BT, BD)
    rho, one_minus_rho, _ = _radius(r_ptr, rho, one_minus_rho, LEARNED)
    dij, _, _, _ = _depth(cij, sij, rho, one_minus_rho)
    dik, _, _, _ = _depth(cik, sik, rho, one_minus_rho)
    djk, _, _, _ = _depth(cjk, sjk, rho, one_minus_rho)
    pij, pik, pjk = _softmax3(dij / tau, dik / tau, djk / tau)
    tl.store(loss_ptr + t, wij * (1 - pij) + wik * (1 - pik) + wjk * (1 - pjk), mask=live)
    tl.store(save_ptr + t, inv_i, mask=live)
    tl.store(save_ptr + T + t, inv_j, mask=live)
    tl.store(save_ptr + 2 * T + t, inv_k, mask=live)
    tl.store(save_ptr + 3 * T + t, cij, mask=live)
    tl.store(save_ptr + 4 * T + t, cik, mask=live)
    tl.store(save_ptr + 5 * T + t, cjk, mask=live)
    tl.store(save_ptr + 6 * T + t, sij, mask=live)
    tl.store(save_ptr + 7 * T + t, sik, mask=live)
    tl.store(save_ptr + 8 * T + t, sjk, mask=live)
    tl.store(save_ptr + 9 * T + t, wij, mask=live)
    tl.store(save_ptr + 10 * T + t, wik, mask=live)
    tl.store(save_ptr + 11 * T + t, wjk, mask=live)


@triton.jit
def _pair_grad(u, v, kappa, beta, far):
    """(∂L/∂u, ∂L/∂v) of a pair: κ(v − u) + κβu (near) or κ(u + v) + κβu (far), and κ(β + 2·far)(u + v) − g_u."""
    total = u + v
    gu = tl.where(far[:, None], total, v - u) * kappa[:, None] + (kappa * beta)[:, None] * u
    return gu, (kappa * (beta + 2 * far.to(tl.float32)))[:, None] * total - gu


@triton.jit
def _tangent(c, s, root, q, gd, rho):
    """(κ, β, far) of a pair: κ = ∂L/∂δ·ρ/(4 max(√c, 1e-15)(1 − y²)), β = 2s (c >= s) or −2c, q = 1 − y²."""
    far = c < s
    return gd * rho / (4 * tl.maximum(root, 1e-15) * q), tl.where(far, -2 * c, 2 * s), far


@triton.jit
def _backward_kernel(x_ptr, xs0, xs1, tri_ptr, ts0, ts1, save_ptr, g_ptr, gs, r_ptr, gx_ptr, gw_ptr, gr_ptr,
                     T, D, G, rho, one_minus_rho, tau,
                     NORMALIZE: tl.constexpr, LEARNED: tl.constexpr, GRAD_X: tl.constexpr, GRAD_W: tl.constexpr,
                     GRAD_R: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    rho, one_minus_rho = tl.cast(rho, tl.float32), tl.cast(one_minus_rho, tl.float32)  # (interpreter: float64)
    tau = tl.cast(tau, tl.float32)
    t, live, li, lj, lk = _triplets(tri_ptr, ts0, ts1, T, BT)
    cij = tl.load(save_ptr + 3 * T + t, mask=live, other=0.0)
    cik = tl.load(save_ptr + 4 * T + t, mask=live, other=0.0)
    cjk = tl.load(save_ptr + 5 * T + t, mask=live, other=0.0)
    sij = tl.load(save_ptr + 6 * T + t, mask=live, other=0.0)
    sik = tl.load(save_ptr + 7 * T + t, mask=live, other=0.0)
    sjk = tl.load(save_ptr + 8 * T + t, mask=live, other=0.0)
    wij = tl.load(save_ptr + 9 * T + t, mask=live, other=0.0)
    wik = tl.load(save_ptr + 10 * T + t, mask=live, other=0.0)
    wjk = tl.load(save_ptr + 11 * T + t, mask=live, other=0.0)
    rho, one_minus_rho, drho = _radius(r_ptr, rho, one_minus_rho, LEARNED)
    dij, rij, yij, oij = _depth(cij, sij, rho, one_minus_rho)
    dik, rik, yik, oik = _depth(cik, sik, rho, one_minus_rho)
    djk, rjk, yjk, ojk = _depth(cjk, sjk, rho, one_minus_rho)
    pij, pik, pjk = _softmax3(dij / tau, dik / tau, djk / tau)
    g = tl.load(g_ptr + t * gs, mask=live, other=0.0).to(tl.float32)
    if GRAD_W:
        tl.store(gw_ptr + t, g * (1 - pij), mask=live)
        tl.store(gw_ptr + T + t, g * (1 - pik), mask=live)
        tl.store(gw_ptr + 2 * T + t, g * (1 - pjk), mask=live)
    dot = pij * wij + pik * wik + pjk * wjk
    g = g / tau
    gij, gik, gjk = pij * (dot - wij) * g, pik * (dot - wik) * g, pjk * (dot - wjk) * g  # ∂L/∂δ
    qij, qik, qjk = oij * (1 + yij), oik * (1 + yik), ojk * (1 + yjk)  # 1 − y²
    if GRAD_R:
        part = gij * rij / qij + gik * rik / qik + gjk * rjk / qjk
        tl.atomic_add(gr_ptr, tl.sum(tl.where(live, part, 0.0)) * drho, sem="relaxed")
    if GRAD_X:
        if NORMALIZE:
            inv_i = tl.load(save_ptr + t, mask=live, other=1.0)
            inv_j = tl.load(save_ptr + T + t, mask=live, other=1.0)
            inv_k = tl.load(save_ptr + 2 * T + t, mask=live, other=1.0)
        kij, bij, fij = _tangent(cij, sij, rij, qij, gij, rho)
        kik, bik, fik = _tangent(cik, sik, rik, qik, gik, rho)
        kjk, bjk, fjk = _tangent(cjk, sjk, rjk, qjk, gjk, rho)
        oi, oj, ok = (li * G)[:, None] * D, (lj * G)[:, None] * D, (lk * G)[:, None] * D
        for d0 in range(0, D, BD):
            cols = d0 + tl.arange(0, BD)
            mask = live[:, None] & (cols < D)[None, :]
            ui = _rows(x_ptr, xs0, xs1, li, G, cols, mask, BT, BD)
            uj = _rows(x_ptr, xs0, xs1, lj, G, cols, mask, BT, BD)
            uk = _rows(x_ptr, xs0, xs1, lk, G, cols, mask, BT, BD)
            if NORMALIZE:
                ui, uj, uk = ui * inv_i[:, None], uj * inv_j[:, None], uk * inv_k[:, None]
            gu_ij, gv_ij = _pair_grad(ui, uj, kij, bij, fij)
            gu_ik, gv_ik = _pair_grad(ui, uk, kik, bik, fik)
            gu_jk, gv_jk = _pair_grad(uj, uk, kjk, bjk, fjk)
            gi, gj, gk = gu_ij + gu_ik, gv_ij + gu_jk, gv_ik + gv_jk
            if NORMALIZE:
                gi, gj, gk = gi * inv_i[:, None], gj * inv_j[:, None], gk * inv_k[:, None]
            for row in range(0, G):  # every row of the leaf
                tl.atomic_add(gx_ptr + oi + row * D + cols[None, :], gi, mask=mask, sem="relaxed")
                tl.atomic_add(gx_ptr + oj + row * D + cols[None, :], gj, mask=mask, sem="relaxed")
                tl.atomic_add(gx_ptr + ok + row * D + cols[None, :], gk, mask=mask, sem="relaxed")


def _rho(radius):
    """(ρ, 1 − ρ) of a float radius, in float64 (the learned radius is read in the kernels)."""
    if isinstance(radius, torch.Tensor):
        return 0.0, 0.0
    r2 = radius * radius
    return 2 * radius / (1 + r2), (1 - radius) ** 2 / (1 + r2)


def _check(x, triplets):
    if x.device.type != "cuda" and not triton_interpreted():
        raise ValueError(
            f"The Triton Dasgupta kernels need CUDA tensors, got {x.device}: set TRITON_INTERPRET=1 before importing "
            "pml_hyperbolic to run them in Triton's interpreter, or use the torch path."
        )
    if x.ndim != 2 or not x.is_floating_point() or triplets.ndim != 2 or triplets.shape[0] != 3:
        raise ValueError(f"x must be (R, D) and triplets (3, T), got {tuple(x.shape)} and {tuple(triplets.shape)}.")


def relaxed_dasgupta_forward(x, triplets, radius, temperature, normalize, group=1, weights=None, directions=None,
                             directions_group=1, leaves_per_class=1):
    """(losses (T,), saved (12, T)) of the triplets (3, T) int64 of leaves of ``x`` (R×D, any strides; leaf l = the
    sum of rows l·``group`` to l·``group`` + ``group`` − 1, normalised with ``normalize``). Similarities: ``weights``
    (3T,) per pair, or (``weights`` None) the class directions of ``directions`` (``directions_group`` rows per
    class, leaf l of class l // ``leaves_per_class``), or (both None) the pairs' own cos²(θ/2). ``radius``: a float
    or a 0-d float32 tensor on the device. ``saved[9:12]`` holds the similarities (3, T)."""
    _check(x, triplets)
    t = triplets.shape[1]
    losses = torch.empty(t, dtype=torch.float32, device=x.device)
    saved = torch.empty(12, t, dtype=torch.float32, device=x.device)
    if t:
        mode = GIVEN if weights is not None else OWN if directions is None else DIRECTIONS
        e = x if directions is None else directions
        learned = isinstance(radius, torch.Tensor)
        with launch("dasgupta_forward", x.device):
            _forward_kernel[(triton.cdiv(t, _BT),)](
                x, x.stride(0), x.stride(1), triplets, triplets.stride(0), triplets.stride(1),
                x if weights is None else weights.contiguous(), e, e.stride(0), e.stride(1),
                radius if learned else x, losses, saved, t, x.shape[1], e.shape[1], group, directions_group,
                leaves_per_class, *_rho(radius), float(temperature),
                NORMALIZE=bool(normalize), W_MODE=mode, LEARNED=learned, BT=_BT, BD=_BD,
            )
    return losses, saved


def relaxed_dasgupta_backward(x, triplets, saved, radius, temperature, normalize, group, grad, needs_x=True,
                              needs_w=False, needs_r=False):
    """(∂L/∂x (R×D, contiguous) or None, ∂L/∂w (3T,) or None, ∂L/∂r (0-d) or None) for ``grad`` = ∂L/∂losses
    ((T,), any stride) and :func:`relaxed_dasgupta_forward`'s inputs and ``saved``."""
    t = triplets.shape[1]
    grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if needs_x else None
    grad_w = torch.empty(3 * t, dtype=torch.float32, device=x.device) if needs_w else None
    grad_r = torch.zeros((), dtype=torch.float32, device=x.device) if needs_r else None
    if t and (needs_x or needs_w or needs_r):
        learned = isinstance(radius, torch.Tensor)
        with launch("dasgupta_backward", x.device):
            _backward_kernel[(triton.cdiv(t, _BT),)](
                x, x.stride(0), x.stride(1), triplets, triplets.stride(0), triplets.stride(1), saved, grad,
                grad.stride(0), radius if learned else x, x if grad_x is None else grad_x,
                x if grad_w is None else grad_w, x if grad_r is None else grad_r, t, x.shape[1], group,
                *_rho(radius), float(temperature),
                NORMALIZE=bool(normalize), LEARNED=learned, GRAD_X=needs_x, GRAD_W=needs_w, GRAD_R=needs_r,
                BT=_BT, BD=_BD,
            )
    return grad_x, grad_w, grad_r
