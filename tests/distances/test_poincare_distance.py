"""PoincareDistance inside pml: every loss and miner that accepts a non-inverted distance gives the same result as
with an independent float64 reference distance (and, for a few, as the loss written out by hand)."""

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import BaseDistance
from pytorch_metric_learning.utils.inference import CustomKNN, MatchFinder

from pml_hyperbolic.distances import PoincareDistance
from pml_hyperbolic.layers import ToPoincare

C = 0.1


def ref_dist64(x, y, c=C):
    """float64 arcosh form from exact differences (independent of the package's asinh/GEMM kernel)."""
    x, y = x.double(), y.double()
    A = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    t = 2 * c * A / ((1 - c * (x * x).sum(1))[:, None] * (1 - c * (y * y).sum(1))[None, :])
    return torch.log1p(t + torch.sqrt((t * (t + 2)).clamp_min(1e-300))) / math.sqrt(c)


class RefPoincare(BaseDistance):
    """The reference distance wrapped as a pml distance (float64 internally, returned in the input dtype)."""

    def __init__(self):
        super().__init__(normalize_embeddings=False)

    def compute_mat(self, q, r):
        return ref_dist64(q, r).to(q.dtype)

    def pairwise_distance(self, q, r):
        return ref_dist64(q, r).diagonal().to(q.dtype)


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    emb = ToPoincare(c=C)(torch.randn(48, 16, generator=gen) * 2)
    labels = torch.randint(0, 6, (48,), generator=gen)
    return emb, labels


LOSSES = [
    lambda d: losses.TripletMarginLoss(margin=0.5, distance=d),
    lambda d: losses.ContrastiveLoss(pos_margin=0.2, neg_margin=3.0, distance=d),
    lambda d: losses.MultiSimilarityLoss(alpha=2, beta=10, base=2.0, distance=d),
    lambda d: losses.NTXentLoss(temperature=0.2, distance=d),
    lambda d: losses.SupConLoss(temperature=0.2, distance=d),
]
MINERS = [
    lambda d: miners.TripletMarginMiner(margin=0.5, type_of_triplets="semihard", distance=d),
    lambda d: miners.BatchHardMiner(distance=d),
    lambda d: miners.MultiSimilarityMiner(epsilon=0.5, distance=d),
    lambda d: miners.PairMarginMiner(pos_margin=2.0, neg_margin=4.0, distance=d),
]


@pytest.mark.parametrize("make_loss", LOSSES)
def test_pml_losses_match_reference_distance(make_loss, batch):
    emb, labels = batch
    e1 = emb.detach().clone().requires_grad_()
    e2 = emb.detach().double().clone().requires_grad_()
    ours = make_loss(PoincareDistance(c=C))(e1, labels)
    ref = make_loss(RefPoincare())(e2, labels)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(e1.grad.double(), e2.grad, rtol=1e-4, atol=1e-6)


def test_triplet_and_ntxent_by_hand(batch):
    emb, labels = batch
    D = ref_dist64(emb, emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    # TripletMarginLoss (all triplets, AvgNonZeroReducer): mean over triplets with positive loss
    viol = D[:, :, None] - D[:, None, :] + 0.5  # [a, p, n]
    valid = (same & ~eye)[:, :, None] & (~same)[:, None, :]
    trip = torch.relu(viol[valid])
    expected = trip[trip > 0].mean()
    got = losses.TripletMarginLoss(margin=0.5, distance=PoincareDistance(c=C))(emb, labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # NTXentLoss: for each positive pair (a, p): -log(exp(s_ap) / (exp(s_ap) + sum_n exp(s_an))), s = -d / tau
    s = -D / 0.2
    terms = []
    for a in range(len(labels)):
        neg = torch.logsumexp(s[a][~same[a]], 0)
        for p in torch.nonzero(same[a] & ~eye[a]).flatten():
            terms.append(-(s[a, p] - torch.logaddexp(s[a, p], neg)))
    got = losses.NTXentLoss(temperature=0.2, distance=PoincareDistance(c=C))(emb, labels)
    assert got.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


@pytest.mark.parametrize("make_miner", MINERS)
def test_pml_miners_match_reference_distance(make_miner, batch):
    emb, labels = batch
    ours = make_miner(PoincareDistance(c=C))(emb, labels)
    ref = make_miner(RefPoincare())(emb.double(), labels)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


def test_batch_hard_miner_by_hand(batch):
    emb, labels = batch
    D = ref_dist64(emb, emb)
    same = labels[:, None] == labels[None, :]
    a, p, n = miners.BatchHardMiner(distance=PoincareDistance(c=C))(emb, labels)
    pos = D.masked_fill(~same | torch.eye(len(labels), dtype=torch.bool), -1).argmax(1)
    neg = D.masked_fill(same, float("inf")).argmin(1)
    assert torch.equal(p, pos[a]) and torch.equal(n, neg[a])


def test_uniform_histogram_miner_bins_reference_distances(batch):
    emb, labels = batch
    torch.manual_seed(0)
    miner = miners.UniformHistogramMiner(num_bins=10, pos_per_bin=3, neg_per_bin=3, distance=PoincareDistance(c=C))
    a1, p, a2, n = miner(emb, labels)
    D = ref_dist64(emb, emb)
    assert (labels[a1] == labels[p]).all() and (labels[a2] != labels[n]).all() and (a1 != p).all()
    # every bin of the negative-pair distance histogram is sampled at most neg_per_bin times
    neg = D[labels[:, None] != labels[None, :]]
    edges = torch.linspace(neg.min().item(), neg.max().item(), 11, dtype=torch.float64)
    counts = np.histogram(D[a2, n].numpy(), bins=edges.numpy())[0]
    assert counts.max() <= 3 and len(n) > 0


def test_match_finder_and_custom_knn(batch):
    emb, _ = batch
    D = ref_dist64(emb, emb)
    mf = MatchFinder(distance=PoincareDistance(c=C), threshold=4.0)
    assert np.array_equal(mf.get_matching_pairs(emb), (D <= 4.0).numpy())
    assert np.array_equal(mf.is_match(emb[:10], emb[10:20]), (D[:10, 10:20].diagonal() <= 4.0).numpy())
    dist, idx = CustomKNN(PoincareDistance(c=C))(emb, 5, emb, ref_includes_query=True)
    expected = D.fill_diagonal_(float("inf")).topk(5, largest=False)
    assert torch.equal(idx, expected.indices)
    assert torch.allclose(dist.double(), expected.values, rtol=1e-5)


def test_float16_embeddings_and_power(batch):
    emb, labels = batch
    d16 = PoincareDistance(c=C)(emb.half())
    assert d16.dtype == torch.float32
    assert torch.allclose(d16.double(), ref_dist64(emb.half(), emb.half()), rtol=1e-5, atol=1e-6)
    d2 = PoincareDistance(c=C, power=2)(emb)
    assert torch.allclose(d2.double(), ref_dist64(emb, emb) ** 2, rtol=1e-4, atol=1e-6)


def test_normalize_is_the_projection_into_the_ball():
    d = PoincareDistance(c=C, normalize_embeddings=True)
    x = torch.randn(10, 4) * 10
    mat = d(x)  # projected, no error
    assert torch.isfinite(mat).all()
    w = torch.randn(4, 10) * 10
    assert (C * d.normalize(w, dim=0).pow(2).sum(0) < 1).all()  # honours dim, as NormalizedSoftmaxLoss uses it


def test_learnable_curvature_gets_gradients(batch):
    emb, labels = batch
    c = torch.nn.Parameter(torch.tensor(C))
    dist = PoincareDistance(c=c)
    assert any(p is c for p in dist.parameters())
    losses.ContrastiveLoss(distance=dist, neg_margin=3.0)(emb, labels).backward()
    assert c.grad is not None and torch.isfinite(c.grad)


def test_clear_errors():
    with pytest.raises(ValueError, match="curvature"):
        PoincareDistance(c=0)
    with pytest.raises(ValueError, match="curvature"):
        PoincareDistance(c=-1.0)
    with pytest.raises(ValueError, match="curvature"):
        PoincareDistance(c=torch.nn.Parameter(torch.tensor(-0.5)))(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="is_inverted"):
        PoincareDistance(is_inverted=True)
    d = PoincareDistance(c=C)
    with pytest.raises(ValueError, match="2-D"):
        d(torch.zeros(3))
    with pytest.raises(ValueError, match="same width"):
        d(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="inside the Poincaré ball"):
        d(torch.full((2, 3), 5.0))
    with pytest.raises(ValueError, match="NaN or inf"):
        d(torch.tensor([[0.1, float("nan")]]))
