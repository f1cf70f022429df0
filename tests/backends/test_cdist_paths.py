"""poincare.cdist on every path (device × backend) for four distributions of the points, against float64
references written plainly here, and under every TF32 / matmul-precision setting of the process."""

import math

import pytest
import torch

from pml_hyperbolic import backends, poincare

C = 0.1
R = 1 / math.sqrt(C)
KINDS = ["sphere", "spread", "clustered", "boundary"]

def points(kind, n, dim, gen):
    """float64 ball points: one sphere (0.62 R), spread radii (uniform in [0, 0.95 R]), tight clusters (spread
    centres, offsets of hyperbolic length <= 0.003), or the boundary (0.999 R)."""
    v = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    if kind == "clustered":
        centres = points("spread", 8, dim, gen) * 0.97
        pick = torch.arange(n) % 8
        lam = 2 / (1 - C * centres[pick].pow(2).sum(1, keepdim=True))
        return centres[pick] + v * (0.003 / lam) * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    radius = {"sphere": 0.62, "boundary": 0.999}.get(kind)
    r = 0.95 * torch.rand(n, 1, generator=gen, dtype=torch.float64) if radius is None else radius
    return v * r * R


def reference(x, y):
    """float64 distances with autograd, from exact differences; d(x, x) = 0 passes no gradient."""
    A = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    q = C * A / ((1 - C * (x * x).sum(1))[:, None] * (1 - C * (y * y).sum(1))[None, :])
    return torch.where(q > 0, 2 / math.sqrt(C) * torch.asinh(q.clamp_min(1e-300).sqrt()), 0)


@pytest.mark.parametrize("kind", KINDS)
def test_values_and_gradients_match_float64(kind, path):
    gen = torch.Generator().manual_seed(KINDS.index(kind))
    x, y = points(kind, 24, 48, gen).float(), points(kind, 40, 48, gen).float()
    y[:3] = x[:3]  # identical points: exact zeros, zero gradients
    G = torch.randn(24, 40, generator=gen)
    xs, ys = x.to(path, copy=True).requires_grad_(), y.to(path, copy=True).requires_grad_()
    d = poincare.cdist(xs, ys, C)
    d.backward(G.to(path))
    xr, yr = x.double().requires_grad_(), y.double().requires_grad_()
    ref = reference(xr, yr)
    ref.backward(G.double())
    d = d.detach().cpu().double()
    far = ref.detach() >= 1e-3
    assert ((d - ref.detach()).abs() / ref.detach())[far].max() <= 1.1e-6
    assert (d - ref.detach())[~far].abs().max() <= 1e-9 + 1e-6 * ref.detach()[~far].max()
    assert torch.equal(d[:3, :3].diagonal(), torch.zeros(3, dtype=torch.float64))
    for got, want in [(xs.grad, xr.grad), (ys.grad, yr.grad)]:
        assert (got.cpu().double() - want).norm() / want.norm() <= 5e-7


def _restore_precision():
    torch.backends.cuda.matmul.allow_tf32 = False
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.mkldnn.matmul.fp32_precision = "ieee"
    torch.set_float32_matmul_precision("highest")


SETTINGS = {
    "legacy allow_tf32": lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", True),
    "fp32_precision tf32": lambda: (setattr(torch.backends.cuda.matmul, "fp32_precision", "tf32"),
                                    setattr(torch.backends.mkldnn.matmul, "fp32_precision", "bf16")),
    "set_float32_matmul_precision high": lambda: torch.set_float32_matmul_precision("high"),
    "set_float32_matmul_precision medium": lambda: torch.set_float32_matmul_precision("medium"),
}


def _read_settings():
    """Everything a user may read back, through the API each setting used (reading across APIs may raise)."""
    out = {"global": torch.get_float32_matmul_precision() if not hasattr(torch.backends.cuda.matmul, "fp32_precision")
           else None}
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        out["cuda"] = torch.backends.cuda.matmul.fp32_precision
        out["mkldnn"] = torch.backends.mkldnn.matmul.fp32_precision
    return out


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_precision_settings_leave_results_and_flags_unchanged(setting, path):
    if setting == "fp32_precision tf32" and not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has no fp32_precision knobs")
    gen = torch.Generator().manual_seed(11)
    # large enough that reduced-precision settings reach the matrix products (oneDNN uses them from about this size)
    n, m, dim = (20, 30, 32) if path.type == "cpu" and backends.get_backend() == "triton" else (500, 400, 300)
    x, y = points("spread", n, dim, gen).float().to(path), points("clustered", m, dim, gen).float().to(path)
    x.requires_grad_()
    d0 = poincare.cdist(x, y, C)
    d0.sum().backward()
    g0, x.grad = x.grad, None
    try:
        SETTINGS[setting]()
        before = _read_settings()
        d1 = poincare.cdist(x, y, C)
        d1.sum().backward()
        assert torch.equal(d1, d0) and torch.equal(x.grad, g0)
        assert _read_settings() == before
        if setting == "legacy allow_tf32":
            assert torch.backends.cuda.matmul.allow_tf32  # still readable through the legacy API, unchanged
    finally:
        _restore_precision()


def test_precision_setting_restored_when_an_exception_passes(monkeypatch):
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has no fp32_precision knobs")
    try:
        torch.set_float32_matmul_precision("medium")
        before = _read_settings()
        with pytest.raises(RuntimeError, match="boom"):
            with backends.ieee_matmul("cpu"), backends.ieee_matmul("cuda"):
                assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
                assert torch.backends.cuda.matmul.fp32_precision == "ieee"
                raise RuntimeError("boom")
        assert _read_settings() == before
    finally:
        _restore_precision()
