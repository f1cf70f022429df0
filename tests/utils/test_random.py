import math

import numpy as np
import pytest
import torch

from pml_hyperbolic.utils.random import counter_uniform


def reference(key, rows, cols):
    """The documented formula, written plainly with numpy's unsigned integers (wrapping arithmetic)."""
    u64, u32 = np.uint64, np.uint32
    with np.errstate(over="ignore"):
        z = u64(key) + (np.arange(rows, dtype=u64) + u64(1)) * u64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> u64(30))) * u64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u64(27))) * u64(0x94D049BB133111EB)
        z = z ^ (z >> u64(31))
        lo, hi = (z & u64(0xFFFFFFFF)).astype(u32), (z >> u64(32)).astype(u32)

        def mix(x):
            x = (x ^ (x >> u32(16))) * u32(0x7FEB352D)
            x = (x ^ (x >> u32(15))) * u32(0x846CA68B)
            return x ^ (x >> u32(16))

        x = mix(mix(lo[:, None] + np.arange(cols, dtype=u32) * u32(0x9E3779B9)) ^ hi[:, None])
    return ((x >> u32(9)).astype(np.float64) + 0.5) * 2.0**-23


@pytest.mark.parametrize("key", [0, 1, 12345, 2**63 - 1, 2**63 + 987654321, 2**64 - 1])
def test_matches_plain_reference(key, monkeypatch):
    monkeypatch.setattr("pml_hyperbolic.utils.random._BLOCK", 1000)  # several blocks
    u = counter_uniform(key, (3, 7, 301))
    assert u.dtype == torch.float32 and u.shape == (3, 7, 301)
    np.testing.assert_array_equal(u.double().numpy().reshape(21, 301), reference(key, 21, 301))
    np.testing.assert_array_equal(counter_uniform(key, (5,), dtype=torch.float64).numpy(), reference(key, 1, 5)[0])


def test_values_are_open_interval_midpoints_of_23_bit_grid():
    u = counter_uniform(7, (1001, 999))
    assert u.min() > 0 and u.max() < 1
    m = u.double() * 2**23 - 0.5  # (m + 1/2) 2^-23 with an integer m in [0, 2^23)
    assert torch.equal(m, m.round()) and m.min() >= 0 and m.max() < 2**23


def test_distribution_and_independence():
    u = counter_uniform(1, (2, 4000, 512)).double()
    flat = u.flatten()
    n = len(flat)
    assert abs(flat.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(flat.var().item() - 1 / 12) < 1e-3
    counts = torch.bincount((flat * 256).long(), minlength=256).double()  # chi-square, 255 dof: sd 22.6
    assert ((counts - n / 256) ** 2 / (n / 256)).sum() < 255 + 6 * 22.6
    # Uncorrelated along a row, across neighbouring rows, and between the two blocks (the pair and triplet noise).
    for a, b in ((u[..., :-1], u[..., 1:]), (u[:, :-1], u[:, 1:]), (u[0], u[1])):
        a, b = a.flatten(), b.flatten()
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 / math.sqrt(len(a))
    # The Gumbel noise built from it has the Gumbel mean (Euler-Mascheroni) and variance pi^2 / 6.
    g = -torch.log(-torch.log(flat))
    assert abs(g.mean().item() - 0.5772156649) < 0.005 and abs(g.var().item() - math.pi**2 / 6) < 0.01


def test_reproducible_keys_and_shapes():
    a = counter_uniform(3, (3, 5, 7))
    assert torch.equal(a, counter_uniform(3, (3, 5, 7))) and not torch.equal(a, counter_uniform(4, (3, 5, 7)))
    assert torch.equal(a.view(15, 7), counter_uniform(3, (15, 7)))  # element (row, column) does not see the shape
    assert torch.equal(a.view(15, 7)[4:9], counter_uniform(3, (5, 7), first_row=4))  # a block of rows
    assert counter_uniform(3, (0, 4)).shape == (0, 4) and counter_uniform(3, (4, 0)).shape == (4, 0)
    with pytest.raises(ValueError, match="key"):
        counter_uniform(-1, (3,))
    with pytest.raises(ValueError, match="key"):
        counter_uniform(2**64, (3,))
    with pytest.raises(ValueError, match="last dimension"):
        counter_uniform(0, ())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    assert torch.equal(counter_uniform(5, (100, 33), device="cuda").cpu(), counter_uniform(5, (100, 33)))
