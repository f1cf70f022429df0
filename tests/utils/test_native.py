"""The native HIER kernel against HIERLoss's torch implementation, and its build fallback."""

import os
import shutil

import pytest
import torch

from pml_hyperbolic.losses import HIERLoss
from pml_hyperbolic.utils import native
from pml_hyperbolic.utils.random import counter_uniform

needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None or os.environ.get("PML_HYPERBOLIC_NATIVE") == "0",
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
    monkeypatch.setattr(native, "hier_lca", lambda: None)


@needs_compiler
def test_kernel_builds():
    assert native.hier_lca() is not None


@needs_compiler
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_torch_implementation_with_injected_noise(seed, monkeypatch):
    dist, triplets = block(seed)
    u = torch.rand(2, len(triplets[0]), dist.shape[1], generator=torch.Generator().manual_seed(seed + 10))
    weights = torch.rand(len(triplets[0]), generator=torch.Generator().manual_seed(seed + 20))
    loss = HIERLoss(4, num_proxies=32, topk=5)
    loss.sample_noise = lambda shape, dtype, device: u.to(dtype)
    got = lca_run(loss, dist, triplets, weights)
    monkeypatch.setattr(native, "hier_lca", lambda: None)
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
    monkeypatch.setattr(native, "hier_lca", lambda: None)
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
        monkeypatch.setattr(native, "hier_lca", lambda: None)
        eager = run(2)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0])
    for a, b in zip(one[1:], two[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(two, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fallback_without_compiler_warns_and_hier_still_works(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("PML_HYPERBOLIC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PML_HYPERBOLIC_NATIVE", raising=False)
    native.hier_lca.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not build the native HIER kernel"):
            assert native.hier_lca() is None
        dist, triplets = block(4, t=200)
        losses, _, grad = lca_run(HIERLoss(4, num_proxies=32, topk=5, generator=0), dist, triplets, 1.0)
        assert torch.isfinite(losses).all() and grad.abs().max() > 0
        native.hier_lca.cache_clear()
        monkeypatch.setenv("PML_HYPERBOLIC_NATIVE", "0")
        assert native.hier_lca() is None  # disabled: no build attempt, no warning
    finally:
        native.hier_lca.cache_clear()


@needs_compiler
def test_build_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("PML_HYPERBOLIC_CACHE", str(tmp_path))
    native.hier_lca.cache_clear()
    try:
        assert native.hier_lca() is not None
        built = sorted(tmp_path.glob("hier_lca_*.so"))
        assert len(built) == 1 and not list(tmp_path.glob("*.tmp*"))
        native.hier_lca.cache_clear()

        def no_compiling(*args, **kwargs):
            raise AssertionError("compiled again")

        monkeypatch.setattr(native.subprocess, "run", no_compiling)  # the cached build is loaded
        assert native.hier_lca() is not None
    finally:
        native.hier_lca.cache_clear()
