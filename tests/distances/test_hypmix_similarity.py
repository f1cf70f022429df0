"""HypMixSimilarity against a plain reference, and NTXentLoss with it = the HypMix contrastive loss by hand."""

import math

import pytest
import torch
from pytorch_metric_learning import losses
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyperbolic.distances import HypMixSimilarity


def ref_dist64(x, y, c):
    A = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    t = 2 * c * A / ((1 - c * (x * x).sum(1))[:, None] * (1 - c * (y * y).sum(1))[None, :])
    return torch.log1p(t + torch.sqrt((t * (t + 2)).clamp_min(1e-300))) / math.sqrt(c)


def ref_similarity(x, y, c, tau_e, tau_h, lam):
    """One head: cos of the directions / tau_e - lam * d_c(exp0(x/|x|), exp0(y/|y|)) / tau_h, in float64."""
    x, y = x.double(), y.double()
    xe, ye = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    r = math.tanh(math.sqrt(c)) / math.sqrt(c)  # exp0 of a unit vector has norm tanh(sqrt c)/sqrt c
    return xe @ ye.t() / tau_e - lam * ref_dist64(r * xe, r * ye, c) / tau_h


def test_matrix_and_pairwise_match_reference():
    torch.manual_seed(0)
    x, y = torch.randn(12, 8), torch.randn(7, 8)
    sim = HypMixSimilarity(c=0.1, tau_e=0.05, tau_h=0.2, lam=3.0)
    assert sim.is_inverted
    expected = ref_similarity(x, y, 0.1, 0.05, 0.2, 3.0)
    assert torch.allclose(sim(x, y).double(), expected, rtol=1e-5, atol=1e-4)
    assert torch.allclose(sim.pairwise_distance(x[:7], y).double(), expected[:7].diagonal(), rtol=1e-5, atol=1e-4)


def test_two_head_layout_uses_each_part():
    torch.manual_seed(1)
    e, h = torch.randn(9, 4), torch.randn(9, 3) * 0.3
    emb = torch.cat([e, h], 1)
    sim = HypMixSimilarity(c=0.5, tau_e=0.1, tau_h=0.2, lam=0.5, euclidean_dim=4)
    en = e.double() / e.double().norm(dim=1, keepdim=True)
    expected = en @ en.t() / 0.1 - 0.5 * ref_dist64(h.double(), h.double(), 0.5) / 0.2
    assert torch.allclose(sim(emb).double(), expected, rtol=1e-5, atol=1e-4)


def test_ntxent_with_it_is_the_hypmix_loss():
    torch.manual_seed(2)
    x = torch.randn(16, 8, requires_grad=True)
    labels = torch.arange(8).repeat(2)
    c, tau_e, tau_h, lam = 0.1, 0.1, 0.2, 0.5
    loss = losses.NTXentLoss(temperature=1.0, distance=HypMixSimilarity(c, tau_e, tau_h, lam))(x, labels)
    s = ref_similarity(x.detach(), x.detach(), c, tau_e, tau_h, lam)
    terms = []
    for a in range(16):
        for p in range(16):
            if p != a and labels[p] == labels[a]:
                neg = s[a][labels != labels[a]]
                terms.append(-s[a, p] + torch.logsumexp(torch.cat([s[a, p : p + 1], neg]), 0))
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_ranking_in_custom_knn():
    torch.manual_seed(3)
    x = torch.randn(30, 6)
    sim = HypMixSimilarity()
    _, idx = CustomKNN(sim)(x, 3, x, ref_includes_query=True)
    s = ref_similarity(x, x, 0.1, 0.1, 0.2, 0.5).fill_diagonal_(-float("inf"))
    assert torch.equal(idx, s.topk(3).indices)


def test_errors():
    with pytest.raises(ValueError, match="tau_e"):
        HypMixSimilarity(tau_e=0)
    with pytest.raises(ValueError, match="curvature"):
        HypMixSimilarity(c=0)
    with pytest.raises(ValueError, match="is_inverted"):
        HypMixSimilarity(is_inverted=False)
    with pytest.raises(ValueError, match="no ball part"):
        HypMixSimilarity(euclidean_dim=4)(torch.randn(3, 4))
