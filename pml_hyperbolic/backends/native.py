"""The C kernels of ``csrc/`` (float32 on the CPU) as functions of torch tensors; :mod:`.build` compiles and loads
them. Each replaces a sequence of small torch ops that costs more in per-op overhead than in arithmetic at training
sizes, and each has a torch twin that the tests hold it to:

* ``tangent_map.c``: :func:`pml_hyperbolic.poincare.tangent_to_ball` (``ToPoincare``, the loss proxies) and its
  backward;
* ``poincare_cdist.c``: the element-wise passes of :func:`pml_hyperbolic.poincare.cdist` around torch's matrix
  products (norms, close-pair recomputation, asinh; the backward's weights and row/column sums);
* ``relaxed_similarity.c``: ``HyperbolicSoftTripleLoss``'s softmax over each class's proxies and its backward;
* ``hier_lca.c``: HIER's LCA selection (maxima, Gumbel noise, softmax, argmax, straight-through backward) per triplet;
* ``poincare_pdist.c``: the distance matrix of a few hundred points and its backward (:func:`pdist`);
* ``reciprocal_mining.c``: the mutual-nearest-neighbour triplets (:func:`reciprocal_triplets`).

``fastmath.h`` (vectorisable exp, log, asinh), ``lanes.h`` (fixed-order reductions), ``ball.h`` and ``parallel.h``
are shared by them. They run on all torch CPU threads where the work pays for it (the column sums of a backward are
then added per thread: the last bits may depend on the thread count, as torch's own reductions do).
"""

import ctypes

import torch

from .build import library

# pdist is used up to this many multiply-adds (R^2 D / 2); above it the matrix-product kernel is faster.
PDIST_MAX_WORK = 1 << 23
_I64, _F32 = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float)


def _ptr(t, kind):
    return ctypes.cast(t.data_ptr(), kind) if t is not None else None


def _check(code):
    if code != 0:
        raise MemoryError("A native kernel of pml_hyperbolic could not allocate its buffers.")


def lca_forward(scaled, i, j, k, noise, key, dist, margin):
    """(lca_pair, lca_triplet, losses, active) of each triplet: ``scaled`` (R×P float32, the block / tau), ``noise``
    (2×T×P uniforms) or None (then the stream of ``key``), ``dist`` the unscaled block (R×P float32, rows may be
    strided) for the hinges with ``margin``; ``active`` (3×T, 1 or 0) marks the hinges that count."""
    lib, p, t = library(), scaled.shape[1], len(i)
    if dist.stride(1) != 1:
        dist = dist.contiguous()
    lca1, lca2 = torch.empty(t, dtype=torch.int64), torch.empty(t, dtype=torch.int64)
    losses, active = torch.empty(t, dtype=torch.float32), torch.empty(3, t, dtype=torch.float32)
    _check(lib.hier_lca_forward(_ptr(scaled, _F32), p, _ptr(i, _I64), _ptr(j, _I64), _ptr(k, _I64), t,
                                _ptr(noise, _F32), key, _ptr(lca1, _I64), _ptr(lca2, _I64), _ptr(dist, _F32),
                                dist.stride(0), margin, _ptr(losses, _F32), _ptr(active, _F32),
                                torch.get_num_threads()))
    return lca1, lca2, losses, active


def lca_backward(scaled, i, j, k, noise, key, lca1, lca2, e):
    """dL/dD (R×P) for hinge weights ``e`` (3×T float32); the same arguments as :func:`lca_forward`."""
    lib, (r, p), t = library(), scaled.shape, len(i)
    grad = torch.zeros(r, p, dtype=torch.float32)
    _check(lib.hier_lca_backward(_ptr(scaled, _F32), r, p, _ptr(i, _I64), _ptr(j, _I64), _ptr(k, _I64), t,
                                 _ptr(noise, _F32), key, _ptr(lca1, _I64), _ptr(lca2, _I64), _ptr(e, _F32),
                                 _ptr(grad, _F32), torch.get_num_threads()))
    return grad


def use_pdist(x):
    """Whether :func:`pdist_forward` is the faster kernel for the R×D points ``x``: at most PDIST_MAX_WORK
    multiply-adds."""
    return x.shape[0] ** 2 * x.shape[1] / 2 <= PDIST_MAX_WORK


def pdist_forward(x, c):
    """The R×R Poincaré distances of the float32 CPU rows ``x`` by ``csrc/poincare_pdist.c``."""
    x = x.contiguous()
    out = torch.empty(len(x), len(x), dtype=torch.float32)
    _check(library().poincare_pdist_forward(_ptr(x, _F32), *x.shape, c, _ptr(out, _F32), torch.get_num_threads()))
    return out


def pdist_backward(x, c, grad):
    """dL/dx of :func:`pdist_forward` for ``grad`` = dL/d(out) (R×R)."""
    x, grad = x.contiguous(), grad.to(torch.float32).contiguous()
    grad_x = torch.empty_like(x)
    _check(library().poincare_pdist_backward(_ptr(x, _F32), *x.shape, c, _ptr(grad, _F32), _ptr(grad_x, _F32),
                                             torch.get_num_threads()))
    return grad_x


NON_FINITE_SIMILARITY = "The similarity matrix contains NaN or inf values: check the embeddings."


def reciprocal_triplets(sim, labels, topk, triplets_per_anchor, exclude_self_negative, uniforms):
    """(anchors, positives, negatives, valid) of ``ReciprocalTripletMiner``'s rule on the float32 CPU similarity ``sim``
    (n×n), ``labels`` (n,) or None, and ``uniforms`` (n×2×triplets_per_anchor float32 in [0, 1)): n·t slots, anchor i
    owning slots i·t ... i·t + t - 1, and ``valid`` (n float32, 1 or 0 per anchor); a ValueError if ``sim`` holds NaN
    or inf."""
    n, t = sim.shape[0], triplets_per_anchor
    sim, uniforms = sim.contiguous(), uniforms.contiguous()
    labels = None if labels is None else labels.to(torch.int64).contiguous()
    out = torch.empty(3, n * t, dtype=torch.int64)
    valid = torch.empty(n, dtype=torch.float32)
    found = library().reciprocal_triplets(_ptr(sim, _F32), n, _ptr(labels, _I64), topk, t, int(exclude_self_negative),
                                          _ptr(uniforms, _F32), *(_ptr(row, _I64) for row in out), _ptr(valid, _F32))
    if found == -2:
        raise ValueError(NON_FINITE_SIMILARITY)
    _check(found < 0)
    return out[0], out[1], out[2], valid


def cdist_forward(x, y, c, kappa, need_grad):
    """(d, q, a, b, n_exact) of ``csrc/poincare_cdist.c`` for float32 CPU ``x`` (N×D), ``y`` (M×D) and a float
    curvature ``c``: d (N×M float32), q (N×M float32, negated for the pairs recomputed from exact differences; None
    without ``need_grad``), a, b (the inverse conformal terms 1/alpha, 1/beta, from float64) and the number of
    recomputed pairs."""
    x, y = x.contiguous(), y.contiguous()
    n, m = x.shape[0], y.shape[0]
    d = x @ y.t()  # the products, overwritten by the distances
    q = torch.empty(n, m, dtype=torch.float32) if need_grad else None
    a, b = torch.empty(n, dtype=torch.float32), torch.empty(m, dtype=torch.float32)
    count = library().poincare_cdist_forward(_ptr(d, _F32), _ptr(x, _F32), _ptr(y, _F32), n, m, x.shape[1], c, kappa,
                                             _ptr(q, _F32), _ptr(a, _F32), _ptr(b, _F32), torch.get_num_threads())
    _check(count < 0)
    return d, q, a, b, count


def cdist_backward(grad, q, a, b, c):
    """(K, row_k, row_eq, col_ka, col_eq) of ``csrc/poincare_cdist.c`` for ``grad`` = dL/dd (N×M) and the forward's
    q, a, b; K is written over q."""
    grad = grad.to(torch.float32).contiguous()
    n, m = q.shape
    row_k, row_eq = torch.empty(n, dtype=torch.float32), torch.empty(n, dtype=torch.float32)
    col_ka, col_eq = torch.empty(m, dtype=torch.float32), torch.empty(m, dtype=torch.float32)
    _check(library().poincare_cdist_backward(_ptr(grad, _F32), _ptr(q, _F32), _ptr(a, _F32), _ptr(b, _F32), n, m, c,
                                             _ptr(row_k, _F32), _ptr(row_eq, _F32), _ptr(col_ka, _F32),
                                             _ptr(col_eq, _F32), torch.get_num_threads()))
    return q, row_k, row_eq, col_ka, col_eq


def cdist_flagged(q, count):
    """(rows, cols) of the pairs among the forward's ``count`` flagged ones with q < 0 (identical points, q = 0,
    need no gradient), in row-major order."""
    rows, cols = torch.empty(count, dtype=torch.int64), torch.empty(count, dtype=torch.int64)
    found = library().poincare_cdist_flagged(_ptr(q, _F32), q.shape[0], q.shape[1], _ptr(rows, _I64), _ptr(cols, _I64))
    return rows[:found], cols[:found]


def cdist_pair_grads(x, y, rows, cols, w, grad_x, grad_y):
    """In place: ``grad_x[rows] += w (x[rows] - y[cols])``, ``grad_y[cols] -= w (x[rows] - y[cols])`` for the pairs
    of :func:`cdist_flagged`, from exact differences (``csrc/poincare_cdist.c``); the targets are contiguous
    float32. Each target row is summed in pair order, whatever the thread count."""
    x, y, w = x.contiguous(), y.contiguous(), w.to(torch.float32).contiguous()
    _check(library().poincare_cdist_pair_grads(_ptr(x, _F32), _ptr(y, _F32), y.shape[0], x.shape[1],
                                               _ptr(rows, _I64), _ptr(cols, _I64), _ptr(w, _F32), rows.numel(),
                                               _ptr(grad_x, _F32), _ptr(grad_y, _F32), torch.get_num_threads()))


def relaxed_similarity_forward(m, sign, gamma):
    """(S, p) of ``csrc/relaxed_similarity.c`` for the float32 CPU block ``m`` (B×K×C)."""
    m = m.contiguous()
    s = torch.empty(m.shape[0], m.shape[2], dtype=torch.float32)
    p = torch.empty_like(m)
    _check(library().relaxed_similarity_forward(_ptr(m, _F32), *m.shape, sign, gamma, _ptr(s, _F32), _ptr(p, _F32),
                                                torch.get_num_threads()))
    return s, p


def relaxed_similarity_backward(m, s, p, sign, gamma, grad):
    """dL/dm (B×K×C) of ``csrc/relaxed_similarity.c`` for ``grad`` = dL/dS (B×C) and the forward's m, S, p."""
    grad = grad.to(torch.float32).contiguous()
    grad_m = torch.empty_like(m)
    _check(library().relaxed_similarity_backward(_ptr(m, _F32), *m.shape, sign, gamma, _ptr(s, _F32), _ptr(p, _F32),
                                                 _ptr(grad, _F32), _ptr(grad_m, _F32), torch.get_num_threads()))
    return grad_m


def tangent_to_ball_forward(u, sqrt_c, clip_r, rho_max):
    """``poincare.tangent_to_ball`` of the float32 CPU rows ``u`` (N×D) by ``csrc/tangent_map.c``."""
    u = u.contiguous()
    out = torch.empty_like(u)
    library().tangent_to_ball_forward(_ptr(u, _F32), *u.shape, sqrt_c, -1.0 if clip_r is None else clip_r, rho_max,
                                      _ptr(out, _F32))
    return out


def tangent_to_ball_backward(u, grad, sqrt_c, clip_r, rho_max):
    """dL/du of :func:`tangent_to_ball_forward` for ``grad`` = dL/dout."""
    u, grad = u.contiguous(), grad.to(torch.float32).contiguous()
    grad_u = torch.empty_like(u)
    library().tangent_to_ball_backward(_ptr(u, _F32), _ptr(grad, _F32), *u.shape, sqrt_c,
                                       -1.0 if clip_r is None else clip_r, rho_max, _ptr(grad_u, _F32))
    return grad_u
