r"""The functions of :mod:`pml_hyperbolic.poincare` (see its docstring for the notation and numerical rules)."""

import math

import torch

from .. import backends
from .autograd import (
    _BOUNDARY_EPS,
    _as_c,
    _full_precision,
    _NativeCdist,
    _NativePdist,
    _PoincareCdist,
    _RiemannianGradient,
    _sq_norms,
    _tangent_norm_scale,
    _TangentToBall,
    _work_dtype,
)


def boundary_eps(dtype):
    """Relative margin to the boundary that :func:`project` keeps for ``dtype``."""
    return _BOUNDARY_EPS.get(dtype, 1e-5)


def max_norm(c, dtype=torch.float32):
    r"""Largest Euclidean norm kept by :func:`project`: :math:`(1 - \epsilon_{dtype}) / \sqrt c`."""
    return (1 - boundary_eps(dtype)) / c**0.5


def project(x, c, dim=-1, eps=None):
    r"""Projection into the ball, :math:`x \cdot \min(1, r_{max}/\|x\|)` with :math:`r_{max} = (1-\epsilon)/\sqrt c`.

    Idempotent (bitwise): projected rows land strictly below :math:`r_{max}` and are left alone by a second call.

    Parameters
    ----------
    x : tensor, points (any shape, coordinates along ``dim``)
    c : float or tensor, the curvature
    eps : relative margin to the boundary (default :func:`boundary_eps` of the dtype)

    Returns
    -------
    tensor, like ``x``
    """
    c = _as_c(c, x)
    eps = boundary_eps(x.dtype) if eps is None else eps
    r_max = (1 - eps) / c.sqrt()
    norm = x.norm(dim=dim, keepdim=True)
    # Target slightly inside r_max so that the rounded norm of the result is not above r_max again.
    target = r_max * (1 - 8 * torch.finfo(x.dtype).eps)
    scale = torch.where(norm > r_max, target / norm.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(norm))
    return x * scale


def clip_features(x, r, dim=-1):
    r"""Feature clipping (Guo et al., CVPR 2022): :math:`x \cdot \min(1, r / \|x\|)`.

    Parameters
    ----------
    x : tensor, Euclidean features
    r : float, the clipping radius

    Returns
    -------
    tensor, like ``x``
    """
    norm = x.norm(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return x * (r / norm).clamp(max=1)


def expmap0(u, c, dim=-1):
    r"""Exponential map at the origin, :math:`\exp_0(u) = \tanh(\sqrt c\|u\|)\,u / (\sqrt c\|u\|)`, projected
    (:func:`project`: tanh rounds to 1 for large arguments).

    Parameters
    ----------
    u : tensor, tangent vectors at the origin
    c : float or tensor, the curvature

    Returns
    -------
    tensor, points in the ball, like ``u``
    """
    c = _as_c(c, u)
    sqrt_c = c.sqrt()
    norm = u.norm(dim=dim, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    scaled = sqrt_c * norm
    # tanh(t)/t, continuous at t = 0 where it equals 1.
    factor = torch.where(scaled < 1e-4, 1 - scaled**2 / 3, torch.tanh(scaled) / scaled)
    return project(u * factor, c, dim=dim)


def tangent_to_ball(u, c, clip_r=None, dim=-1):
    r"""Clipping, :func:`expmap0` and :func:`project` as one scale per row:

    .. math:: u\,\rho / (\sqrt c\,\|u\|),\qquad \rho = \min(\tanh(\sqrt c\,\min(\|u\|, r)),\ 1 - \epsilon)

    The map of :class:`~pml_hyperbolic.layers.ToPoincare` and of the losses' proxies. With a constant curvature the
    backward is one formula, :math:`g\,s + u\,(g\cdot u)\,s'(\|u\|)/\|u\|` for the scale :math:`s` (C or Triton
    kernels for float32 2-D input); twice differentiable.

    Parameters
    ----------
    u : tensor, tangent vectors at the origin
    c : float or tensor, the curvature
    clip_r : float or None, the clipping radius r (None: no clipping)

    Returns
    -------
    tensor, points in the ball, like ``u``
    """
    # tanh rounds to 1 for large arguments: keep the projection's margin to the boundary.
    rho_max = (1 - boundary_eps(u.dtype)) * (1 - 8 * torch.finfo(u.dtype).eps)
    if isinstance(c, torch.Tensor) and c.requires_grad:
        return u * _tangent_norm_scale(u, c.to(u).sqrt(), clip_r, rho_max, dim)[2]
    return _TangentToBall.apply(u, math.sqrt(float(c)), clip_r, rho_max, dim)


def logmap0(x, c, dim=-1):
    r"""Logarithmic map at the origin, :math:`\log_0(x) = \operatorname{artanh}(\sqrt c\|x\|)\,x / (\sqrt c\|x\|)`.

    Parameters
    ----------
    x : tensor, points in the ball
    c : float or tensor, the curvature

    Returns
    -------
    tensor, tangent vectors at the origin, like ``x``
    """
    c = _as_c(c, x)
    sqrt_c = c.sqrt()
    norm = x.norm(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    scaled = (sqrt_c * norm).clamp(max=1 - torch.finfo(x.dtype).eps)
    factor = torch.where(scaled < 1e-4, 1 + scaled**2 / 3, torch.atanh(scaled) / scaled)
    return x * factor


def lambda_x(x, c, dim=-1, keepdim=False):
    r"""Conformal factor :math:`\lambda_x = 2 / (1 - c\|x\|^2)` of points ``x``."""
    c = _as_c(c, x)
    return 2 / (1 - c * x.pow(2).sum(dim=dim, keepdim=keepdim))


def _asinh_sqrt(q):
    r"""asinh(sqrt(q)) as log1p(s + q / (1 + sqrt(1 + q))), s = sqrt(q): exact near 0, faster than ``torch.asinh``."""
    return torch.log1p(q.sqrt() + q / (1 + (1 + q).sqrt()))


def dist0(x, c, dim=-1, keepdim=False):
    r"""Distance to the origin, :math:`d_c(0, x) = \frac{2}{\sqrt c}\operatorname{asinh}\sqrt{c\|x\|^2/\alpha_x}`,
    computed in float64.

    Returns
    -------
    tensor of ``promote(x.dtype, float32)``, ``x``'s shape without ``dim`` (unless ``keepdim``)
    """
    out_dtype = torch.promote_types(x.dtype, torch.float32)
    with _full_precision(x.device):
        xw = x.to(torch.float64)
        cw = _as_c(c, xw)
        u = xw.pow(2).sum(dim=dim, keepdim=keepdim)
        q = (cw * u / (1 - cw * u)).clamp_min(1e-300)  # the clamp passes a zero gradient at x = 0
        d = torch.where(u > 0, 2 / cw.sqrt() * _asinh_sqrt(q), torch.zeros_like(q))
    return d.to(out_dtype)


def dist(x, y, c, dim=-1, keepdim=False):
    r"""Row-wise distance (broadcasting), from exact differences :math:`x - y`, computed in float64:

    .. math:: d_c(x, y) = \frac{2}{\sqrt c}\operatorname{asinh}\sqrt{\frac{c\,\|x-y\|^2}{\alpha_x\alpha_y}}

    :math:`d(x, x) = 0` with zero gradient.

    Returns
    -------
    tensor of ``promote(x.dtype, y.dtype, float32)``
    """
    out_dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    with _full_precision(x.device):
        xw, yw = x.to(torch.float64), y.to(torch.float64)
        cw = _as_c(c, xw)
        a = (xw - yw).pow(2).sum(dim=dim, keepdim=keepdim)
        alpha = 1 - cw * xw.pow(2).sum(dim=dim, keepdim=keepdim)
        beta = 1 - cw * yw.pow(2).sum(dim=dim, keepdim=keepdim)
        # The clamp passes a zero gradient at x = y (where sqrt has an infinite derivative).
        q = (cw * a / (alpha * beta)).clamp_min(1e-300)
        d = torch.where(a > 0, 2 / cw.sqrt() * _asinh_sqrt(q), torch.zeros_like(q))
    return d.to(out_dtype)


def cdist(x, y, c):
    r"""Pairwise distance matrix :math:`D_{ij} = d_c(x_i, y_j)` from one matrix product:

    .. math:: D_{ij} = \frac{2}{\sqrt c}\operatorname{asinh}\sqrt{\frac{c\,A_{ij}}{\alpha_i\beta_j}},\qquad
              A_{ij} = \|x_i\|^2 + \|y_j\|^2 - 2\,x_i\cdot y_j

    O(N·M) memory, never an N×M×D tensor. The pairs whose product can cancel, :math:`A_{ij} \le \kappa(\|x_i\|^2 +
    \|y_j\|^2)`, are recomputed from exact differences: every pair keeps about 1e-7 relative accuracy in float32 (close
    pairs and points at the boundary included), identical points give exactly 0 with zero gradient. Runs the Triton
    kernels on CUDA and the C kernels on the CPU for float32 and a constant curvature (:mod:`pml_hyperbolic.backends`,
    no host synchronisation on CUDA), torch ops otherwise (float64, a learnable curvature). The products are IEEE
    float32 whatever the process's TF32 setting.

    Parameters
    ----------
    x : tensor (N, D), points in the ball
    y : tensor (M, D), points in the ball
    c : float or tensor, the curvature (a tensor with ``requires_grad`` gets a gradient)

    Returns
    -------
    tensor (N, M) of ``promote(x.dtype, y.dtype, float32)`` (half inputs and autocast are computed in float32)
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"cdist expects x (N×D) and y (M×D) with the same D, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    out_dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    if x.shape[0] == 0 or y.shape[0] == 0:
        return (x.sum(1, keepdim=True) + y.sum(1).unsqueeze(0)).to(out_dtype)  # empty N×M, attached to the graph
    work = _work_dtype(out_dtype)
    constant_c = not isinstance(c, torch.Tensor) or (c.device.type == "cpu" and not c.requires_grad)
    with torch.autocast(device_type=x.device.type, enabled=False):
        xw, yw = x.to(work), y.to(work)
        kind = backends.select(xw, yw) if constant_c else "torch"
        if kind == "triton":  # IEEE products by construction: no global flag is read or set
            from ..backends import triton_cdist

            return triton_cdist.cdist(xw, yw, float(c))
        with backends.ieee_matmul(x.device.type):
            if kind == "native":
                return _NativeCdist.apply(xw, yw, float(c))
            cw = _as_c(c, xw)
            with torch.no_grad():
                # 1/alpha in float64 from the exact curvature (a float c is not rounded to float32 here)
                c64 = _as_c(c.detach() if isinstance(c, torch.Tensor) else c, torch.empty((), dtype=torch.float64))
                u, v = _sq_norms(xw.detach(), c64), _sq_norms(yw.detach(), c64)
                a = (1 / (1 - c64 * u)).to(work)
                b = (1 / (1 - c64 * v)).to(work)
            return _PoincareCdist.apply(xw, yw, cw, u.to(work), v.to(work), a, b).to(out_dtype)


def pdist(x, c):
    r"""Symmetric distance matrix :math:`D_{ij} = d_c(x_i, x_j)` of one set of points, exactly symmetric with a zero
    diagonal: from exact differences in the C kernel for small float32 CPU sets (a few hundred points), else
    :func:`cdist` ``(x, x)`` symmetrised, :math:`(D + D^\top)/2`.

    Parameters
    ----------
    x : tensor (R, D), points in the ball
    c : float, the curvature

    Returns
    -------
    tensor (R, R) of ``promote(x.dtype, float32)``
    """
    if x.ndim == 2 and not isinstance(c, torch.Tensor) and backends.select(x, kernels=("native",)) == "native":
        from ..backends import native

        if native.use_pdist(x):
            with torch.autocast(device_type="cpu", enabled=False):
                return _NativePdist.apply(x, float(c))
    d = cdist(x, x, c)
    return (d + d.t()) / 2


def riemannian_gradient(x, c):
    r"""Identity in the forward pass; in the backward pass the gradient is scaled by
    :math:`1/\lambda_x^2 = (1 - c\|x\|^2)^2/4` (Euclidean to Riemannian gradient, as in hyptorch's ToPoincare)."""
    return _RiemannianGradient.apply(x, _as_c(c, x))
