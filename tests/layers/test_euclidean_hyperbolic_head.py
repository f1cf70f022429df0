
import pytest
import torch

from pml_hyperbolic.layers import EuclideanHyperbolicHead, ToPoincare


def test_layout_and_formula():
    torch.manual_seed(0)
    head = EuclideanHyperbolicHead(32, euclidean_dim=8, hyperbolic_dim=5, c=0.1, clip_r=2.3)
    f = torch.randn(10, 32)
    z = head(f)
    assert z.shape == (10, 13)
    e = head.euclidean(f)
    assert torch.allclose(z[:, :8], e / e.norm(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(z[:, 8:], ToPoincare(c=0.1, clip_r=2.3)(head.hyperbolic(f)))
    assert (0.1 * z[:, 8:].pow(2).sum(1) < 1).all()


def test_layer_norm_option_and_gradients():
    head = EuclideanHyperbolicHead(16, 4, 4, layer_norm=True)
    f = torch.randn(6, 16) * 100 + 7
    z = head(f)
    assert torch.allclose(z, EuclideanHyperbolicHead.forward(head, f))
    z.sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    ln = torch.nn.functional.layer_norm(f, (16,))
    assert torch.allclose(head.euclidean(ln) / head.euclidean(ln).norm(dim=1, keepdim=True), z[:, :4], atol=1e-5)


def test_autocast_gives_float32():
    head = EuclideanHyperbolicHead(16, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = head(torch.randn(3, 16))
    assert z.dtype == torch.float32


def test_errors():
    with pytest.raises(ValueError, match=">= 1"):
        EuclideanHyperbolicHead(16, 0, 4)
    with pytest.raises(ValueError, match="curvature"):
        EuclideanHyperbolicHead(16, 4, 4, c=-1)
