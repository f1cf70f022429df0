r"""HypHC's relaxed Dasgupta cost of leaf triplets (the core of
:class:`~pml_hyperbolic.regularizers.HypHCProxyRegularizer`), with hand-written backwards: torch ops, and the Triton
kernels of :mod:`pml_hyperbolic.backends.triton_dasgupta`.

For leaves u, v on one sphere of radius r in the unit ball, the depth of their LCA is
:math:`\delta = \operatorname{artanh}(\rho\cos(\theta/2))`, :math:`\rho = 2r/(1 + r^2)`, and a triplet's loss is
:math:`\sum_p w_p (1 - \operatorname{softmax}(\delta/\tau)_p)` over its three pairs.
"""

import torch

# Floor of cos(θ/2) in the backward's 1/cos(θ/2) (antipodal leaves); the tangent vector it multiplies is O(cos(θ/2)).
_MIN_COS = 1e-15
# Row norms are clamped here before dividing (as F.normalize does).
_MIN_NORM = 1e-12


class _RelaxedDasgupta(torch.autograd.Function):
    r"""Per-triplet loss :math:`\sum_p w_p (1 - \operatorname{softmax}(\delta/\tau)_p)` of the 3T leaf pairs
    (``a``, ``b``): rows of ``leaves`` (unit rows, or normalised here with ``normalize``), pair p of triplet t at
    p·T + t; similarities ``w`` (3T,), or None for the pairs' own (1 + cos)/2 as constants; radius r (float, or a
    0-d tensor that gets a gradient); computed in ``dtype``.

    Saves only per-pair scalars (the leaves are gathered again in the backward) and takes the backward by hand
    (about 30 ops instead of autograd's 100), with the gradient of each depth tangent to the sphere:
    :math:`\partial\delta/\partial u = \kappa\,(v - \cos\theta\,u)`, :math:`\kappa = \rho/(4 s (1 - y^2))`,
    where :math:`v - \cos\theta\,u` is evaluated as :math:`(v - u) + 2\sin^2(\theta/2)\,u` for θ ≤ 90° and
    :math:`(v + u) - 2\cos^2(\theta/2)\,u` beyond: no cancellation for near-identical or near-antipodal leaves, and
    no radial part for a normalisation's backward to remove with rounding (normalised rows get it divided by their
    norm, the exact derivative of :math:`x/\|x\|` for a tangent gradient).
    """

    @staticmethod
    def forward(ctx, leaves, a, b, w, r, temperature, normalize, dtype):
        u, v, norm_u, norm_v = _gather(leaves, a, b, normalize, dtype)
        cos2, sin2 = _sq(u + v) / 4, _sq(v - u) / 4
        rho, one_minus_rho, drho = _rho(r)
        depth, sqrt_cos2, y, one_minus_y = _depth(cos2, sin2, rho, one_minus_rho)
        prob = torch.softmax(depth.view(3, -1) / temperature, dim=0)
        w = (cos2 if w is None else w).view(3, -1)
        ctx.save_for_backward(leaves, a, b, cos2, sin2, sqrt_cos2, y, one_minus_y, prob, w)
        ctx.rho, ctx.drho, ctx.temperature, ctx.normalize, ctx.dtype = rho, drho, temperature, normalize, dtype
        return (w * (1 - prob)).sum(0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        leaves, a, b, cos2, sin2, sqrt_cos2, y, one_minus_y, prob, w = ctx.saved_tensors
        grad_w = (grad * (1 - prob)).flatten() if ctx.needs_input_grad[3] else None
        grad_depth = (prob * ((prob * w).sum(0) - w) * (grad / ctx.temperature)).flatten()  # dL/dδ
        one_minus_y2 = one_minus_y * (1 + y)
        grad_r = (grad_depth * sqrt_cos2 / one_minus_y2).sum() * ctx.drho if ctx.needs_input_grad[4] else None
        grad_leaves = None
        if ctx.needs_input_grad[0]:
            u, v, norm_u, norm_v = _gather(leaves, a, b, ctx.normalize, ctx.dtype)
            # κ(v − cos θ u) = κ(v ∓ u) + κβ u with β = 2 sin²(θ/2) (near: θ <= 90°) or −2 cos²(θ/2) (far); the
            # gradient of v is then κ(β + 2·far)(u + v) − grad_u (the same terms, no cancellation either).
            near = cos2 >= sin2
            kappa = grad_depth * ctx.rho / (4 * sqrt_cos2.clamp_min(_MIN_COS) * one_minus_y2)
            beta = torch.where(near, 2 * sin2, -2 * cos2)
            total = u + v
            grad_u = torch.where(near.unsqueeze(1), v - u, total).mul_(kappa.unsqueeze(1))
            grad_u.addcmul_((kappa * beta).unsqueeze(1), u)
            grad_v = torch.addcmul(-grad_u, (kappa * (beta + 2 * ~near)).unsqueeze(1), total)
            if ctx.normalize:
                grad_u, grad_v = grad_u / norm_u, grad_v / norm_v
            grad_leaves = torch.zeros_like(leaves)
            grad_leaves.index_add_(0, a, grad_u.to(leaves.dtype)).index_add_(0, b, grad_v.to(leaves.dtype))
        return grad_leaves, None, None, grad_w, grad_r, None, None, None


class _FusedRelaxedDasgupta(torch.autograd.Function):
    r""":class:`_RelaxedDasgupta` by the Triton kernels of :mod:`pml_hyperbolic.backends.triton_dasgupta`, on the
    proxies x themselves: leaf l is :math:`\operatorname{normalize}(\sum_{g<G} x_{lG+g})` (G = ``group``), the
    similarities are ``w`` (3T,), or the class directions of the rows ``directions`` (``directions_group`` per
    class; leaf l of class l // ``leaves_per_class``, as constants), or the pairs' own (1 + cos)/2 (both None)."""

    @staticmethod
    def forward(ctx, x, triplets, w, r, directions, temperature, group, directions_group, leaves_per_class):
        from ..backends import triton_dasgupta

        losses, saved = triton_dasgupta.relaxed_dasgupta_forward(
            x, triplets, r, temperature, True, group, w, directions, directions_group, leaves_per_class
        )
        learned = isinstance(r, torch.Tensor)
        ctx.save_for_backward(x, triplets, saved, *([r] if learned else []))
        ctx.r, ctx.learned, ctx.temperature, ctx.group = None if learned else r, learned, temperature, group
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        from ..backends import triton_dasgupta

        x, triplets, saved, *r = ctx.saved_tensors
        needs_x, needs_w, needs_r = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        grad_x, grad_w, grad_r = triton_dasgupta.relaxed_dasgupta_backward(
            x, triplets, saved, r[0] if ctx.learned else ctx.r, ctx.temperature, True, ctx.group, grad, needs_x,
            needs_w, needs_r,
        )
        return grad_x, None, grad_w, grad_r, None, None, None, None, None


def _gather(leaves, a, b, normalize, dtype):
    """(u, v, ‖leaves[a]‖, ‖leaves[b]‖): the rows a and b in ``dtype``, normalised with ``normalize``."""
    u, v = leaves.index_select(0, a).to(dtype), leaves.index_select(0, b).to(dtype)
    if not normalize:
        return u, v, None, None
    norm_u = torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp_min(_MIN_NORM)
    norm_v = torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(_MIN_NORM)
    return u / norm_u, v / norm_v, norm_u, norm_v


def _sq(x):
    """Squared norms of the rows."""
    return torch.linalg.vecdot(x, x)


def _rho(r):
    """(ρ, 1 − ρ, dρ/dr) for leaves at radius r of the unit ball: ρ = 2r/(1 + r²) = tanh(d(o, leaf))."""
    r2 = r * r
    return 2 * r / (1 + r2), (1 - r) ** 2 / (1 + r2), 2 * (1 - r2) / (1 + r2) ** 2


def _depth(cos2, sin2, rho, one_minus_rho):
    """(δ, s, y, 1 − y): δ = artanh(y), y = ρ s, s = sqrt(cos²(θ/2)), as (log1p(y) − log(1 − y))/2 with
    1 − y = (1 − ρ) + ρ sin²(θ/2)/(1 + s)."""
    s = cos2.sqrt()
    y = rho * s
    one_minus_y = one_minus_rho + rho * sin2 / (1 + s)
    return (torch.log1p(y) - torch.log(one_minus_y)) / 2, s, y, one_minus_y
