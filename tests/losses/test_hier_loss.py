"""HIERLoss against a plain float64 re-implementation of the official formulas (hier/losses.py::HIERLoss).

The reference below uses broadcasting and autograd only: the textbook Poincaré distance, clipping + expmap0 +
Riemannian gradient scaling for the proxies, the element-wise maxima, and F.gumbel_softmax's hard straight-through
sample written out (y_hard - y_soft.detach() + y_soft) with the SAME injected noise: uniforms U, E = -log U (what
``exponential_()`` draws), g = -log E.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers, trainers
from pytorch_metric_learning.distances import CosineSimilarity

import pml_hyperbolic.losses.hier_lca as hier_lca
from pml_hyperbolic.distances import PoincareDistance
from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.losses import HIERLoss

C, CLIP = 0.1, 2.3


# ----------------------------------------------------------------------------------------------- reference (float64)
def ref_dist(x, y, c=C):
    """d(x_i, y_j) = 2/sqrt(c) asinh(sqrt(c |x-y|^2 / ((1-c|x|^2)(1-c|y|^2)))), zero (with zero gradient) at x = y."""
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    ax = 1 - c * (x**2).sum(-1)
    ay = 1 - c * (y**2).sum(-1)
    arg = c * sq / (ax[:, None] * ay[None, :])
    pos = sq > 0
    safe = torch.where(pos, arg, torch.ones_like(arg))
    return torch.where(pos, 2 / math.sqrt(c) * torch.asinh(torch.sqrt(safe)), torch.zeros_like(arg))


def ref_to_ball(u, c=C, r=CLIP):
    """Clip to norm r, expmap0, and scale the backward gradient by (1 - c|x|^2)^2 / 4 (riemannian=True)."""
    u = u * torch.clamp(r / u.norm(dim=1, keepdim=True), max=1)
    n = u.norm(dim=1, keepdim=True)
    x = torch.tanh(math.sqrt(c) * n) * u / (math.sqrt(c) * n)
    scale = ((1 - c * (x**2).sum(1, keepdim=True)) ** 2 / 4).detach()
    x.register_hook(lambda g: g * scale)
    return x


def ref_hard_sample(m, tau, u, lca):
    """One-hot LCA over the logits -m/tau: official gumbel hard sample with straight-through, or the plain argmin."""
    logits = -m / tau
    if lca == "argmax":
        idx = logits.argmax(1)
        return F.one_hot(idx, m.shape[1]).to(m.dtype), idx
    gumbels = -torch.log(-torch.log(u))  # E = -log U ~ Exp(1), g = -log E
    y_soft = torch.softmax(logits + gumbels, dim=1)  # gumbel temperature 1
    idx = y_soft.argmax(1)
    y_hard = F.one_hot(idx, m.shape[1]).to(m.dtype)
    return y_hard - y_soft.detach() + y_soft, idx


def ref_triplet_losses(D, i, j, k, e, margin=0.1, tau=0.1, lca="gumbel"):
    """compute_gHHC of the official code: per-triplet losses (collided ones zeroed) and the collision mask."""
    Di, Dj, Dk = D[i], D[j], D[k]
    m_ij = torch.maximum(Di, Dj)
    pi_ij, a = ref_hard_sample(m_ij, tau, None if e is None else e[0], lca)
    m_ijk = torch.maximum(Dk, m_ij)
    pi_ijk, b = ref_hard_sample(m_ijk, tau, None if e is None else e[1], lca)

    def d(X, pi):
        return (X * pi).sum(1)

    L = (
        F.relu(d(Di, pi_ij) - d(Di, pi_ijk) + margin)
        + F.relu(d(Dj, pi_ij) - d(Dj, pi_ijk) + margin)
        + F.relu(d(Dk, pi_ijk) - d(Dk, pi_ij) + margin)
    )
    collided = a == b
    return L * (~collided), collided


def ref_total(z, proxy_param, data_t, proxy_t, e_data, e_proxy, lca="gumbel", reduction="all"):
    lcas = ref_to_ball(proxy_param)
    ld, cd = ref_triplet_losses(ref_dist(z, lcas), *data_t, e_data, lca=lca)
    lp, cp = ref_triplet_losses(ref_dist(lcas, lcas), *proxy_t, e_proxy, lca=lca)
    if reduction == "non_collided":
        ld, lp = ld[~cd], lp[~cp]
    return ld.mean() + lp.mean()


# ----------------------------------------------------------------------------------------------------------- helpers
def ball_points(n, dim, seed, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=dtype) * scale
    return ToPoincare(c=C, clip_r=CLIP)(x).detach()


def recording(loss):
    """Record the mined triplets and the Gumbel noise (uniforms) that ``loss`` draws (instance-level wrappers)."""
    rec = {"mine": [], "noise": []}
    mine, noise = loss.miner.mine_fixed, loss.sample_noise

    def rec_mine(*args, **kwargs):
        out = mine(*args, **kwargs)
        rec["mine"].append(out)
        return out

    def rec_noise(*args, **kwargs):
        out = noise(*args, **kwargs)
        rec["noise"].append(out)
        return out

    loss.miner.mine_fixed, loss.sample_noise = rec_mine, rec_noise
    return rec


def valid_triplets(slots):
    """The valid triplets of mine_fixed's slots (anchors, positives, negatives, valid) and the slot mask."""
    return tuple(t[slots[3]] for t in slots[:3]), slots[3]


def split_noise(rec, data_slots, proxy_slots):
    """The noise (2, slots, P) of the valid slots of each term (the data term's slots come first)."""
    e = torch.cat(rec["noise"], dim=1)
    n_data = len(data_slots[0])
    return e[:, :n_data][:, data_slots[3]], e[:, n_data:][:, proxy_slots[3]]


def run_against_reference(lca="gumbel", reduction="all", n=24, dim=8, p=32, seed=0, **kwargs):
    z = ball_points(n, dim, seed, scale=0.6).requires_grad_()  # unclipped points: radial gradients too
    labels = torch.arange(n) % 6
    loss = HIERLoss(dim, num_proxies=p, topk=6, triplets_per_anchor=7, lca=lca, reduction=reduction, generator=seed,
                    **kwargs)
    loss.proxies.data = loss.proxies.data.double()
    rec = recording(loss)
    out = loss(z, labels)
    out.backward()
    data_slots, proxy_slots = rec["mine"]
    (data_t, _), (proxy_t, _) = valid_triplets(data_slots), valid_triplets(proxy_slots)
    assert len(data_t[0]) > 0 and len(proxy_t[0]) > 0
    if lca == "gumbel":
        e_data, e_proxy = split_noise(rec, data_slots, proxy_slots)
        assert e_proxy.shape[1] == len(proxy_t[0])
    else:
        assert rec["noise"] == []
        e_data = e_proxy = None
    z_ref = z.detach().clone().requires_grad_()
    p_ref = loss.proxies.detach().clone().requires_grad_()
    expected = ref_total(z_ref, p_ref, data_t, proxy_t, e_data, e_proxy, lca=lca, reduction=reduction)
    expected.backward()
    return out, expected, z.grad, z_ref.grad, loss.proxies.grad, p_ref.grad


# ------------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("lca", ["gumbel", "argmax"])
@pytest.mark.parametrize("reduction", ["all", "non_collided"])
def test_loss_and_gradients_match_reference(lca, reduction):
    out, expected, gz, gz_ref, gp, gp_ref = run_against_reference(lca=lca, reduction=reduction)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)
    assert gz.abs().max() > 0 and gp.abs().max() > 0
    torch.testing.assert_close(gz, gz_ref, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(gp, gp_ref, rtol=1e-7, atol=1e-10)


def test_official_self_negative_option_matches_reference():
    out, expected, gz, gz_ref, gp, gp_ref = run_against_reference(exclude_self_negative=False, seed=3)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gz, gz_ref, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(gp, gp_ref, rtol=1e-7, atol=1e-10)


def test_chunked_lca_step_matches_reference(monkeypatch):
    monkeypatch.setattr(hier_lca, "_CHUNK_ELEMENTS", 100)  # 3 rows of 32 candidates per chunk
    out, expected, gz, gz_ref, gp, gp_ref = run_against_reference(seed=1)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gz, gz_ref, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(gp, gp_ref, rtol=1e-7, atol=1e-10)


def block_and_triplets(seed, r=20, p=16, t=300):
    g = torch.Generator().manual_seed(seed)
    D = (torch.rand(r, p, generator=g, dtype=torch.float64) * 3 + 4).requires_grad_()
    idx = torch.randint(0, r, (3, t), generator=g)
    u = torch.rand(2, t, p, generator=g, dtype=torch.float64)
    return D, idx, u


def test_core_straight_through_gradient_matches_reference_and_matters():
    loss = HIERLoss(4, num_proxies=32, topk=5)
    D, (i, j, k), e = block_and_triplets(0)
    loss.sample_noise = lambda shape, dtype, device: e.to(dtype)
    losses, collided = loss.triplet_lca_losses(D, i, j, k)
    w = torch.rand(len(i), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad((losses * w).sum(), D)

    D_ref = D.detach().clone().requires_grad_()
    ref, ref_collided = ref_triplet_losses(D_ref, i, j, k, e)
    (grad_ref,) = torch.autograd.grad((ref * w).sum(), D_ref)
    torch.testing.assert_close(losses, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(collided, ref_collided) and 0 < collided.sum() < len(i)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-12)

    # Without the soft path (detached one-hot LCAs) the gradient is clearly different: the ST term is present.
    D_det = D.detach().clone().requires_grad_()
    det, _ = ref_triplet_losses(D_det, i, j, k, e, lca="argmax")
    assert not torch.allclose(grad, torch.autograd.grad((det * w).sum(), D_det)[0], rtol=0.1)


def test_core_float32_matches_float64_reference():
    loss = HIERLoss(4, num_proxies=32, topk=5)
    D, (i, j, k), e = block_and_triplets(2)
    D32 = D.detach().float().requires_grad_()
    loss.sample_noise = lambda shape, dtype, device: e.to(dtype)
    losses, collided = loss.triplet_lca_losses(D32, i, j, k)
    assert losses.dtype == torch.float32
    losses.sum().backward()
    ref, ref_collided = ref_triplet_losses(D, i, j, k, e)
    ref.sum().backward()
    assert torch.equal(collided, ref_collided)
    torch.testing.assert_close(losses.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(D32.grad.double(), D.grad, rtol=1e-4, atol=1e-5)


def test_gumbel_selection_statistics():
    """The hard samples follow softmax(-max(d)/tau): compare LCA frequencies with the exact probabilities."""
    loss = HIERLoss(4, num_proxies=32, topk=5, generator=0)
    D = torch.tensor([[1.0, 1.05, 1.2, 2.0], [0.9, 1.1, 1.3, 0.5], [3.0, 3.0, 3.0, 3.0]], dtype=torch.float64)
    n = 20000
    i, j, k = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long), torch.full((n,), 2)
    _, _ = loss.triplet_lca_losses(D, i, j, k)  # warm-up: the generator is created
    rec = recording(loss)
    loss.triplet_lca_losses(D, i, j, k)
    e = torch.cat(rec["noise"], 1)
    m = torch.maximum(D[0], D[1])
    pair = torch.argmax(-m / 0.1 - torch.log(-torch.log(e[0])), 1)
    freq = torch.bincount(pair, minlength=4).double() / n
    torch.testing.assert_close(freq, torch.softmax(-m / 0.1, 0), atol=0.015, rtol=0)


def test_lca_indices_follow_argmin_in_argmax_mode():
    loss = HIERLoss(4, num_proxies=32, topk=5, lca="argmax", margin=0.0)
    D = torch.tensor([[1.0, 2.0, 3.0], [2.5, 1.0, 3.0], [1.0, 1.0, 0.1]], dtype=torch.float64, requires_grad=True)
    i, j, k = torch.tensor([0]), torch.tensor([1]), torch.tensor([2])
    losses, collided = loss.triplet_lca_losses(D, i, j, k)
    # M_ij = [2.5, 2, 3] -> a = 1; M_ijk = [2.5, 2, 3] -> b = 1: collision, zero loss.
    assert collided.item() and losses.item() == 0
    D2 = torch.tensor([[1.0, 2.0, 3.0], [2.5, 1.0, 3.0], [1.0, 4.0, 0.1]], dtype=torch.float64, requires_grad=True)
    losses, collided = loss.triplet_lca_losses(D2, i, j, k)
    # a = 1 (M_ij = [2.5, 2, 3]); M_ijk = [2.5, 4, 3] -> b = 0
    # L = [d_i(1) - d_i(0)]+ + [d_j(1) - d_j(0)]+ + [d_k(0) - d_k(1)]+ = 1 + 0 + 0
    assert not collided.item()
    assert losses.item() == pytest.approx(1.0)
    losses.sum().backward()
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[0, 1], expected[0, 0] = 1, -1
    torch.testing.assert_close(D2.grad, expected)


@pytest.mark.parametrize(
    "reducer, reduce",
    [
        (None, lambda x: x.mean()),
        (reducers.MeanReducer(), lambda x: x.mean()),
        (reducers.AvgNonZeroReducer(), lambda x: x[x > 0].mean()),
        (reducers.ThresholdReducer(low=0.15), lambda x: x[x > 0.15].mean()),
        (reducers.DivisorReducer(), lambda x: x.sum() / len(x)),
        (reducers.SumReducer(), lambda x: x.sum()),
    ],
)
def test_reducers(reducer, reduce):
    z, labels = ball_points(30, 8, 4), torch.arange(30) % 5
    kwargs = {} if reducer is None else {"reducer": reducer}
    loss = HIERLoss(8, num_proxies=40, topk=8, triplets_per_anchor=10, generator=0, **kwargs)
    raw = HIERLoss(8, num_proxies=40, topk=8, triplets_per_anchor=10, generator=0, reducer=reducers.DoNothingReducer())
    raw.load_state_dict(loss.state_dict())
    d = raw(z, labels)
    assert set(d) == {"data_loss", "proxy_loss"}
    for term in d.values():
        assert term["reduction_type"] == "triplet" and term["divisor"] == len(term["losses"])
        assert all(len(x) == len(term["losses"]) for x in term["indices"])
    assert d["proxy_loss"]["indices"][0].max() < 40 and d["data_loss"]["indices"][0].max() < 30
    expected = reduce(d["data_loss"]["losses"]) + reduce(d["proxy_loss"]["losses"])
    torch.testing.assert_close(loss(z, labels), expected)


def test_multiple_reducers_and_non_collided_reduction():
    z, labels = ball_points(30, 8, 5), torch.arange(30) % 5
    kw = dict(num_proxies=40, topk=8, triplets_per_anchor=10, generator=0)
    mixed = HIERLoss(8, reducer=reducers.MultipleReducers({"data_loss": reducers.AvgNonZeroReducer()}), **kw)
    raw = HIERLoss(8, reducer=reducers.DoNothingReducer(), **kw)
    raw.load_state_dict(mixed.state_dict())
    d = raw(z, labels)
    data, prox = d["data_loss"]["losses"], d["proxy_loss"]["losses"]
    torch.testing.assert_close(mixed(z, labels), data[data > 0].mean() + prox.mean())

    # Every slot reaches the reducer, weighted so that MeanReducer averages over the triplets that count: the valid
    # ones ("all"), or the valid and non-collided ones ("non_collided"; collided triplets have loss 0 either way).
    terms = {}
    for reduction in ("all", "non_collided"):
        raw = HIERLoss(8, reduction=reduction, reducer=reducers.DoNothingReducer(), collect_stats=True, **kw)
        raw.load_state_dict(mixed.state_dict())
        terms[reduction] = (raw(z, labels)["data_loss"], raw.num_data_triplets, raw.data_collision_rate)
    (all_, valid, rate), (nc, _, _) = terms["all"], terms["non_collided"]
    assert 0 < rate < 1 and 0 < valid <= len(all_["losses"])
    assert all_["divisor"] == len(all_["losses"]) == len(nc["losses"])
    torch.testing.assert_close(nc["losses"].mean(), all_["losses"].mean() / (1 - rate))


def test_indices_tuple_replaces_mining_for_data_term():
    z, labels = ball_points(20, 8, 6), torch.arange(20) % 4
    loss = HIERLoss(8, num_proxies=24, topk=6, generator=0, reducer=reducers.DoNothingReducer())
    rec = recording(loss)
    triplets = pml_miners.TripletMarginMiner(margin=10, distance=PoincareDistance())(z, labels)
    d = loss(z, labels, triplets)
    assert len(rec["mine"]) == 1  # only the proxy block was mined
    for got, want in zip(d["data_loss"]["indices"], triplets):
        assert torch.equal(got, want)
    pairs = pml_miners.MultiSimilarityMiner(epsilon=10)(z, labels)  # pairs are converted to triplets
    assert len(loss(z, None, pairs)["data_loss"]["losses"]) > 0
    empty = tuple(torch.empty(0, dtype=torch.long) for _ in range(3))
    assert loss(z, labels, empty)["data_loss"]["losses"] == 0


def test_small_batches_are_graceful():
    loss = HIERLoss(8, num_proxies=32, topk=20, generator=0)
    for n in (1, 2, 3, 20):  # batch <= topk: every pair is mutual, no negatives -> the data term is zero
        z = ball_points(n, 8, n).requires_grad_()
        reduced = HIERLoss(8, num_proxies=32, topk=20, generator=0, reducer=reducers.DoNothingReducer())
        assert (reduced(z, torch.zeros(n, dtype=torch.long))["data_loss"]["losses"] == 0).all()
        out = loss(z, torch.arange(n))
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(z.grad).all()
    official = HIERLoss(8, num_proxies=32, topk=20, exclude_self_negative=False, reducer=reducers.DoNothingReducer())
    d = official(ball_points(10, 8, 0), torch.arange(10))["data_loss"]
    a, p, n = d["indices"]
    assert torch.equal(a, n) and (a != p).all()  # official rule: the anchor is the only negative left


def test_training_step_with_multiple_losses_and_trainer():
    """The paper's recipe the pml way: ProxyAnchor on the L2-normalised ball points + 0.5 HIER, MetricLossOnly."""
    torch.manual_seed(0)
    n, dim = 60, 8
    x, y = torch.randn(n, 16), torch.arange(n) % 3
    dataset = torch.utils.data.TensorDataset(x, y)
    trunk = torch.nn.Linear(16, 16)
    embedder = torch.nn.Sequential(torch.nn.Linear(16, dim), ToPoincare(c=C, clip_r=CLIP, riemannian=True))
    proxy_anchor = pml_losses.ProxyAnchorLoss(3, dim)
    assert isinstance(proxy_anchor.distance, CosineSimilarity)
    hier = HIERLoss(dim, num_proxies=16, topk=5, triplets_per_anchor=5, generator=0)
    loss_fn = pml_losses.MultipleLosses([proxy_anchor, hier], weights=[1, 0.5])
    before = hier.proxies.detach().clone()
    models = {"trunk": trunk, "embedder": embedder}
    optimizers = {
        "trunk_optimizer": torch.optim.AdamW(trunk.parameters(), lr=1e-3),
        "embedder_optimizer": torch.optim.AdamW(embedder.parameters(), lr=1e-3),
        "metric_loss_optimizer": torch.optim.AdamW(loss_fn.parameters(), lr=1e-2),
    }
    trainer = trainers.MetricLossOnly(
        models, optimizers, batch_size=30, loss_funcs={"metric_loss": loss_fn}, dataset=dataset,
        dataloader_num_workers=0, data_device=torch.device("cpu"),  # pml's default: the GPU when there is one
    )
    trainer.train(num_epochs=1)
    assert not torch.equal(before, hier.proxies.detach()) and torch.isfinite(hier.proxies).all()


def test_reproducible_under_seed_and_default_init():
    z, labels = ball_points(30, 16, 7), torch.arange(30) % 5
    torch.manual_seed(0)
    a = HIERLoss(16, num_proxies=64, topk=8, generator=123)
    b = HIERLoss(16, num_proxies=64, topk=8, generator=123)
    b.load_state_dict(a.state_dict())
    assert a(z, labels).item() == b(z, labels).item()
    # official init: N(0, (0.9 clip_r / sqrt(D))^2) tangent vectors, i.e. norms ~ 0.9 clip_r
    big = HIERLoss(256, num_proxies=512, topk=8)
    assert big.proxies.std().item() == pytest.approx(0.9 * CLIP / 16, rel=0.02)
    assert big.get_proxies().norm(dim=1).max() <= math.tanh(math.sqrt(C) * CLIP) / math.sqrt(C) + 1e-6


def test_autocast_and_float32():
    z, labels = ball_points(24, 8, 8, dtype=torch.float32).requires_grad_(), torch.arange(24) % 4
    loss = HIERLoss(8, num_proxies=32, topk=6, generator=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(z, labels)
    out.backward()
    assert out.dtype == torch.float32 and loss.proxies.dtype == torch.float32
    assert torch.isfinite(z.grad).all() and torch.isfinite(loss.proxies.grad).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="num_proxies"):
        HIERLoss(8, num_proxies=20, topk=20)
    with pytest.raises(ValueError, match="curvature"):
        HIERLoss(8, c=0)
    with pytest.raises(ValueError, match="lca"):
        HIERLoss(8, lca="soft")
    with pytest.raises(ValueError, match="reduction"):
        HIERLoss(8, reduction="sum")
    with pytest.raises(ValueError, match="tau"):
        HIERLoss(8, tau=0)
    with pytest.raises(ValueError, match="topk"):
        HIERLoss(8, topk=2)
    with pytest.raises(ValueError, match="PoincareDistance"):
        HIERLoss(8, distance=CosineSimilarity())
    with pytest.raises(ValueError, match="curvature"):
        HIERLoss(8, distance=PoincareDistance(c=0.5))
    loss = HIERLoss(8, num_proxies=32, topk=6)
    z = ball_points(10, 8, 0)
    with pytest.raises(ValueError, match="embedding_size=8"):
        loss(ball_points(10, 4, 0), torch.arange(10))
    with pytest.raises(ValueError, match="inside the Poincaré ball"):
        loss(z * 10, torch.arange(10))
    with pytest.raises(ValueError, match="NaN"):
        loss(z * float("nan"), torch.arange(10))
    with pytest.raises(ValueError, match="cannot both be None"):
        loss(z)
    with pytest.raises(ValueError, match="ref_emb"):
        loss(z, torch.arange(10), ref_emb=z.clone(), ref_labels=torch.arange(10))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        loss(z, torch.arange(10), (torch.tensor([0]), torch.tensor([1]), torch.tensor([10])))
    with pytest.raises(ValueError, match="same length"):
        loss(z, torch.arange(10), (torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([3])))
    # the core on a user's distance block
    block, idx = torch.rand(5, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="2-D"):
        loss.triplet_lca_losses(block[:, :0], idx, idx, idx)
    with pytest.raises(ValueError, match="finite"):
        loss.triplet_lca_losses(torch.where(block > 0.5, float("inf"), block), idx, idx, idx)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        loss.triplet_lca_losses(block, idx, idx, idx + 4)
    loss.sample_noise = lambda shape, dtype, device: torch.rand(2, 3, 4)
    with pytest.raises(ValueError, match="sample_noise returned shape"):
        loss.triplet_lca_losses(block, idx, idx, idx)
    for bad in (0.0, 1.0, 1 - 2.0**-30):  # the last one rounds to 1 in float32
        loss.sample_noise = lambda shape, dtype, device: torch.full(shape, 0.5, dtype=torch.float64).index_fill_(
            2, torch.tensor([1]), bad)
        with pytest.raises(ValueError, match="open interval"):
            loss.triplet_lca_losses(block, idx, idx, idx)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_injected_noise():
    z = ball_points(24, 8, 9)
    cpu = HIERLoss(8, num_proxies=32, topk=6)
    cuda = HIERLoss(8, num_proxies=32, topk=6).cuda()
    cuda.load_state_dict(cpu.state_dict())
    D, (i, j, k), e = block_and_triplets(3, r=24, p=32)
    cpu.sample_noise = lambda shape, dtype, device: e.to(dtype)
    cuda.sample_noise = lambda shape, dtype, device: e.to(device, dtype)
    want = cpu.triplet_lca_losses(cpu.distance(z, cpu.get_proxies()), i, j, k)[0]
    got = cuda.triplet_lca_losses(cuda.distance(z.cuda(), cuda.get_proxies()), i.cuda(), j.cuda(), k.cuda())[0]
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-6)  # float32 kernels of two devices
