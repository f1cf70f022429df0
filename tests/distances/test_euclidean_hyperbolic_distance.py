import math

import pytest
import torch

from pml_hyperbolic.distances import EuclideanHyperbolicDistance
from pml_hyperbolic.layers import EuclideanHyperbolicHead


def ref_dist64(x, y, c):
    A = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    t = 2 * c * A / ((1 - c * (x * x).sum(1))[:, None] * (1 - c * (y * y).sum(1))[None, :])
    return torch.log1p(t + torch.sqrt((t * (t + 2)).clamp_min(1e-300))) / math.sqrt(c)


@pytest.fixture(scope="module")
def emb():
    torch.manual_seed(0)
    return EuclideanHyperbolicHead(16, 6, 5)(torch.randn(20, 16)).detach()


def reference(emb, space, we=1.0, wh=1.0, c=0.1):
    x = emb.double()
    e = x[:, :6] / x[:, :6].norm(dim=1, keepdim=True)
    de = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")
    dh = ref_dist64(x[:, 6:], x[:, 6:], c)
    return {"euclidean": de, "hyperbolic": dh, "both": torch.sqrt(we * de**2 + wh * dh**2)}[space]


@pytest.mark.parametrize("space", ["euclidean", "hyperbolic", "both"])
def test_each_space_matches_reference(emb, space):
    d = EuclideanHyperbolicDistance(6, c=0.1, space=space, euclidean_weight=2.0, hyperbolic_weight=0.5)
    ref = reference(emb, space, 2.0, 0.5)
    assert torch.allclose(d(emb).double(), ref, atol=1e-4, rtol=1e-4)
    pairs = d.pairwise_distance(emb[:10], emb[10:]).double()
    assert torch.allclose(pairs, ref[:10, 10:].diagonal(), atol=1e-5, rtol=1e-5)


def test_euclidean_space_ranks_like_cosine(emb):
    d = EuclideanHyperbolicDistance(6, space="euclidean")(emb)
    e = torch.nn.functional.normalize(emb[:, :6], dim=1)
    cos = e @ e.t()
    assert torch.equal(d.argsort(1)[:, 1:], (-cos).argsort(1)[:, 1:])


@pytest.mark.parametrize("space", ["euclidean", "both"])
def test_gradients_are_finite_on_the_diagonal(emb, space):
    x = emb.clone().requires_grad_()
    EuclideanHyperbolicDistance(6, space=space)(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_close_pairs_keep_their_relative_accuracy():
    """Near-duplicate directions (chord 1e-4 .. 1e-1), where 2 - 2 cos cancels in float32: the matrix matches the
    float64 chord to 1e-4 relative, identical points are exactly 0, and the gradient matches float64's."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(8, 6, generator=g, dtype=torch.float64)
    scales = torch.logspace(-4, -1, 8, dtype=torch.float64)[:, None]
    near = base + scales * torch.randn(8, 6, generator=g, dtype=torch.float64) * base.norm(dim=1, keepdim=True)
    x = torch.cat([torch.cat([base, near]), torch.full((16, 2), 0.1, dtype=torch.float64)], dim=1)
    d = EuclideanHyperbolicDistance(6, space="euclidean")
    ref = reference(x, "euclidean")
    got = d(x.float())
    assert torch.equal(got.diagonal(), torch.zeros(16))
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-9)
    x32, x64 = x.float().requires_grad_(), x.clone().requires_grad_()
    weights = torch.rand(16, 16, generator=g, dtype=torch.float64)
    (d(x32) * weights.float()).sum().backward()
    e = torch.nn.functional.normalize(x64[:, :6], dim=1)
    diff = (e[:, None] - e[None]).pow(2).sum(-1)
    chord = torch.where(diff > 0, diff.clamp_min(1e-300).sqrt(), torch.zeros_like(diff))
    (chord * weights).sum().backward()
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-3, atol=1e-3)


def test_errors(emb):
    with pytest.raises(ValueError, match="space"):
        EuclideanHyperbolicDistance(6, space="mixed")
    with pytest.raises(ValueError, match="no ball part"):
        EuclideanHyperbolicDistance(11)(emb)
    bad = emb.clone()
    bad[0, 6:] = 10.0
    with pytest.raises(ValueError, match="inside the Poincaré ball"):
        EuclideanHyperbolicDistance(6, space="hyperbolic")(bad)


@pytest.mark.parametrize("space", ["euclidean", "hyperbolic", "both"])
def test_knn_func_returns_the_reference_neighbours(emb, space):
    """``knn_func()`` (faiss on the right slice, or CustomKNN for both spaces) ranks as the float64 reference."""
    knn = EuclideanHyperbolicDistance(6, c=0.1, space=space).knn_func()
    ref = reference(emb, space)
    distances, indices = knn(emb[:8], 5, emb, ref_includes_query=True)
    ref_d, ref_i = ref[:8].clone().fill_diagonal_(math.inf).sort(dim=1)
    assert torch.equal(indices.cpu(), ref_i[:, :5])
    if space != "euclidean":  # faiss's L2 search returns squared chord lengths for the Euclidean part
        assert torch.allclose(distances.double().cpu(), ref_d[:, :5], rtol=1e-4, atol=1e-5)
