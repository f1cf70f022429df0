import math

import pytest
import torch

from pml_hyperbolic.utils.random import uniform_open


def test_values_are_open_interval_midpoints_of_23_bit_grid():
    u = uniform_open((1001, 999), generator=torch.Generator().manual_seed(0))
    assert u.shape == (1001, 999) and u.dtype == torch.float32
    assert u.min() > 0 and u.max() < 1
    m = u.double() * 2**23 - 0.5  # (m + 1/2) 2^-23 with an integer m in [0, 2^23)
    assert torch.equal(m, m.round()) and m.min() >= 0 and m.max() < 2**23


def test_distribution_and_independence():
    n = 2_000_000
    u = uniform_open((n,), generator=torch.Generator().manual_seed(1)).double()
    assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < 1e-3
    # Both 32-bit halves of every 64-bit draw are uniform on 64 bins (chi-square, 63 dof: mean 63, sd 11.2) ...
    for half in (u[0::2], u[1::2]):
        counts = torch.bincount((half * 64).long(), minlength=64).double()
        expected = len(half) / 64
        assert ((counts - expected) ** 2 / expected).sum() < 63 + 6 * 11.2
    # ... and uncorrelated, with each other and along the stream.
    for a, b in ((u[0::2], u[1::2]), (u[:-1], u[1:]), (u[:-2], u[2:])):
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 / math.sqrt(len(a))
    # The Gumbel noise built from it has the Gumbel mean (Euler-Mascheroni) and variance pi^2 / 6.
    g = -torch.log(-torch.log(u))
    assert abs(g.mean().item() - 0.5772156649) < 0.005 and abs(g.var().item() - math.pi**2 / 6) < 0.01


def test_reproducible_and_odd_sizes():
    a = uniform_open((3, 5, 7), generator=torch.Generator().manual_seed(3))
    b = uniform_open((3, 5, 7), generator=torch.Generator().manual_seed(3))
    c = uniform_open((3, 5, 7), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = uniform_open((1,))
    torch.manual_seed(5)
    assert torch.equal(d, uniform_open((1,))) and 0 < d.item() < 1
    assert uniform_open((0, 4)).shape == (0, 4)


def test_other_dtypes_use_torch_rand_in_open_interval():
    u = uniform_open((1000,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert u.dtype == torch.float64 and u.min() > 0 and u.max() < 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    u = uniform_open((1000, 100), generator=torch.Generator(device="cuda").manual_seed(0), device="cuda")
    assert u.device.type == "cuda" and u.min() > 0 and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
