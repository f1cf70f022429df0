"""The Triton kernels of HypHC's relaxed Dasgupta loss (backends/triton_dasgupta.py) against the torch path they
replace: the regularizer's torch Function, and the whole regularizer with ``backends.use("torch")``, on injected
triplets; values and gradients into the proxies, the similarities and the learned radius, with identical and
antipodal leaves among them, D not a multiple of the block, and no triplets at all. On CPU in Triton's interpreter
(``TRITON_INTERPRET=1``, set by conftest without CUDA) and on CUDA when present."""

import pytest
import torch
import torch.nn.functional as F

from pml_hyperbolic import backends
from pml_hyperbolic.regularizers import HypHCProxyRegularizer
from pml_hyperbolic.regularizers.hyphc_proxy_regularizer import _RelaxedDasgupta
from pml_hyperbolic.utils.profiling import count_ops

triton_dasgupta = pytest.importorskip("pml_hyperbolic.backends.triton_dasgupta")

TAU = 0.1


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if request.param == "cpu" and not backends.triton_interpreted():
        pytest.skip("the Triton kernels run on CPU tensors only in Triton's interpreter (TRITON_INTERPRET=1)")
    return torch.device(request.param)


def rows_with_ties(n, d, seed):
    """n float32 rows, among them identical (0, 1), antipodal (0, 2), nearly antipodal (3, 4: π − 1e-3, another
    norm) and nearly identical (3, 5: 1e-4) directions. (Rows antipodal only after normalisation, like x and −3x,
    are a cone point of the depth: their gradient's direction is rounding noise on every path.)"""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[1], x[2] = x[0], -x[0]
    scale = x[3].norm()
    x[4] = -2 * x[3] + 2e-3 * scale * F.normalize(torch.randn(d, generator=g), dim=0)
    x[5] = x[3] + 1e-4 * scale * F.normalize(torch.randn(d, generator=g), dim=0)
    return x


def distinct_triplets(n, t, seed):
    """(3, t) leaf indices, three distinct leaves each, every leaf 0..4 (the ties) in many of them."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[:3] for _ in range(t)], 1)


def assert_close_to(got, ref, rtol=1e-5):
    """|got − ref| <= rtol · max|ref| elementwise (gradients: the scale of the largest entry)."""
    assert got.shape == ref.shape and bool(torch.isfinite(got).all())
    assert float((got - ref).abs().max()) <= rtol * float(ref.abs().max())


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("weights, radius", [("given", "learned"), ("own", 0.99)])
def test_kernels_match_the_torch_function(device, normalize, weights, radius):
    """relaxed_dasgupta_forward / _backward against _RelaxedDasgupta on the same leaves (unit rows, or rows
    normalised in the kernel), D = 45 (not a multiple of the block), incoming gradients of any sign."""
    n, d, t = 9, 45, 50
    x = rows_with_ties(n, d, seed=0)
    if not normalize:
        x = F.normalize(x, dim=1)
    x = x.to(device).requires_grad_(True)
    triplets = distinct_triplets(n, t, seed=1).to(device)
    g = torch.Generator().manual_seed(2)
    w = torch.rand(3 * t, generator=g).to(device).requires_grad_(True) if weights == "given" else None
    r = torch.tensor(0.7, device=device, requires_grad=True) if radius == "learned" else radius
    grad = torch.randn(t, generator=g).to(device)

    i, j, k = triplets
    ref = _RelaxedDasgupta.apply(x, torch.cat([i, i, j]), torch.cat([j, k, k]), w, r, TAU, normalize, torch.float32)
    wanted = [v for v in (x, w, r) if isinstance(v, torch.Tensor)]
    ref_grads = dict(zip(map(id, wanted), torch.autograd.grad(ref, wanted, grad)))

    r_in = r.detach() if isinstance(r, torch.Tensor) else r
    w_in = None if w is None else w.detach()
    losses, saved = triton_dasgupta.relaxed_dasgupta_forward(x.detach(), triplets, r_in, TAU, normalize, weights=w_in)
    grad_x, grad_w, grad_r = triton_dasgupta.relaxed_dasgupta_backward(
        x.detach(), triplets, saved, r_in, TAU, normalize, 1, grad, needs_x=True, needs_w=w is not None,
        needs_r=isinstance(r, torch.Tensor),
    )
    torch.testing.assert_close(losses, ref.detach(), rtol=1e-5, atol=1e-6)
    assert_close_to(grad_x, ref_grads[id(x)])
    if w is not None:
        assert_close_to(grad_w, ref_grads[id(w)])
        torch.testing.assert_close(saved[9:].flatten(), w_in)
    if isinstance(r, torch.Tensor):
        assert_close_to(grad_r, ref_grads[id(r)])


CONFIGS = [
    dict(similarity="euclidean"),  # CHEST's: class directions of both proxy sets formed in the kernel
    dict(similarity="hyperbolic", leaf_radius="learned"),  # the leaves' own similarities
    dict(leaves="proxies", similarity="hyperbolic"),  # the proxies' class directions as similarities
    dict(leaves="proxies", similarity="labels", leaf_radius="learned"),  # similarities per pair from torch
    dict(similarity="hyperbolic", detach_similarity=False),  # ... with a gradient through them
    dict(similarity="euclidean", detach_similarity=False, leaf_radius="learned"),
]


def run(reg, proxies, euclidean, kind):
    """(losses, gradients of Σ c_t ℓ_t into the proxies, the Euclidean proxies and the radius, the excess stat) on
    the backend ``kind``."""
    x = proxies.clone().requires_grad_(True)
    e = euclidean.clone().requires_grad_(True)
    reg.zero_grad()
    with backends.use(kind):
        losses = reg.compute_loss(x, euclidean_proxies=e.t())["loss"]["losses"]
    coefficients = torch.linspace(-1, 2, len(losses), device=x.device)
    (losses * coefficients).sum().backward()
    radius = reg.radius.grad if hasattr(reg, "radius") else None
    return losses.detach(), x.grad, e.grad, radius, reg.excess


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_regularizer_on_the_triton_path_matches_the_torch_path(device, kwargs):
    """Injected triplets over classes with identical and antipodal class directions; the Euclidean proxies column
    major (pml's ``SoftTripleLoss.fc.t()``), 2 per class; D = 45."""
    num_classes, k = 8, 3
    classes = rows_with_ties(num_classes, 45, seed=3)
    g = torch.Generator().manual_seed(4)
    proxies = (classes.repeat_interleave(k, 0) + 0.3 * torch.randn(num_classes * k, 45, generator=g))
    proxies = proxies.view(num_classes, k, 45)
    proxies[1], proxies[2] = proxies[0], -proxies[0]  # class 1 = class 0, class 2 antipodal
    proxies = proxies.reshape(num_classes * k, 45).to(device)
    euclidean = torch.randn(7, num_classes * 2, generator=g).to(device)  # (D_E, C·K_E), as pml's fc
    n = num_classes if kwargs.get("leaves", "classes") == "classes" else num_classes * k
    triplets = distinct_triplets(n, 60, seed=5)
    out = {}
    for kind in ("torch", "triton"):
        reg = HypHCProxyRegularizer(num_classes, k, temperature=TAU, collect_stats=True, **kwargs).to(device)
        reg.sample_triplets = lambda num_leaves, labels, dev: triplets.to(dev)
        out[kind] = run(reg, proxies, euclidean, kind)
    (losses, grad_x, grad_e, grad_r, excess), ref = out["triton"], out["torch"]
    torch.testing.assert_close(losses, ref[0], rtol=1e-5, atol=1e-6)
    assert_close_to(grad_x, ref[1])
    if kwargs.get("detach_similarity", True) or kwargs["similarity"] != "euclidean":
        assert grad_e is None and ref[2] is None
    else:
        assert_close_to(grad_e, ref[2])
    if grad_r is not None:
        assert_close_to(grad_r, ref[3])
    assert abs(excess - ref[4]) <= 1e-5


def test_no_triplets(device):
    """T = 0: no loss elements, zero gradients, no launch."""
    empty = torch.zeros(3, 0, dtype=torch.int64, device=device)
    x = torch.randn(12, 5, device=device)
    losses, saved = triton_dasgupta.relaxed_dasgupta_forward(x, empty, 0.5, TAU, True, group=2)
    assert losses.shape == (0,) and saved.shape == (12, 0)
    assert count_ops(lambda: triton_dasgupta.relaxed_dasgupta_forward(x, empty, 0.5, TAU, True, group=2))[3] == 0
    grad_x, grad_w, grad_r = triton_dasgupta.relaxed_dasgupta_backward(
        x, empty, saved, torch.tensor(0.5, device=device), TAU, True, 2, losses, needs_w=True, needs_r=True
    )
    assert not grad_x.any() and grad_w.shape == (0,) and float(grad_r) == 0
    reg = HypHCProxyRegularizer(6, 2, leaf_radius="learned").to(device)
    reg.sample_triplets = lambda num_leaves, labels, dev: empty
    proxies = x.requires_grad_(True)
    with backends.use("triton"):
        out = reg.compute_loss(proxies)["loss"]["losses"]
        assert out.shape == (0,)
        out.sum().backward()
    assert not proxies.grad.any() and float(reg.radius.grad) == 0


def test_a_step_on_the_triton_path_is_two_launches_and_no_sync(device):
    """CHEST's configuration (Euclidean similarities, batch sampling): one forward and one backward launch, no
    syncing op, and about 80 aten ops for the sampling, the reducer and the buffers (about 380 on the torch path)."""
    reg = HypHCProxyRegularizer(12, 2, similarity="euclidean", sampling="batch", triplets_per_anchor=2, generator=0)
    reg = reg.to(device)
    x = torch.randn(24, 16, device=device, requires_grad=True)
    euclidean, labels = torch.randn(24, 8, device=device), torch.arange(12, device=device)

    def step():
        reg(x, labels, euclidean).backward()

    with backends.use("triton"):
        step()
        ops, syncs, which, launches = count_ops(step)
    assert syncs == 0, which
    assert launches == 2 and ops <= 100, (launches, ops)
