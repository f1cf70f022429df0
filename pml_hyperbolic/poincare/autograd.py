"""The autograd Functions behind :mod:`pml_hyperbolic.poincare`: hand-written backwards (one formula instead of
autograd through a dozen ops), each with its kernels (C on the CPU, Triton on CUDA, :mod:`pml_hyperbolic.backends`)
and a torch twin that the tests hold them to."""

import contextlib
import math

import torch

from .. import backends
from ..backends import native

# Relative distance to the boundary kept by `project`, per dtype. float32 and float64 can go very close because the
# distance is computed without cancellation; half types keep a margin that survives rounding to their mantissa.
_BOUNDARY_EPS = {torch.float64: 1e-5, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# `cdist` recomputes ||x - y||^2 from exact differences for the pairs where the matrix product may have cancelled:
# ||x-y||^2 <= kappa * (||x||^2 + ||y||^2). The GEMM error is a few ulps of ||x||^2 + ||y||^2, so kappa bounds the
# relative error of A on the remaining pairs by ~ulp / kappa (float32: about 1e-6 relative error in d).
_CANCELLATION_KAPPA = {torch.float64: 1e-6, torch.float32: 0.1}
# Gathered exact differences are processed in chunks of at most this many elements (bounded extra memory).
_CHUNK_ELEMENTS = 1 << 22


def _as_c(c, like):
    """The curvature as a tensor on ``like``'s device and dtype (keeps the autograd graph of a tensor ``c``)."""
    if isinstance(c, torch.Tensor):
        return c.to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(c), device=like.device, dtype=like.dtype)


def _work_dtype(dtype):
    """Internal dtype: float64 stays, everything else (float32, float16, bfloat16) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def _full_precision(device):
    """Autocast off and IEEE float32 matrix products: the hyperbolic math needs true float32 products."""
    with torch.autocast(device_type=device.type, enabled=False), backends.ieee_matmul(device.type):
        yield


def _tangent_norm_scale(u, sqrt_c, clip_r, rho_max, dim):
    """(n, t, s) of :func:`tangent_to_ball`: the row norms n = ||u|| (at least the dtype's tiny),
    t = tanh(sqrt(c) min(n, r)) and the row scale s = min(t, rho_max) / (sqrt(c) n)."""
    n = u.norm(dim=dim, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    t = torch.tanh(sqrt_c * (n if clip_r is None else n.clamp(max=clip_r)))
    return n, t, t.clamp(max=rho_max) / (sqrt_c * n)


def _tangent_scale(u, sqrt_c, clip_r, rho_max, dim):
    """(s, slope) of :func:`tangent_to_ball` for a float sqrt(c): the row scale s(n), n = ||u||, and s'(n) / n."""
    n, t, s = _tangent_norm_scale(u, sqrt_c, clip_r, rho_max, dim)
    z = sqrt_c * n
    # s'(n) / n = c (1 - t^2 - s) / z^2 where rho = tanh(sqrt(c) n) (no clipping or boundary clamp), else -s / n^2;
    # for small z the difference cancels: its series is c (-2/3 + 8 z^2 / 15).
    free = t < rho_max if clip_r is None else (t < rho_max) & (n < clip_r)
    small = z < 1e-2
    moving = torch.where(small, (8 / 15) * z.square() - 2 / 3, (1 - t.square() - s) / torch.where(small, 1, z.square()))
    slope = torch.where(free, sqrt_c**2 * moving, -s / n.square())
    return s, slope


class _TangentToBall(torch.autograd.Function):
    """:func:`tangent_to_ball` for a constant curvature: the C kernel on CPU float32 2-D input (``csrc/tangent_map.c``),
    the Triton kernel on CUDA (``backends/triton_rows.py``), else torch ops; the backward is the formula of
    :func:`_tangent_scale`, in torch ops when a graph of it is needed."""

    @staticmethod
    def forward(ctx, u, sqrt_c, clip_r, rho_max, dim):
        ctx.save_for_backward(u)
        ctx.args = (sqrt_c, clip_r, rho_max, dim)
        ctx.kind = backends.select(u) if u.ndim == 2 and dim in (-1, 1) else "torch"
        if ctx.kind != "torch":
            return backends.row_kernels(ctx.kind).tangent_to_ball_forward(u, sqrt_c, clip_r, rho_max)
        return u * _tangent_norm_scale(u, sqrt_c, clip_r, rho_max, dim)[2]

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        if ctx.kind != "torch" and not torch.is_grad_enabled():  # grad mode here: a graph of the backward is built
            grad_u = backends.row_kernels(ctx.kind).tangent_to_ball_backward(u, grad, *ctx.args[:3])
            return grad_u, None, None, None, None
        s, slope = _tangent_scale(u, *ctx.args)
        return grad * s + u * (slope * (grad * u).sum(ctx.args[3], keepdim=True)), None, None, None, None


def _exact_sq_dists(x, y, rows, cols):
    """||x[rows] - y[cols]||^2 from exact differences, in chunks of bounded size."""
    out = torch.empty(rows.numel(), dtype=x.dtype, device=x.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, x.shape[1]))
    for s in range(0, rows.numel(), step):
        out[s : s + step] = (x[rows[s : s + step]] - y[cols[s : s + step]]).pow(2).sum(1)
    return out


def _exact_pair_grads(x, y, rows, cols, wx, wy, grad_x, grad_y):
    """grad_x[rows] += wx (x[rows] - y[cols]);  grad_y[cols] -= wy (x[rows] - y[cols])  (chunked)."""
    step = max(1, _CHUNK_ELEMENTS // max(1, x.shape[1]))
    for s in range(0, rows.numel(), step):
        r, k = rows[s : s + step], cols[s : s + step]
        diff = x[r] - y[k]
        grad_x.index_add_(0, r, wx[s : s + step, None] * diff)
        grad_y.index_add_(0, k, wy[s : s + step, None] * diff, alpha=-1)


class _PoincareCdist(torch.autograd.Function):
    r"""N×M Poincaré distances from one matrix product, with a hand-written backward of three matrix products.

    Inputs are in the working dtype (float32 or float64): ``u``/``v`` are the squared norms and ``a``/``b`` the
    inverse conformal terms 1/alpha, 1/beta (computed in float64 by the caller).

    Forward: ``Z_ij = c a_i A_ij = c a_i (u_i + v_j - 2 x_i.y_j)`` is one GEMM plus a rank-1 update, then
    ``q = b_j Z_ij = c A / (alpha beta)``. Where ``A_ij <= kappa (u_i + v_j)`` the product may have cancelled
    (close pairs): those pairs are recomputed from exact differences. The distance uses
    ``asinh(s) = log1p(2 s (s + r)) / 2`` (s = sqrt(q), r = sqrt(1 + q)), so the only extra N×M buffer is
    ``w = sqrt(2) s r``, which is all the backward needs.

    Backward: with ``K = G b_j / (s r)`` every row and column sum of the gradient comes out of ``K @ y``,
    ``K @ [1, v]``, ``K^T @ (a x)`` and ``[a, a u]^T @ K``; the recomputed pairs take an exact-difference path. ``K``
    is computed in ``w``'s buffer (``w`` is recomputed from ``d`` if a retained graph is backpropagated again).
    """

    @staticmethod
    def forward(ctx, x, y, c, u, v, a, b):
        ca = c * a
        z = torch.addmm((ca * u).unsqueeze(1), x * (-2 * ca).unsqueeze(1), y.t())
        z.addr_(ca, v)  # z = c a_i (u_i + v_j - 2 x_i.y_j)
        # per pair: the product's rounding error is a few ulps of u_i + v_j (see backends.triton_cdist)
        kappa = _CANCELLATION_KAPPA[x.dtype]
        threshold = torch.addr((ca * (kappa * u + torch.finfo(x.dtype).tiny ** 0.5)).unsqueeze(1).expand_as(z),
                               ca, v, alpha=kappa)
        rows, cols = (z <= threshold).nonzero(as_tuple=True)
        del threshold
        q2 = z.mul_((2 * b).unsqueeze(0))  # 2q = 2c A / (alpha beta), in place
        q_exact = None
        if rows.numel():
            q_exact = _exact_sq_dists(x, y, rows, cols).mul_(ca[rows] * b[cols])
            q2[rows, cols] = 2 * q_exact
        w = torch.addcmul(q2, q2, q2, value=0.5).sqrt_()  # sqrt(2q + 2q^2) = sqrt(2) s r
        d = q2.add_(w, alpha=math.sqrt(2)).log1p_().mul_(1 / c.sqrt())  # log1p(2q + 2sr)/sqrt(c), in place
        ctx.w = w
        ctx.save_for_backward(x, y, c, u, v, a, b, rows, cols, q_exact, d)
        return d

    @staticmethod
    def backward(ctx, grad):
        x, y, c, u, v, a, b, rows, cols, q_exact, d = ctx.saved_tensors
        need_x, need_y, need_c = ctx.needs_input_grad[:3]
        if not (need_x or need_y or need_c):
            return (None,) * 7
        with _full_precision(x.device):
            w, ctx.w = ctx.w, None
            if w is None:  # second backward through a retained graph: sqrt(2) s r = sinh(sqrt(c) d) / sqrt(2)
                w = torch.sinh(c.sqrt() * d).div_(math.sqrt(2))
            # dd/dq = 1 / (sqrt(c) s r);  K = G b_j / (sqrt(2) s r); the sqrt(2) is folded into the weights below
            K = torch.div(grad.to(x.dtype), w, out=w).mul_(b.unsqueeze(0))
            exact = rows.numel() > 0
            if exact:
                k_exact = K[rows, cols]
                k_exact = torch.where(q_exact > 0, k_exact, torch.zeros_like(k_exact))  # d(x, x): zero gradient
                K[rows, cols] = 0  # these pairs take the exact-difference path
                p_exact = k_exact * q_exact / b[cols]  # P / sqrt(2) of the recomputed pairs
            # sum_j K_ij y_j, sum_j K_ij, sum_j K_ij v_j, sum_i K_ij a_i x_i, sum_i K_ij a_i, sum_i K_ij a_i u_i
            Sy = K @ y
            Sb, Sbv = (K @ torch.stack([torch.ones_like(v), v], 1)).unbind(1)
            Tx = K.t() @ (x * a.unsqueeze(1))
            Ta, Tau = (torch.stack([a, a * u]) @ K).unbind(0)
            del K, w
            # Row / column sums of P_ij / sqrt(2) = (G_ij / (sqrt(2) s r)) q_ij = K_ij c a_i (u_i + v_j - 2 x_i.y_j)
            rowP = c * a * (u * Sb + Sbv - 2 * torch.linalg.vecdot(x, Sy))
            colP = c * (v * Ta + Tau - 2 * torch.linalg.vecdot(y, Tx))
            if exact:
                rowP = rowP.index_add(0, rows, p_exact)
                colP = colP.index_add(0, cols, p_exact)
            # dL/dx_i = 2 sqrt(c) a_i [ sum_j K_ij (x_i - y_j) + x_i sum_j P_ij ]   (K with the b_j factor)
            # dL/dy_j = 2 sqrt(c) [ sum_i K_ij a_i (y_j - x_i) + b_j y_j sum_i P_ij ]
            scale = 2 * math.sqrt(2) * c.sqrt()
            wx = scale * a
            grad_x = torch.addcmul(Sy.mul(-wx.unsqueeze(1)), x, ((Sb + rowP) * wx).unsqueeze(1))
            grad_y = Tx.mul_(-scale).addcmul_(y, ((Ta + b * colP) * scale).unsqueeze(1))
            if exact:
                _exact_pair_grads(x, y, rows, cols, wx[rows] * k_exact, scale * a[rows] * k_exact, grad_x, grad_y)
            grad_c = None
            if need_c:
                # dd/dc = -d / (2c) + (s / (sqrt(c) r)) (1/c) (a_i + b_j - 1);  rowP, colP hold sums of P / sqrt(2)
                grad_c = math.sqrt(2) * (torch.dot(a, rowP) + torch.dot(b, colP) - rowP.sum()) / (c * c.sqrt())
                grad_c = grad_c - torch.vdot(grad.flatten().to(x.dtype), d.flatten()) / (2 * c)
            return grad_x if need_x else None, grad_y if need_y else None, grad_c, None, None, None, None


class _NativeCdist(torch.autograd.Function):
    r""":class:`_PoincareCdist` for float32 CPU inputs and a constant curvature, with the element-wise passes in C
    (``csrc/poincare_cdist.c``: norms, close-pair recomputation and :math:`\operatorname{asinh}` in double and float),
    around one matrix product forward and two backward. The backward overwrites the saved q with its weights (a second
    backward through a retained graph recomputes q from d)."""

    @staticmethod
    def forward(ctx, x, y, c):
        need_grad = any(ctx.needs_input_grad[:2])
        d, q, a, b, n_exact = native.cdist_forward(x, y, c, _CANCELLATION_KAPPA[torch.float32], need_grad)
        if need_grad:
            ctx.pairs = native.cdist_flagged(q, n_exact) if n_exact else None  # recomputed from exact differences
            ctx.save_for_backward(x, y, q, a, b, d)
            ctx.c, ctx.q_spent = c, False
        return d

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, y, q, a, b, d = ctx.saved_tensors
        if ctx.q_spent:  # q = sinh(sqrt(c) d / 2)^2, flagged pairs negated
            q = torch.sinh(d * (math.sqrt(ctx.c) / 2)).square_()
            if ctx.pairs is not None:
                q[ctx.pairs] *= -1
        ctx.q_spent = True
        with backends.ieee_matmul("cpu"):
            return _NativeCdist._grads(ctx, x, y, q, a, b, grad)

    @staticmethod
    def _grads(ctx, x, y, q, a, b, grad):
        K, row_k, row_eq, col_ka, col_eq = native.cdist_backward(grad, q, a, b, ctx.c)
        if ctx.pairs is not None:  # close pairs: K_ij (x_i - y_j) from exact differences, not from the products
            rows, cols = ctx.pairs
            k_exact = K[rows, cols]
            K[rows, cols] = 0
        wx = 2 * ctx.c * a
        grad_x = torch.addmm(x * (row_k + row_eq).unsqueeze(1), K, y, alpha=-1).mul_(wx.unsqueeze(1))
        grad_y = torch.addmm(y * col_ka.addcmul_(b, col_eq).unsqueeze(1), K.t(), x * a.unsqueeze(1), alpha=-1)
        grad_y.mul_(2 * ctx.c)
        if ctx.pairs is not None:
            native.cdist_pair_grads(x, y, rows, cols, wx[rows] * k_exact, grad_x, grad_y)
        return grad_x, grad_y, None


def _sq_norms(x, c64):
    """Row-wise ||x||^2, as float64: summed in x's dtype, and again in float64 for the rows near the boundary
    (c ||x||^2 > 0.9), where 1 - c ||x||^2 amplifies the rounding error more than tenfold."""
    u = torch.linalg.vecdot(x, x).to(torch.float64)
    near = (c64 * u > 0.9).nonzero().squeeze(1)
    if near.numel():
        u[near] = torch.linalg.vector_norm(x[near], dim=1, dtype=torch.float64).square()
    return u


class _NativePdist(torch.autograd.Function):
    """:func:`~pml_hyperbolic.poincare.pdist` of float32 CPU rows in the C kernel (``csrc/poincare_pdist.c``: exact
    differences, exactly symmetric, zero diagonal)."""

    @staticmethod
    def forward(ctx, x, c):
        ctx.save_for_backward(x)
        ctx.c = c
        return native.pdist_forward(x, c)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return native.pdist_backward(x, ctx.c, grad), None


class _RiemannianGradient(torch.autograd.Function):
    """Identity forward; the backward scales the gradient by (1 - c||x||^2)^2 / 4."""

    @staticmethod
    def forward(ctx, x, c):
        ctx.save_for_backward((1 - c.detach() * x.detach().pow(2).sum(-1, keepdim=True)).pow(2) / 4)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


