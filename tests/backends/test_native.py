"""The native kernels against their torch implementations and float64 references, and the build fallback."""

import os
import shutil

import pytest
import torch

from pml_hyperbolic import backends, poincare
from pml_hyperbolic.backends import native
from pml_hyperbolic.losses import HIERLoss
from pml_hyperbolic.miners import ReciprocalTripletMiner
from pml_hyperbolic.utils.random import counter_uniform

needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None or backends.get_backend() not in ("auto", "native"),
    reason="no C compiler (the torch implementation is used)",
)


def block(seed, r=40, p=64, t=3000):
    """A distance block (spread like HIER's at initialisation and later in training) and random triplets."""
    g = torch.Generator().manual_seed(seed)
    dist = torch.rand(r, p, generator=g) * torch.rand(r, 1, generator=g) * 6 + 2
    return dist, tuple(torch.randint(0, r, (3, t), generator=g))


def lca_run(loss, dist, triplets, weights):
    dist = dist.clone().requires_grad_()
    losses, collided = loss.triplet_lca_losses(dist, *triplets)
    (losses * weights).sum().backward()
    return losses, collided, dist.grad


@pytest.fixture
def torch_only(monkeypatch):
    """Make HIERLoss use its torch implementation."""
    monkeypatch.setattr(native, "library", lambda: None)


@needs_compiler
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_torch_implementation_with_injected_noise(seed, monkeypatch):
    dist, triplets = block(seed)
    u = torch.rand(2, len(triplets[0]), dist.shape[1], generator=torch.Generator().manual_seed(seed + 10))
    weights = torch.rand(len(triplets[0]), generator=torch.Generator().manual_seed(seed + 20))
    loss = HIERLoss(4, num_proxies=32, topk=5)
    loss.sample_noise = lambda shape, dtype, device: u.to(dtype)
    got = lca_run(loss, dist, triplets, weights)
    monkeypatch.setattr(native, "library", lambda: None)
    want = lca_run(loss, dist, triplets, weights)
    assert torch.equal(got[1], want[1]) and 0 < want[1].sum() < len(want[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert want[2].abs().max() > 0
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-6 * want[2].abs().max().item())


@needs_compiler
def test_kernel_draws_the_counter_stream_of_the_same_key(monkeypatch):
    """Default noise: the kernel computes counter_uniform(key) in place; the torch path materialises it."""
    dist, triplets = block(2)
    weights = torch.rand(len(triplets[0]), generator=torch.Generator().manual_seed(3))
    got = lca_run(HIERLoss(4, num_proxies=32, topk=5, generator=7), dist, triplets, weights)
    monkeypatch.setattr(native, "library", lambda: None)
    want = lca_run(HIERLoss(4, num_proxies=32, topk=5, generator=7), dist, triplets, weights)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-6 * want[2].abs().max().item())
    # ... and that stream is counter_uniform of one key drawn from the generator.
    key = int(torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(7)))
    u = counter_uniform(key, (2, len(triplets[0]), dist.shape[1]))
    loss = HIERLoss(4, num_proxies=32, topk=5)
    loss.sample_noise = lambda shape, dtype, device: u
    assert torch.equal(lca_run(loss, dist, triplets, weights)[1], want[1])


@needs_compiler
def test_full_loss_same_with_and_without_kernel_and_any_thread_count(monkeypatch):
    z = torch.nn.functional.normalize(torch.randn(60, 16, generator=torch.Generator().manual_seed(0)), dim=1) * 2

    def run(threads):
        torch.set_num_threads(threads)
        loss = HIERLoss(16, num_proxies=48, topk=8, triplets_per_anchor=12, generator=5)
        torch.manual_seed(0)
        loss.proxies.data = torch.randn(48, 16, generator=torch.Generator().manual_seed(1)) * 0.3
        x = z.clone().requires_grad_()
        out = loss(x, torch.arange(60) // 3)
        out.backward()
        return out.detach(), x.grad, loss.proxies.grad

    before = torch.get_num_threads()
    try:
        one, two = run(1), run(2)
        monkeypatch.setattr(native, "library", lambda: None)
        eager = run(2)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0])
    for a, b in zip(one[1:], two[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(two, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------- distance matrix and mining kernels
def adversarial_points(seed, dim=24):
    """Ball points (c = 0.1) in float32: interior, near the boundary, duplicates, close pairs and the origin."""
    g = torch.Generator().manual_seed(seed)
    v = torch.nn.functional.normalize(torch.randn(60, dim, generator=g, dtype=torch.float64), dim=1)
    radius = torch.cat([torch.rand(40, generator=g, dtype=torch.float64) * 0.9, 1 - 10.0 ** -torch.arange(1, 21)])
    x = v * radius.unsqueeze(1) * 0.1**-0.5
    x[5] = x[3]  # identical
    x[7] = x[3] + 1e-4 * v[0]  # close pairs in the interior and at the boundary
    x[45] = x[44] * (1 - 1e-6)
    x[8] = 0  # the origin
    return poincare.project(x.float(), 0.1)


@needs_compiler
@pytest.mark.parametrize("seed", [0, 1])
def test_pdist_matches_float64_reference(seed):
    x = adversarial_points(seed).requires_grad_()
    d = poincare.pdist(x, 0.1)
    x64 = x.detach().double().requires_grad_()
    ref = poincare.dist(x64.unsqueeze(1), x64.unsqueeze(0), 0.1)
    assert torch.equal(d, d.t()) and (d.diagonal() == 0).all() and d[3, 5] == 0
    close = ref > 0
    assert ((d.double() - ref).abs()[close] / ref[close]).max() < 1e-5
    grad = torch.randn(d.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (d * grad.float()).sum().backward()
    (ref * grad).sum().backward()
    assert torch.isfinite(x.grad).all()
    err = (x.grad.double() - x64.grad).norm(dim=1) / x64.grad.norm(dim=1).clamp_min(1e-12)
    assert err.max() < 1e-4


@needs_compiler
def test_pdist_threads_agree_and_large_sets_use_the_matrix_product_kernel(monkeypatch):
    g = torch.Generator().manual_seed(2)
    x = poincare.expmap0(torch.randn(420, 48, generator=g), 0.1).requires_grad_()  # several threads' worth of work
    grad = torch.randn(420, 420, generator=g)
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x.grad = None
            d = poincare.pdist(x, 0.1)
            (d * grad).sum().backward()
            out.append((d, x.grad))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0][0], poincare.cdist(x, x, 0.1).detach(), rtol=1e-5, atol=1e-5)
    assert native.use_pdist(torch.zeros(200, 64)) and not native.use_pdist(torch.zeros(700, 512))


@needs_compiler
@pytest.mark.parametrize("seed", range(6))
def test_native_mining_matches_the_torch_rule(seed):
    """Same triplets from the kernel and the torch ops, with tied similarities, labels, any topk and both options."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(3, 70, (1,), generator=g))
    x = torch.randn(n, 3, generator=g)
    x[::3] = x[0].clone()  # ties
    sim = -torch.cdist(x, x)
    sim = (sim + sim.t()) / 2
    labels = torch.randint(0, 5, (n,), generator=g) if seed % 2 else None
    mined = 0
    for exclude_self in (True, False):
        for topk in (3, 7, 100):
            miner = ReciprocalTripletMiner(topk=topk, triplets_per_anchor=6, exclude_self_negative=exclude_self,
                                           generator=seed)
            got = miner.mine_fixed(sim, labels)
            uniforms = torch.rand((n, 2, 6), generator=torch.Generator().manual_seed(seed))
            *want, ok = miner._triplets(sim, labels, uniforms)
            assert all(torch.equal(a, b) for a, b in zip(got, [*want, ok.repeat_interleave(6)]))
            mined += int(got[3].sum())
    assert mined > 0


@needs_compiler
def test_native_mining_rejects_non_finite_similarities(monkeypatch):
    sim = -torch.cdist(torch.randn(12, 3), torch.randn(12, 3))
    miner = ReciprocalTripletMiner(topk=3, triplets_per_anchor=2)
    for value in (float("nan"), float("inf"), -float("inf")):
        sim[4, 7] = value
        with pytest.raises(ValueError, match="NaN or inf"):
            miner.mine_similarity(sim)
    with backends.use("torch"), pytest.raises(ValueError, match="NaN or inf"):  # the torch rule checks the same
        miner.mine_similarity(sim)


@needs_compiler
def test_cdist_kernel_threads_agree():
    """Rows split over threads give the same distances; the column sums of the backward agree to rounding."""
    g = torch.Generator().manual_seed(3)
    x = poincare.expmap0(torch.randn(400, 16, generator=g), 0.1).requires_grad_()
    y = poincare.expmap0(torch.randn(2000, 16, generator=g), 0.1).requires_grad_()  # several threads' worth
    grad = torch.randn(400, 2000, generator=g)
    before, out = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x.grad = y.grad = None
            d = poincare.cdist(x, y, 0.1)
            (d * grad).sum().backward()
            out.append((d, x.grad, y.grad))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0][0], out[1][0])
    for a, b in zip(out[0][1:], out[1][1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_compiler
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_relaxed_similarity_kernel_matches_torch(sign, monkeypatch):
    """HyperbolicSoftTripleLoss's softmax over proxies: the kernel against the torch ops, with ties and spreads of
    hundreds of nats inside a class (the terms that underflow)."""
    from pml_hyperbolic.losses.hyperbolic_soft_triple_loss import _RelaxedSimilarity

    g = torch.Generator().manual_seed(4)
    m = torch.rand(37, 7, 13, generator=g) * 25  # (B, K, C), distances up to 25 / gamma = 250 nats apart
    m[:, 3] = m[:, 2]  # tied proxies
    grad = torch.randn(37, 13, generator=g)
    out = []
    for backend in ("native", "torch"):
        with backends.use(backend):
            mm = m.clone().requires_grad_()
            s = _RelaxedSimilarity.apply(mm, sign, 0.1)
            (s * grad).sum().backward()
        out.append((s, mm.grad))
    assert torch.isfinite(out[0][0]).all() and torch.isfinite(out[0][1]).all()
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)


@needs_compiler
def test_cdist_pair_grads_match_index_add_in_float64_and_do_not_depend_on_threads():
    """The close pairs' gradient terms w (x_i - y_j), added to grad_x's rows and taken from grad_y's, against a
    float64 ``index_add_``; many pairs per row and per column, enough work for several threads."""
    g = torch.Generator().manual_seed(0)
    n, m, dim, p = 300, 400, 128, 20000
    x, y = torch.randn(n, dim, generator=g), torch.randn(m, dim, generator=g)
    flat = torch.randperm(n * m, generator=g)[:p].sort().values  # row-major order, as nonzero gives them
    rows, cols = flat // m, flat % m
    w = torch.randn(p, generator=g)
    diff = x.double()[rows] - y.double()[cols]
    want_x = torch.zeros(n, dim, dtype=torch.float64).index_add_(0, rows, w.double()[:, None] * diff)
    want_y = torch.zeros(m, dim, dtype=torch.float64).index_add_(0, cols, -w.double()[:, None] * diff)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 4):
            torch.set_num_threads(count)
            gx, gy = torch.ones(n, dim), torch.ones(m, dim)  # added to, not overwritten
            native.cdist_pair_grads(x, y, rows, cols, w, gx, gy)
            results.append((gx, gy))
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(results[0], (want_x, want_y)):
        torch.testing.assert_close(got.double() - 1, want, rtol=1e-5, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(*results))  # each row summed in pair order, whatever the threads
