"""pml_hyperbolic.poincare against float64 references (geoopt's ball and plain formulas) on adversarial inputs."""

import math

import geoopt
import pytest
import torch

from pml_hyperbolic import backends, poincare

C = 0.1
R = 1 / math.sqrt(C)  # ball radius


def plain_dist64(x, y, c=C):
    """Reference, float64 with autograd: arcosh(1 + t) / sqrt(c), t = 2c||x-y||^2 / ((1-c||x||^2)(1-c||y||^2)),
    from exact differences, with arcosh(1 + t) = log1p(t + sqrt(t (t + 2))) (no cancellation near t = 0)."""
    x, y = x.double(), y.double()
    A = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    alpha = 1 - c * (x * x).sum(1)
    beta = 1 - c * (y * y).sum(1)
    t = 2 * c * A / (alpha[:, None] * beta[None, :])
    return torch.log1p(t + torch.sqrt((t * (t + 2)).clamp_min(1e-300))) / torch.sqrt(torch.as_tensor(c, dtype=x.dtype))


def geoopt_dist64(x, y, c=C):
    """Second, external reference: geoopt's Poincaré distance in float64 (its artanh form and float32-stored
    curvature lose accuracy near the boundary, so it is used for interior points only)."""
    return geoopt.PoincareBall(c=c).dist(x.double()[:, None, :], y.double()[None, :, :])


def sphere(n, dim, radius_frac, gen):
    v = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True) * radius_frac * R if radius_frac > 0 else torch.zeros_like(v)


def near_pairs(n, dim, radius_frac, target_d, gen):
    """x on the sphere of radius radius_frac*R and y = x + delta*v with delta chosen so that d(x, y) ~ target_d."""
    x = sphere(n, dim, radius_frac, gen)
    lam = 2 / (1 - C * (radius_frac * R) ** 2)  # conformal factor: d ~ lam * ||x - y|| for close pairs
    v = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    y = poincare.project(x + (target_d / lam) * v, C)
    return x, y


@pytest.mark.parametrize("dim", [2, 16, 128, 1024])
@pytest.mark.parametrize("radius_frac", [0.0, 0.3, 0.62, 0.95, 0.999])
def test_cdist_float32_relative_error_near_pairs(dim, radius_frac, path):
    interpreted = path.type == "cpu" and backends.get_backend() == "triton"
    if interpreted and dim > 128:
        pytest.skip("slow in Triton's interpreter; this case runs on CUDA")
    gen = torch.Generator().manual_seed(dim)
    for target in [1e-3, 1e-2, 1e-1, 1.0]:
        x, y = near_pairs(12 if interpreted else 48, dim, radius_frac, target, gen)
        x32, y32 = x.float(), y.float()
        d = poincare.cdist(x32.to(path), y32.to(path), C).cpu()
        ref = plain_dist64(x32, y32)  # reference on the float32 inputs themselves
        mask = ref >= 1e-3
        rel = ((d.double() - ref).abs() / ref)[mask]
        assert d.dtype == torch.float32
        assert rel.max() <= 1e-5, (dim, radius_frac, target, rel.max().item())


@pytest.mark.parametrize("radius_frac", [0.3, 0.999])
def test_cdist_far_pairs_and_float64(radius_frac, path):
    gen = torch.Generator().manual_seed(1)
    x = sphere(40, 64, radius_frac, gen)
    y = torch.cat([-x[:20], sphere(30, 64, radius_frac, gen)])  # antipodal (largest distances) and random
    for dtype, tol in [(torch.float32, 1e-5), (torch.float64, 1e-10)]:
        d = poincare.cdist(x.to(path, dtype), y.to(path, dtype), C).cpu()
        ref = plain_dist64(x.to(dtype), y.to(dtype))
        assert d.dtype == dtype
        assert ((d.double() - ref).abs() / ref).max() <= tol


def test_cdist_agrees_with_geoopt_in_the_interior():
    gen = torch.Generator().manual_seed(10)
    x, y = sphere(40, 32, 0.5, gen), sphere(50, 32, 0.9, gen)
    d = poincare.cdist(x.float(), y.float(), C)
    ref = geoopt_dist64(x.float(), y.float())
    assert ((d.double() - ref).abs() / ref).max() <= 1e-5


def test_self_distance_is_exactly_zero_with_zero_gradient(path):
    gen = torch.Generator().manual_seed(2)
    origin = torch.zeros(1, 32, dtype=torch.float64)
    x = torch.cat([sphere(30, 32, 0.62, gen), sphere(30, 32, 0.999, gen), origin]).float()
    x = torch.cat([x, x[:5]]).to(path)  # duplicated rows at other indices are identical points too
    x.requires_grad_(True)
    d = poincare.cdist(x, x, C)
    assert torch.equal(d.diagonal(), torch.zeros(len(x), device=path))
    assert torch.equal(d[-5:, :5].diagonal(), torch.zeros(5, device=path))
    # gradient of the self-distances alone is exactly zero, never NaN
    d.diagonal().sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_masked_self_distance_does_not_poison_gradients(path):
    """The classic NaN trap: distances masked *after* computation (0 * inf = NaN)."""
    gen = torch.Generator().manual_seed(3)
    x = sphere(16, 8, 0.62, gen).float().to(path).requires_grad_(True)
    d = poincare.cdist(x, x, C)
    logits = (-d / 0.2).masked_fill(torch.eye(16, dtype=torch.bool, device=path), -1e9)
    torch.nn.functional.cross_entropy(logits, torch.arange(16, device=path).roll(1)).backward()
    assert torch.isfinite(x.grad).all()
    y = torch.randn(5, 8, device=path, requires_grad=True)
    z = poincare.expmap0(y, C)
    poincare.cdist(z, z, C).sum().backward()
    assert torch.isfinite(y.grad).all()


@pytest.mark.parametrize("radius_frac", [0.5, 0.99])
@pytest.mark.parametrize("learnable_c", [True, False])
def test_cdist_gradients_match_float64_reference(radius_frac, learnable_c, path):
    """A learnable curvature takes the torch kernel; a constant one the C kernel (unless forced to torch)."""
    gen = torch.Generator().manual_seed(4)
    x = sphere(20, 16, radius_frac, gen)
    # some rows of y are very close to rows of x (the exact-difference path), others random, one identical
    close = poincare.project(x[:8] + 1e-3 * torch.randn(8, 16, generator=gen, dtype=torch.float64), C)
    y = torch.cat([close, sphere(12, 16, 0.7, gen)])
    y[9] = x[9]
    G = torch.randn(20, 20, generator=gen, dtype=torch.float64)

    xs, ys = x.float().to(path).requires_grad_(), y.float().to(path).requires_grad_()
    cs = torch.tensor(C, device=path, requires_grad=True) if learnable_c else C
    (poincare.cdist(xs, ys, cs) * G.float().to(path)).sum().backward()
    xr, yr = xs.detach().double().requires_grad_(), ys.detach().double().requires_grad_()
    cr = torch.tensor(C, dtype=torch.float64, requires_grad=True)
    d = plain_dist64(xr, yr, cr)
    (torch.where(d > 0, d, 0) * G).sum().backward()  # d(x, x) = 0 passes no gradient
    pairs = [(xs.grad, xr.grad), (ys.grad, yr.grad)] + ([(cs.grad, cr.grad)] if learnable_c else [])
    for got, ref in pairs:
        assert ((got.cpu().double() - ref).norm() / ref.norm()) <= 1e-5


def test_gradcheck_float64_including_curvature():
    gen = torch.Generator().manual_seed(5)
    x = sphere(7, 5, 0.6, gen).requires_grad_()
    y = torch.cat([x[:2].detach() + 1e-4, sphere(4, 5, 0.9, gen)]).requires_grad_()
    c = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    # nondet_tol: a second backward through the same graph recomputes an intermediate (see _PoincareCdist)
    assert torch.autograd.gradcheck(lambda a, b, k: poincare.cdist(a, b, k), (x * 0.5, y * 0.5, c), nondet_tol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b, k: poincare.dist(a, b, k), (x[:6] * 0.5, y * 0.5, c))
    assert torch.autograd.gradcheck(lambda a, k: poincare.dist0(a, k), (x * 0.5, c))
    assert torch.autograd.gradcheck(lambda a, k: poincare.expmap0(a, k), (x, c))


def test_second_backward_through_retained_graph(path):
    gen = torch.Generator().manual_seed(6)
    x = sphere(10, 8, 0.6, gen).float().to(path).requires_grad_()
    y = sphere(12, 8, 0.8, gen).float().to(path)
    d = poincare.cdist(x, y, C)
    d.sum().backward(retain_graph=True)
    g1 = x.grad.clone()
    x.grad = None
    d.sum().backward()
    assert torch.allclose(x.grad, g1, rtol=1e-5, atol=1e-7)


def test_autocast_bfloat16_computes_in_float32():
    gen = torch.Generator().manual_seed(7)
    x, y = near_pairs(32, 64, 0.62, 0.02, gen)
    x32, y32 = x.float(), y.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = poincare.cdist(x32, y32, C)
        d_bf16_in = poincare.cdist(x32.bfloat16(), y32.bfloat16(), C)
    assert d.dtype == torch.float32 and d_bf16_in.dtype == torch.float32
    ref = plain_dist64(x32, y32)
    assert ((d.double() - ref).abs() / ref).max() <= 1e-5
    # bfloat16 inputs: exact distances *of the rounded points*, computed in float32
    ref_bf = plain_dist64(x32.bfloat16().float(), y32.bfloat16().float())
    mask = ref_bf >= 1e-3
    assert (((d_bf16_in.double() - ref_bf).abs() / ref_bf)[mask]).max() <= 1e-5


def test_row_wise_dist_and_dist0():
    gen = torch.Generator().manual_seed(8)
    x, y = near_pairs(64, 32, 0.999, 0.01, gen)
    d = poincare.dist(x.float(), y.float(), C)
    ref = plain_dist64(x.float(), y.float()).diagonal()
    assert ((d.double() - ref).abs() / ref).max() <= 1e-6
    assert torch.equal(poincare.dist(x, x, C), torch.zeros(64, dtype=torch.float64))
    u = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    assert torch.allclose(poincare.dist0(poincare.expmap0(u, C), C), 2 * u.norm(dim=1), rtol=1e-10)


def test_maps_and_projection():
    gen = torch.Generator().manual_seed(9)
    u = torch.randn(50, 12, generator=gen, dtype=torch.float64)
    x = poincare.expmap0(u, C)
    assert torch.allclose(x, geoopt.PoincareBall(c=C).expmap0(u), atol=1e-12)
    assert torch.allclose(poincare.logmap0(x, C), u, rtol=1e-8)
    # projection: idempotent bitwise, keeps points inside, leaves interior points unchanged
    big = torch.randn(100, 12, generator=gen) * 10
    p = poincare.project(big, C)
    assert torch.equal(poincare.project(p, C), p)
    assert (C * p.pow(2).sum(1) < 1).all()
    small = big / big.norm(dim=1, keepdim=True)
    assert torch.equal(poincare.project(small, C), small)
    # along another dimension (pml calls normalize(..., dim=0))
    assert torch.allclose(poincare.project(big.t(), C, dim=0), p.t())
    # huge tangent vectors map inside the ball in every dtype
    for dtype in [torch.float16, torch.bfloat16, torch.float32, torch.float64]:
        z = poincare.expmap0(torch.full((3, 4), 100.0, dtype=dtype), C)
        assert (C * z.double().pow(2).sum(1) < 1).all()


def _tangent_reference(u, c, clip_r):
    """clip, expmap0 and project composed in float64 with autograd (the map tangent_to_ball fuses)."""
    u = u.double()
    x = u if clip_r is None else poincare.clip_features(u, clip_r)
    return poincare.expmap0(x, c)


@pytest.mark.parametrize("clip_r", [2.3, None])
def test_tangent_to_ball_matches_the_composed_maps(clip_r, path):
    """Rows from 0 and 1e-30 through the series/formula switch (sqrt(c)||u|| = 1e-2) to clipped and boundary-clamped
    ones: values and gradients against float64 autograd through clip_features, expmap0 and project."""
    gen = torch.Generator().manual_seed(11)
    scales = torch.tensor([0, 1e-30, 1e-8, 1e-4, 0.02, 0.0316, 0.0317, 0.1, 0.5, 2.0, 2.299, 2.301, 5.0, 40.0])
    u = torch.randn(len(scales), 64, generator=gen, dtype=torch.float64)
    u = (u / u.norm(dim=1, keepdim=True) * scales[:, None].double()).float().to(path).requires_grad_()
    grad = torch.randn(u.shape, generator=gen, dtype=torch.float64)
    out = poincare.tangent_to_ball(u, C, clip_r)
    (out * grad.float().to(path)).sum().backward()
    u64 = u.detach().cpu().double().requires_grad_()
    ref = _tangent_reference(u64, C, clip_r)
    (ref * grad).sum().backward()
    assert ((out.detach().cpu().double() - ref).norm(dim=1) <= 1e-6 * ref.norm(dim=1).clamp_min(1e-30)).all()
    keep = slice(None) if clip_r is not None else slice(0, -1)  # unclipped 40: tanh saturates, the clamp decides
    err = (u.grad.cpu().double() - u64.grad).norm(dim=1) / u64.grad.norm(dim=1)
    assert err[keep].max() <= 1e-5 and torch.isfinite(u.grad).all()
    # radial derivative d||out||/d||u|| = 1 - z^2 + ... near the series switch: the small radial term, tightly
    u.grad, u64.grad = None, None
    radial = u64.detach() / u64.detach().norm(dim=1, keepdim=True).clamp_min(1e-300)
    (poincare.tangent_to_ball(u, C, clip_r) * radial.float().to(path)).sum().backward()
    (_tangent_reference(u64, C, clip_r) * radial).sum().backward()
    near = slice(3, 9)  # sqrt(c) ||u|| from 3e-5 to 3e-2
    assert ((u.grad.cpu().double() - u64.grad)[near].norm(dim=1) / u64.grad[near].norm(dim=1)).max() <= 1e-6


def test_tangent_to_ball_second_derivatives():
    """The one-formula backward is itself differentiable (gradient penalties through ToPoincare), on every path."""
    gen = torch.Generator().manual_seed(12)
    u = (torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    for clip_r in (2.3, None):
        assert torch.autograd.gradcheck(lambda x: poincare.tangent_to_ball(x, 0.3, clip_r), (u,))
        assert torch.autograd.gradgradcheck(lambda x: poincare.tangent_to_ball(x, 0.3, clip_r), (u,))
    u32 = u.detach().float().requires_grad_()  # the C kernel's forward, the torch formula for the graph
    (g,) = torch.autograd.grad(poincare.tangent_to_ball(u32, 0.3, 2.3).pow(2).sum(), u32, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), u32)
    u64 = u.detach().requires_grad_()
    (g64,) = torch.autograd.grad(_tangent_reference(u64, 0.3, 2.3).pow(2).sum(), u64, create_graph=True)
    (gg64,) = torch.autograd.grad(g64.sum(), u64)
    torch.testing.assert_close(gg.double(), gg64, rtol=1e-4, atol=1e-5)


def test_clip_features_and_conformal_factor():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped = poincare.clip_features(x, 2.3)
    assert torch.allclose(clipped[0], x[0] * 2.3 / 5.0)
    assert torch.equal(clipped[1:], x[1:])
    assert torch.allclose(poincare.lambda_x(x[1:], C), 2 / (1 - C * x[1:].pow(2).sum(1)))


def test_riemannian_gradient_scales_by_inverse_conformal_factor_squared():
    x = torch.tensor([[0.5, 1.0], [1.5, -0.2]], requires_grad=True)
    for c in [0.1, 0.3]:
        x.grad = None
        poincare.riemannian_gradient(x, c).sum().backward()
        expected = ((1 - c * x.detach().pow(2).sum(1, keepdim=True)) ** 2 / 4).expand(-1, 2)
        assert torch.allclose(x.grad, expected)


def test_shape_errors_and_empty_inputs():
    with pytest.raises(ValueError, match="same D"):
        poincare.cdist(torch.zeros(3, 4), torch.zeros(3, 5), C)
    with pytest.raises(ValueError, match="N×D"):
        poincare.cdist(torch.zeros(3), torch.zeros(3, 5), C)
    assert poincare.cdist(torch.zeros(0, 4), torch.zeros(3, 4), C).shape == (0, 3)
