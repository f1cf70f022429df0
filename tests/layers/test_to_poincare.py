import math

import pytest
import torch

from pml_hyperbolic import poincare
from pml_hyperbolic.layers import ToPoincare


def test_hyp_vit_constants():
    """With c = 0.1 and clip_r = 2.3 every large feature lands at ball norm tanh(sqrt(c) r)/sqrt(c) = 1.9651,
    hyperbolic distance 2r = 4.6 from the origin (the values the HIER/Hyp-ViT code produces)."""
    z = ToPoincare(c=0.1, clip_r=2.3)(torch.randn(20, 32) * 50)
    assert torch.allclose(z.norm(dim=1), torch.full((20,), math.tanh(math.sqrt(0.1) * 2.3) / math.sqrt(0.1)), rtol=1e-6)
    assert torch.allclose(z.norm(dim=1), torch.full((20,), 1.9651), atol=1e-4)
    assert torch.allclose(poincare.dist0(z, 0.1), torch.full((20,), 4.6), rtol=1e-5)


def test_formula_without_clipping():
    x = torch.randn(10, 5, dtype=torch.float64)
    z = ToPoincare(c=0.3, clip_r=None)(x)
    n = x.norm(dim=1, keepdim=True)
    assert torch.allclose(z, torch.tanh(math.sqrt(0.3) * n) * x / (math.sqrt(0.3) * n))


def test_riemannian_scaling_uses_each_instance_curvature():
    x = torch.randn(6, 4, requires_grad=True)
    grads = []
    for c in (0.1, 1.0):
        x.grad = None
        layer = ToPoincare(c=c, clip_r=None, riemannian=True)
        z = layer(x)
        z.sum().backward()
        plain = torch.autograd.grad(ToPoincare(c=c, clip_r=None)(x).sum(), x)[0]
        expected = plain * ((1 - c * z.detach().pow(2).sum(1, keepdim=True)) ** 2 / 4)
        assert torch.allclose(x.grad, expected, rtol=1e-5)
        grads.append(x.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_learnable_curvature_and_autocast():
    c = torch.nn.Parameter(torch.tensor(0.1))
    layer = ToPoincare(c=c)
    assert list(layer.parameters()) == [c]
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(torch.nn.functional.linear(x, torch.randn(16, 16)))
    assert z.dtype == torch.float32
    poincare.dist0(z, c).sum().backward()
    assert torch.isfinite(c.grad)


def test_errors():
    with pytest.raises(ValueError, match="curvature"):
        ToPoincare(c=0.0)
    with pytest.raises(ValueError, match="clip_r"):
        ToPoincare(clip_r=-1)
