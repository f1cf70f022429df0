"""HyperbolicSoftTripleLoss against a plain float64 re-implementation written with loops.

The reference maps the tangent proxies with the textbook clip + expmap0, measures distances with the Möbius form
d(x, y) = 2/sqrt(c) artanh(sqrt(c) |(-x) (+) y|) (the loss uses the asinh form through a GEMM kernel), and loops over
samples, classes and proxies for the relaxed similarity, the cross-entropy and the center regularizer.
"""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners, reducers, regularizers, trainers
from pytorch_metric_learning.distances import DotProductSimilarity
from torch.utils._python_dispatch import TorchDispatchMode

from pml_hyperbolic.distances import PoincareDistance
from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.losses import HyperbolicSoftTripleLoss
from pml_hyperbolic.utils.optim import param_groups

C = 0.1


# ----------------------------------------------------------------------------------------------- reference (float64)
def ref_to_ball(u, c=C, r=2.3):
    """Row by row: clip to norm r, then expmap0(v) = tanh(sqrt(c)|v|) v / (sqrt(c)|v|)."""
    rows = []
    for v in u:
        n = v.norm()
        if r is not None and n > r:
            v = v * (r / n)
            n = v.norm()
        rows.append(torch.tanh(math.sqrt(c) * n) * v / (math.sqrt(c) * n))
    return torch.stack(rows)


def ref_dist(x, y, c=C):
    """Möbius form 2/sqrt(c) artanh(sqrt(c) |(-x) (+) y|); zero with zero gradient for identical points."""
    if torch.equal(x, y):
        return (x - y).sum() * 0
    xy, x2, y2 = -(x * y).sum(), (x * x).sum(), (y * y).sum()
    num = (1 + 2 * c * xy + c * y2) * (-x) + (1 - c * x2) * y
    den = 1 + 2 * c * xy + c**2 * x2 * y2
    return 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * (num / den).norm())


def ref_similarity(x, proxies, num_classes, k, gamma, c=C):
    """S[j] = sum_k softmax_k(s/gamma) s_k with s_k = -d(x, p_j^k), one class at a time."""
    out = []
    for j in range(num_classes):
        s = torch.stack([-ref_dist(x, proxies[j * k + t], c) for t in range(k)])
        out.append((torch.softmax(s / gamma, 0) * s).sum())
    return torch.stack(out)


def ref_losses(emb, proxies, labels, num_classes, k, la, gamma, margin, c=C):
    """Per-sample cross-entropy on la * (S - margin * onehot)."""
    out = []
    for x, y in zip(emb, labels):
        logits = la * ref_similarity(x, proxies, num_classes, k, gamma, c)
        logits = torch.cat([logits[:y], logits[y : y + 1] - la * margin, logits[y + 1 :]])
        out.append(torch.logsumexp(logits, 0) - logits[y])
    return torch.stack(out)


def ref_centers_reg(proxies, num_classes, k, weight, c=C):
    """weight * d(p_j^t, p_j^s) for every class j and t < s."""
    out = []
    for j in range(num_classes):
        for t in range(k):
            for s in range(t + 1, k):
                out.append(weight * ref_dist(proxies[j * k + t], proxies[j * k + s], c))
    return torch.stack(out)


def ref_weights(indices_tuple, n):
    """pml's miner weighting: how often each sample appears in the tuple, divided by the largest count."""
    counts = [0] * n
    for part in indices_tuple:
        for i in part.tolist():
            counts[i] += 1
    return torch.tensor(counts, dtype=torch.float64) / max(counts)


def assert_rel_close(actual, expected, rtol=1e-5):
    """Equal within rtol relative to the largest magnitude of ``expected`` (entries near 0 get that absolute slack)."""
    expected = expected.detach().to(torch.float64)
    torch.testing.assert_close(
        actual.detach().to(torch.float64), expected, rtol=rtol, atol=rtol * float(expected.abs().max())
    )


# --------------------------------------------------------------------------------------------------------- helpers
def make_inputs(batch=8, dim=6, num_classes=4, seed=0, dtype=torch.float32):
    """Ball embeddings from ToPoincare (some clipped, some not) and labels covering every class."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, dim, generator=g, dtype=dtype) * torch.linspace(0.2, 2.0, batch, dtype=dtype)[:, None]
    emb = ToPoincare(c=C)(feats).detach()
    labels = torch.arange(batch) % num_classes
    return emb, labels


def make_loss(num_classes=4, dim=6, k=3, seed=0, tangent_scale=1.5, **kwargs):
    """A loss whose tangent proxies have norms on both sides of clip_r (so clipping is exercised)."""
    torch.manual_seed(seed)
    loss = HyperbolicSoftTripleLoss(num_classes, dim, centers_per_class=k, **kwargs)
    if not loss.manifold_proxies:
        with torch.no_grad():
            loss.proxies.normal_().mul_(tangent_scale)
    return loss


def reference_and_grads(loss, emb, labels, weights=None, centers_weight=0.0):
    """Reference total (mean loss [+ mean regularizer]) and its gradients for embeddings and proxy parameter."""
    e = emb.detach().to(torch.float64).requires_grad_(True)
    u = loss.proxies.detach().to(torch.float64).requires_grad_(True)
    proxies = u if loss.manifold_proxies else ref_to_ball(u, C, loss.clip_r)
    k = loss.centers_per_class
    per_sample = ref_losses(e, proxies, labels, loss.num_classes, k, loss.la, 1 / loss.gamma, loss.margin)
    total = (per_sample * (1 if weights is None else weights)).mean()
    if centers_weight > 0:
        total = total + ref_centers_reg(proxies, loss.num_classes, k, centers_weight).mean()
    ge, gu = torch.autograd.grad(total, [e, u])
    return total, ge, gu


def loss_and_grads(loss, emb, labels, indices_tuple=None):
    e = emb.clone().requires_grad_(True)
    loss.zero_grad()
    value = loss(e, labels, indices_tuple)
    value.backward()
    return value, e.grad, loss.proxies.grad


# ------------------------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(la=1.0, gamma=0.1, margin=0.01),
        dict(la=4.0, gamma=0.5, margin=0.3, clip_r=1.0),
        dict(la=2.0, gamma=1.0, margin=0.0, clip_r=None),
        dict(la=1.0, gamma=0.1, margin=0.01, centers_reg_weight=0.3),
    ],
)
def test_float32_matches_float64_reference(kwargs):
    emb, labels = make_inputs()
    loss = make_loss(**kwargs)
    value, ge, gu = loss_and_grads(loss, emb, labels)
    ref, ref_ge, ref_gu = reference_and_grads(loss, emb, labels, centers_weight=kwargs.get("centers_reg_weight", 0))
    assert value.dtype == torch.float32
    assert_rel_close(value, ref)
    assert_rel_close(ge, ref_ge)
    assert_rel_close(gu, ref_gu)


def test_float64_matches_reference_tightly():
    emb, labels = make_inputs(dtype=torch.float64)
    loss = make_loss(centers_reg_weight=0.2).double()
    value, ge, gu = loss_and_grads(loss, emb, labels)
    ref, ref_ge, ref_gu = reference_and_grads(loss, emb, labels, centers_weight=0.2)
    assert value.dtype == torch.float64
    assert_rel_close(value, ref, rtol=1e-10)
    assert_rel_close(ge, ref_ge, rtol=1e-9)
    assert_rel_close(gu, ref_gu, rtol=1e-9)


@pytest.mark.parametrize(
    "dtype, radius, rtol, emb_grad_rtol",
    [
        (torch.float32, 0.9, 1e-5, 1e-5),
        # float32 gradients of embeddings this close to the boundary lose accuracy as 1 / (1 - c|x|^2) (the distance
        # kernel's float32 backward: 2e-3 at 0.999, 2e-2 at 0.9999); values and proxy gradients stay exact.
        (torch.float32, 0.9999, 1e-5, 5e-2),
        (torch.float64, 0.9999, 1e-9, 1e-6),
    ],
)
def test_adversarial_inputs_match_reference(dtype, radius, rtol, emb_grad_rtol):
    """Proxies and embeddings near the boundary, an embedding equal to a proxy, the origin, two merged proxies."""
    num_classes, k, dim = 3, 3, 5
    loss = make_loss(num_classes, dim, k, manifold_proxies=True, la=3.0, gamma=0.2, centers_reg_weight=0.5).to(dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        direction = F.normalize(torch.randn(num_classes * k, dim, generator=g, dtype=dtype), dim=1)
        sqrt_c_norms = torch.tensor([0.2, 0.9, radius, 0.5, 0.99, 0.3, 0.7, radius, 0.1], dtype=dtype)
        loss.proxies.copy_(direction * sqrt_c_norms[:, None] / math.sqrt(C))
        loss.proxies[4] = loss.proxies[3]  # two merged proxies of class 1
    proxies = loss.get_proxies().detach()
    near_boundary = F.normalize(torch.randn(dim, generator=g, dtype=dtype), dim=0) * radius / math.sqrt(C)
    emb = torch.stack(
        [
            proxies[7],  # exactly on a proxy, itself at sqrt(c)|p| = radius
            torch.zeros(dim, dtype=dtype),  # the origin
            near_boundary,
            proxies[2] * (1 - 1e-6),  # very close to a proxy at sqrt(c)|p| = radius
            F.normalize(torch.randn(dim, generator=g, dtype=dtype), dim=0) * 0.5,
            proxies[0],
        ]
    )
    labels = torch.tensor([2, 0, 1, 0, 2, 1])
    value, ge, gu = loss_and_grads(loss, emb, labels)
    ref, ref_ge, ref_gu = reference_and_grads(loss, emb, labels, centers_weight=0.5)
    assert torch.isfinite(value) and torch.isfinite(ge).all() and torch.isfinite(gu).all()
    assert_rel_close(value, ref, rtol)
    assert_rel_close(ge, ref_ge, emb_grad_rtol)
    assert_rel_close(gu, ref_gu, rtol)


def test_get_logits_are_the_scaled_relaxed_similarities():
    """The loss's logits la·S (before the margin), as pml's classification losses return them; gamma is stored as
    1/γ, as pml's SoftTripleLoss stores (and logs) it."""
    emb, labels = make_inputs()
    loss = make_loss(la=2.0, gamma=0.3)
    assert loss.gamma == pytest.approx(1 / 0.3) and "gamma" in loss._record_these
    logits = loss.get_logits(emb)
    proxies = ref_to_ball(loss.proxies.detach().double())
    expected = torch.stack([2.0 * ref_similarity(x, proxies, 4, 3, 0.3) for x in emb.double()])
    assert logits.shape == (8, 4)
    assert_rel_close(logits, expected)


def test_proxies_follow_to_poincare_map():
    loss = make_loss(tangent_scale=3.0)
    expected = ToPoincare(c=C, clip_r=2.3)(loss.proxies.detach())
    assert_rel_close(loss.get_proxies(), expected, rtol=1e-6)


@pytest.mark.parametrize("clip_r", [2.3, None])
def test_euclidean_limit_as_c_goes_to_zero(clip_r):
    """d_c(x, y) -> 2|x - y| as c -> 0 (and expmap0 -> identity): the loss tends to SoftTriple on -2|x - p|."""
    num_classes, k, la, gamma, margin = 4, 3, 2.0, 0.5, 0.1
    emb, labels = make_inputs(dtype=torch.float64)
    emb = emb * 0.5
    torch.manual_seed(3)
    u = torch.randn(num_classes * k, 6, dtype=torch.float64)
    p = u if clip_r is None else u * torch.clamp(clip_r / u.norm(dim=1, keepdim=True), max=1)
    sim = -2 * torch.cdist(emb, p).view(-1, num_classes, k)
    relaxed = (torch.softmax(sim / gamma, 2) * sim).sum(2)
    euclidean = F.cross_entropy(la * (relaxed - margin * F.one_hot(labels, num_classes)), labels)
    errors = []
    for c in (1e-2, 1e-4, 1e-6):
        loss = HyperbolicSoftTripleLoss(num_classes, 6, k, la=la, gamma=gamma, margin=margin, c=c, clip_r=clip_r)
        loss = loss.double()
        with torch.no_grad():
            loss.proxies.copy_(u)
        errors.append(abs(loss(emb, labels).item() - euclidean.item()) / euclidean.item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5


# ---------------------------------------------------------------------------------------------- pml integration
def test_miner_indices_tuple_weights_the_loss():
    emb, labels = make_inputs()
    loss = make_loss()
    triplets = (torch.tensor([0, 0, 4, 5]), torch.tensor([4, 4, 0, 1]), torch.tensor([1, 2, 2, 3]))
    pairs = (torch.tensor([0, 1]), torch.tensor([4, 5]), torch.tensor([0, 2]), torch.tensor([1, 3]))
    for tup in (triplets, pairs):
        value, ge, gu = loss_and_grads(loss, emb, labels, tup)
        ref, ref_ge, ref_gu = reference_and_grads(loss, emb, labels, weights=ref_weights(tup, len(labels)))
        assert_rel_close(value, ref)
        assert_rel_close(ge, ref_ge)
        assert_rel_close(gu, ref_gu)
    # a real miner on the ball: same weighting
    miner = miners.MultiSimilarityMiner(epsilon=0.5, distance=PoincareDistance(c=C))
    tup = miner(emb, labels)
    assert sum(len(t) for t in tup) > 0
    ref, _, _ = reference_and_grads(loss, emb, labels, weights=ref_weights(tup, len(labels)))
    assert_rel_close(loss(emb, labels, tup), ref)


def test_empty_indices_tuple_means_unweighted():
    emb, labels = make_inputs()
    loss = make_loss()
    empty = (torch.tensor([], dtype=torch.long),) * 3
    torch.testing.assert_close(loss(emb, labels, empty), loss(emb, labels))


def _per_element_reference(loss, emb, labels, centers_weight):
    proxies = ref_to_ball(loss.proxies.detach().double())
    losses = ref_losses(emb.double(), proxies, labels, loss.num_classes, loss.centers_per_class, loss.la,
                        1 / loss.gamma, loss.margin)
    reg = ref_centers_reg(proxies, loss.num_classes, loss.centers_per_class, centers_weight)
    return losses, reg


def mean_or_zero(x):
    return x.mean() if len(x) else x.sum()


@pytest.mark.parametrize(
    "reducer, reduce",
    [
        (reducers.MeanReducer(), lambda x: x.mean()),
        (reducers.AvgNonZeroReducer(), lambda x: mean_or_zero(x[x > 0])),
        (reducers.ThresholdReducer(low=0.4, high=1.2), lambda x: mean_or_zero(x[(x > 0.4) & (x < 1.2)])),
        (reducers.DivisorReducer(), lambda x: x.sum() / len(x)),
        (reducers.SumReducer(), lambda x: x.sum()),
    ],
)
@pytest.mark.parametrize("centers_weight", [0.0, 0.4])
def test_reducers(reducer, reduce, centers_weight):
    emb, labels = make_inputs(batch=12)
    loss = make_loss(reducer=reducer, centers_reg_weight=centers_weight, la=2.0)
    losses, reg = _per_element_reference(loss, emb, labels, centers_weight)
    expected = reduce(losses) + (reduce(reg) if centers_weight > 0 else 0)
    assert_rel_close(loss(emb, labels), expected)


def test_multiple_reducers_and_loss_dict():
    emb, labels = make_inputs(batch=12)
    reducer = reducers.MultipleReducers({"loss": reducers.SumReducer(), "centers_reg_loss": reducers.DivisorReducer()})
    loss = make_loss(reducer=reducer, centers_reg_weight=0.4)
    losses, reg = _per_element_reference(loss, emb, labels, 0.4)
    assert_rel_close(loss(emb, labels), losses.sum() + reg.mean())

    raw = make_loss(reducer=reducers.DoNothingReducer(), centers_reg_weight=0.4)(emb, labels)
    assert set(raw) == {"loss", "centers_reg_loss"}
    assert raw["loss"]["reduction_type"] == "element" and raw["loss"]["divisor"] == 12
    assert raw["centers_reg_loss"]["divisor"] == len(reg) == 4 * 3
    assert_rel_close(raw["loss"]["losses"], losses)
    assert_rel_close(raw["centers_reg_loss"]["losses"], reg)


def test_embedding_and_weight_regularizers():
    emb, labels = make_inputs()
    base = make_loss()(emb, labels)
    with_emb_reg = make_loss(embedding_regularizer=regularizers.LpRegularizer(), embedding_reg_weight=0.5)
    assert_rel_close(with_emb_reg(emb, labels), base + 0.5 * emb.norm(dim=1).mean())
    with_weight_reg = make_loss(weight_regularizer=regularizers.LpRegularizer(), weight_reg_weight=0.25)
    proxies = ref_to_ball(with_weight_reg.proxies.detach().double())
    assert_rel_close(with_weight_reg(emb, labels), base + 0.25 * proxies.norm(dim=1).mean())
    assert with_weight_reg.sub_loss_names() == ["loss", "weight_reg_loss"]


def test_inside_multiple_losses():
    emb, labels = make_inputs()
    ours = make_loss()
    triplet = pml_losses.TripletMarginLoss(margin=0.5, distance=PoincareDistance(c=C))
    combined = pml_losses.MultipleLosses([ours, triplet], weights=[1.0, 0.5])
    e = emb.clone().requires_grad_(True)
    value = combined(e, labels)
    value.backward()
    torch.testing.assert_close(value, ours(emb, labels) + 0.5 * triplet(emb, labels))
    assert ours.proxies.grad is not None and ours.proxies.grad.abs().sum() > 0


def test_metric_loss_only_trainer_with_metric_loss_optimizer():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = torch.arange(64) % 4
    trunk = torch.nn.Sequential(torch.nn.Linear(8, 6), ToPoincare(c=C))
    loss = HyperbolicSoftTripleLoss(4, 6, centers_per_class=2, la=2.0, centers_reg_weight=0.1)
    before_proxies, before_trunk = loss.proxies.detach().clone(), trunk[0].weight.detach().clone()
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk},
        optimizers={
            "trunk_optimizer": torch.optim.Adam(param_groups(trunk, lr=1e-2)),
            "metric_loss_optimizer": torch.optim.Adam(param_groups(None, loss, lr=1e-2, proxy_lr_mult=10)),
        },
        batch_size=16,
        loss_funcs={"metric_loss": loss},
        mining_funcs={"tuple_miner": miners.MultiSimilarityMiner(epsilon=0.5, distance=PoincareDistance(c=C))},
        dataset=torch.utils.data.TensorDataset(x, y),
        iterations_per_epoch=2,
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),  # pml's default is the GPU when there is one; the models are on the CPU
    )
    trainer.train(num_epochs=1)
    assert math.isfinite(trainer.losses["metric_loss"])
    assert not torch.equal(loss.proxies.detach(), before_proxies)
    assert not torch.equal(trunk[0].weight.detach(), before_trunk)
    assert loss.proxies.dtype == torch.float32


def test_inverted_distance_is_used_as_the_similarity():
    emb, labels = make_inputs()
    loss = make_loss(distance=DotProductSimilarity(normalize_embeddings=False), gamma=0.5)
    proxies = ref_to_ball(loss.proxies.detach().double())
    sim = (emb.double() @ proxies.t()).view(-1, 4, 3)
    expected = loss.la * (torch.softmax(sim / 0.5, 2) * sim).sum(2)
    assert_rel_close(loss.get_logits(emb), expected)


def test_learnable_curvature_shared_with_the_head():
    c = torch.nn.Parameter(torch.tensor(C))
    head = ToPoincare(c=c)
    loss = HyperbolicSoftTripleLoss(4, 6, centers_per_class=3, c=c, distance=PoincareDistance(c=c))
    emb = head(torch.randn(8, 6))
    loss(emb, torch.arange(8) % 4).backward()
    assert c.grad is not None and torch.isfinite(c.grad)
    groups = param_groups(head, loss, lr=1e-3, proxy_lr=1e-1)
    assert [len(g["params"]) for g in groups] == [1, 1]  # c in the head's group only, proxies in the loss's


# ----------------------------------------------------------------------------------------- optimizers and dtypes
def test_tangent_proxies_stay_in_the_ball_with_any_optimizer():
    emb, labels = make_inputs()
    loss = make_loss()
    opt = torch.optim.SGD(loss.parameters(), lr=1e4)
    for _ in range(3):
        opt.zero_grad()
        loss(emb, labels).backward()
        opt.step()
    proxies = loss.get_proxies()
    assert torch.isfinite(proxies).all()
    assert (math.sqrt(C) * proxies.norm(dim=1)).max() <= math.tanh(math.sqrt(C) * 2.3) + 1e-6
    assert torch.isfinite(loss(emb, labels))


@pytest.mark.parametrize("manifold", [False, True])
def test_training_reduces_the_loss(manifold):
    geoopt = pytest.importorskip("geoopt")
    emb, labels = make_inputs(batch=16)
    loss = make_loss(manifold_proxies=manifold, la=2.0, centers_reg_weight=0.05)
    opt = geoopt.optim.RiemannianAdam(loss.parameters(), lr=0.05) if manifold else torch.optim.Adam(
        loss.parameters(), lr=0.05
    )
    first = float(loss(emb, labels))
    for _ in range(30):
        opt.zero_grad()
        loss(emb, labels).backward()
        opt.step()
    assert float(loss(emb, labels)) < 0.7 * first
    assert (math.sqrt(C) * loss.get_proxies().norm(dim=1)).max() < 1
    if manifold:
        assert isinstance(loss.proxies, geoopt.ManifoldParameter)


def test_autocast_bfloat16_keeps_float32_proxies():
    emb, labels = make_inputs()
    loss = make_loss()
    with_reg = make_loss(centers_reg_weight=0.2)
    reference = loss(emb.bfloat16().float(), labels)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), ToPoincare(c=C))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        direct = loss(emb.bfloat16(), labels)  # half-precision ball points straight into the loss
        through_head = with_reg(model(torch.randn(8, 6)), labels)
        # pml's MultipleReducers sums the sub-losses in the embeddings' dtype: finite, in bfloat16
        direct_with_reg = with_reg(emb.bfloat16(), labels)
    (direct + through_head + direct_with_reg).backward()
    assert direct.dtype == through_head.dtype == torch.float32
    torch.testing.assert_close(direct, reference, rtol=1e-5, atol=0)
    assert torch.isfinite(through_head) and torch.isfinite(direct_with_reg)
    for trained in (loss, with_reg):
        assert trained.proxies.dtype == torch.float32 and trained.proxies.grad.dtype == torch.float32
        assert torch.isfinite(trained.proxies.grad).all()


def test_state_dict_round_trip():
    emb, labels = make_inputs()
    for kwargs in (dict(centers_reg_weight=0.2), dict(manifold_proxies=True)):
        trained = make_loss(seed=0, **kwargs)
        opt = torch.optim.Adam(trained.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            trained(emb, labels).backward()
            opt.step()
        buffer = io.BytesIO()
        torch.save(trained.state_dict(), buffer)
        buffer.seek(0)
        restored = make_loss(seed=1, **kwargs)
        assert not torch.equal(restored(emb, labels), trained(emb, labels))
        restored.load_state_dict(torch.load(buffer))
        assert torch.equal(restored(emb, labels), trained(emb, labels))
        assert torch.equal(restored.get_proxies(), trained.get_proxies())


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor produced by an aten op (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_sop_scale_never_builds_a_batch_by_proxies_by_dim_tensor():
    num_classes, k, dim, batch = 11318, 10, 128, 32
    torch.manual_seed(0)
    loss = HyperbolicSoftTripleLoss(num_classes, dim, centers_per_class=k, la=2.0)
    emb = ToPoincare(c=C)(torch.randn(batch, dim)).detach().requires_grad_(True)
    labels = torch.randint(0, num_classes, (batch,))
    with _LargestOutput() as mode:
        value = loss(emb, labels)
        value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all()
    assert mode.largest <= num_classes * k * dim  # the proxies themselves; B x C·K x D would be 32x that
    assert loss.proxies.grad.shape == (num_classes * k, dim)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_embeddings_move_the_proxies_not_their_dtype():
    emb, labels = make_inputs()
    loss = make_loss()
    cpu_value = loss(emb, labels)
    value = loss(emb.cuda().half(), labels.cuda())
    assert loss.proxies.device.type == "cuda" and loss.proxies.dtype == torch.float32
    torch.testing.assert_close(value.cpu(), loss(emb.half().float().cuda(), labels.cuda()).cpu())
    assert abs(value.item() - cpu_value.item()) < 1e-2


# --------------------------------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0, 1, 2, 4, 0, 1, 2, 3]), r"labels must lie in \[0, num_classes=4\)"),
        (torch.tensor([0, 1, 2, -1, 0, 1, 2, 3]), r"labels must lie in \[0, num_classes=4\)"),
        (torch.zeros(8), "integer tensor"),
        (None, "labels are required"),
    ],
)
def test_bad_labels(labels, message):
    emb, _ = make_inputs()
    with pytest.raises(ValueError, match=message):
        make_loss()(emb, labels)


def test_bad_embeddings():
    emb, labels = make_inputs()
    loss = make_loss()
    with pytest.raises(ValueError, match="embedding_size=6"):
        loss(torch.zeros(8, 5), labels)
    with pytest.raises(ValueError, match="2-D tensor"):
        loss(torch.zeros(8), labels)
    with pytest.raises(ValueError, match="inside the Poincaré ball"):
        loss(emb * 10, labels)
    bad = emb.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        loss(bad, labels)
    with pytest.raises(ValueError, match="empty batch"):
        loss(emb[:0], labels[:0])
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        loss(emb, labels, ref_emb=emb.clone(), ref_labels=labels)
    with pytest.raises(ValueError, match="embedding_size=6"):
        loss.get_logits(torch.zeros(8, 7))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(c=0.0), "curvature"),
        (dict(c=float("nan")), "curvature"),
        (dict(num_classes=0), "num_classes"),
        (dict(embedding_size=2.5), "embedding_size"),
        (dict(centers_per_class=0), "centers_per_class"),
        (dict(la=0), "la"),
        (dict(gamma=-1), "gamma"),
        (dict(margin=-0.1), "margin"),
        (dict(clip_r=0), "clip_r"),
        (dict(centers_reg_weight=-1), "centers_reg_weight"),
        (dict(centers_per_class=1, centers_reg_weight=0.1), "centers_per_class > 1"),
        (dict(distance=PoincareDistance(c=1.0)), "curvature"),
        (dict(c=torch.tensor(0.1), manifold_proxies=True), "float c"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    args = dict(num_classes=4, embedding_size=6)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        HyperbolicSoftTripleLoss(**args)
