"""The Triton LCA pass (backends/triton_lca.py) against a float64 reference of HIER's hinges, the C kernel and the
torch implementation. Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1); with CUDA the same tests run on the GPU. The interpreter is slow: sizes stay small."""

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from pml_hyperbolic.backends import native, triton_lca  # noqa: E402
from pml_hyperbolic.losses.hier_lca import _TripletLCAHinge  # noqa: E402
from pml_hyperbolic.utils.random import counter_uniform  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(), reason="needs CUDA")),
]
NOISES = ["argmax", "uniforms", "key"]
MARGIN = 0.1
KEY = 2**63 + 987654321  # above 2^63: the int64 tensor holds its bits


def needs_c_kernel():
    if native.library() is None:
        pytest.skip("no C compiler: the C kernel is unavailable")


def key_tensor(key, device):
    """The uint64 key as the 0-dim int64 tensor with the same bits."""
    return torch.tensor(key - (1 << 64) if key >= 1 << 63 else key, dtype=torch.int64, device=device)


def block(seed, r=12, p=40, t=60):
    """A distance block with spread rows, its triplets (repeated members included) and hinge weights."""
    g = torch.Generator().manual_seed(seed)
    dist = torch.rand(r, p, generator=g) * (torch.rand(r, 1, generator=g) * 2 + 0.5) + 1
    triplets = tuple(torch.randint(0, r, (3, t), generator=g))
    return dist, triplets, torch.rand(t, generator=g)


def noise_for(kind, t, p, seed=0):
    """None (argmax LCAs), the int key of counter_uniform (run_triton passes it as a device tensor) or uniforms."""
    if kind == "argmax":
        return None
    if kind == "key":
        return KEY
    return torch.rand(2, t, p, generator=torch.Generator().manual_seed(seed)).clamp_min_(1e-7)


def run_triton(dist, triplets, noise, weights, device, tau, block_p=None, strided=False):
    """(lca_pair, lca_triplet, losses, active, dL/dD) of the Triton kernels on ``device``, back on the CPU."""
    dist = dist.to(device)
    if strided:  # the hinge block as a slice of a wider matrix, as HIER passes it
        wide = torch.zeros(len(dist), dist.shape[1] + 5, device=device)
        wide[:, 3 : 3 + dist.shape[1]] = dist
        dist = wide[:, 3 : 3 + dist.shape[1]]
    scaled = (dist * (1 / tau)).contiguous()
    triplets = [x.to(device) for x in triplets]
    if isinstance(noise, int):
        noise = key_tensor(noise, device)
    elif noise is not None:
        noise = noise.to(device)
    a, b, losses, active = triton_lca.lca_forward(scaled, dist, *triplets, noise, MARGIN, block_p=block_p)
    e = active * weights.to(device)
    grad = triton_lca.lca_backward(scaled, *triplets, noise, a, b, e, block_p=block_p)
    return tuple(x.cpu() for x in (a, b, losses, active, grad))


def reference(dist, triplets, noise, weights, tau):
    """HIER's hinges in float64, written as the official code does: hard Gumbel-softmax samples of -max(d)/tau with
    the straight-through gradient (F.gumbel_softmax(hard=True)'s construction), or argmin LCAs without noise.
    Returns (lca_pair, lca_triplet, losses, active, dL/dD)."""
    d = dist.double().requires_grad_()
    i, j, k = triplets
    p = d.shape[1]
    if isinstance(noise, int):
        noise = counter_uniform(noise, (2, len(i), p), torch.float64)
    m1 = torch.maximum(d[i], d[j]) / tau
    m2 = torch.maximum(m1, d[k] / tau)
    lcas, samples = [], []
    for b, m in enumerate((m1, m2)):
        if noise is None:
            lca = m.argmin(1)
            samples.append(F.one_hot(lca, p).double())
        else:
            logits = -m - torch.log(-torch.log(noise[b].double()))
            y = logits.softmax(1)
            lca = logits.argmax(1)
            samples.append(F.one_hot(lca, p).double() - y.detach() + y)
        lcas.append(lca)
    pi1, pi2 = samples
    hinges = torch.stack([
        (d[i] * pi1).sum(1) - (d[i] * pi2).sum(1),
        (d[j] * pi1).sum(1) - (d[j] * pi2).sum(1),
        (d[k] * pi2).sum(1) - (d[k] * pi1).sum(1),
    ]) + MARGIN
    active = (hinges > 0) & (lcas[0] != lcas[1])
    losses = (hinges * active).sum(0)
    (losses * weights.double()).sum().backward()
    return lcas[0], lcas[1], losses.detach(), active.float(), d.grad


def torch_path(dist, triplets, noise, weights, tau):
    """The torch implementation of HIERLoss (_TripletLCAHinge without the C kernel) on the CPU."""
    d = dist.clone().requires_grad_()
    losses, a, b = _TripletLCAHinge.apply(d, *triplets, MARGIN, tau, noise, False)
    (losses * weights).sum().backward()
    return a, b, losses.detach(), d.grad


def c_kernel(dist, triplets, noise, weights, tau):
    """The C kernel (Gumbel modes only): (lca_pair, lca_triplet, losses, active, dL/dD)."""
    scaled = (dist * (1 / tau)).contiguous()
    uniforms, key = (None, noise) if isinstance(noise, int) else (noise, 0)
    a, b, losses, active = native.lca_forward(scaled, *triplets, uniforms, key, dist, MARGIN)
    grad = native.lca_backward(scaled, *triplets, uniforms, key, a, b, active * weights)
    return a, b, losses, active, grad


def assert_grad_close(got, want, scaled_max):
    """Equal to float32 rounding: dL/dm = y (<y, C> - C) cancels in C = e_i s_i + e_j s_j - e_k s_k (|e| <= 1), and
    s = D / tau in float32 is itself off by eps32 * |s|: every float32 implementation (torch's, the C kernel's, this
    one) errs by a few eps32 * max|s| per row against float64."""
    scale = want.abs().max().item()
    assert scale > 0
    atol = 2e-6 * scale + 8 * torch.finfo(torch.float32).eps * scaled_max
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", NOISES)
@pytest.mark.parametrize("block_p, strided", [(None, True), (16, False)])  # one masked chunk; 3 chunks (40 = 16+16+8)
def test_matches_float64_reference(device, kind, block_p, strided):
    dist, triplets, weights = block(0)
    noise = noise_for(kind, len(weights), dist.shape[1])
    got = run_triton(dist, triplets, noise, weights, device, tau=0.2, block_p=block_p, strided=strided)
    want = reference(dist, triplets, noise, weights, tau=0.2)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    collided = want[0] == want[1]
    assert 0 < collided.sum() < len(collided)  # both kinds of triplets are exercised
    assert torch.equal(got[3], want[3]) and 0 < want[3].sum() < want[3].numel()
    torch.testing.assert_close(got[2], want[2].float(), rtol=1e-5, atol=1e-6)
    assert_grad_close(got[4], want[4], dist.max().item() / 0.2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", NOISES)
def test_matches_c_kernel_and_torch_path(device, kind):
    """Same LCAs as both CPU implementations (tau = 0.1, HIER's default), losses and gradients to float32 rounding,
    for far points (d / tau > 300: exp(-d / tau) underflows unless the row minimum is subtracted first)."""
    dist, triplets, weights = block(1, r=10, p=37, t=50)
    dist = dist * 3 + 30  # spread like HIER's blocks, near the boundary
    noise = noise_for(kind, len(weights), dist.shape[1], seed=1)
    got = run_triton(dist, triplets, noise, weights, device, tau=0.1)
    want = torch_path(dist, triplets, noise, weights, tau=0.1)
    hinge_atol = 4 * torch.finfo(torch.float32).eps * dist.max().item()  # D_ia - D_ib + margin cancels
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=hinge_atol)
    assert_grad_close(got[4], want[3], dist.max().item() / 0.1)
    if kind != "argmax":  # the C kernel draws Gumbel LCAs only
        needs_c_kernel()
        c = c_kernel(dist, triplets, noise, weights, tau=0.1)
        assert torch.equal(got[0], c[0]) and torch.equal(got[1], c[1]) and torch.equal(got[3], c[3])
        torch.testing.assert_close(got[2], c[2], rtol=1e-5, atol=hinge_atol)
        assert_grad_close(got[4], c[4], dist.max().item() / 0.1)


def tied_block():
    """Ties everywhere: equal minima in two columns of one chunk (3, 7) and across chunks (7, 23 with 16-column
    chunks), equal uniforms there, repeated triplet members (i = j, k = i) and equal rows (4 and 5)."""
    dist, (i, j, k), weights = block(2, r=10, p=40, t=40)
    dist[5] = dist[4]
    dist[:, [3, 7, 23, 30]] = 0.9  # the minimum of every row
    i[:6], j[:6] = 4, 5  # equal rows: the maxima tie element-wise
    j[6:12] = i[6:12]
    k[12:18] = i[12:18]
    u = torch.rand(2, 40, 40, generator=torch.Generator().manual_seed(2))
    u[0, :20, [7, 23]] = 1 - 2**-24  # the pair block's first 20 triplets pick 7 (not 23)
    u[1, :20, [3, 30]] = 1 - 2**-24  # the triplet block's pick 3 (not 30)
    return dist, (i, j, k), weights, u


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["argmax", "uniforms"])
def test_ties_go_to_the_first_index_and_route_like_the_c_kernel(device, kind):
    dist, triplets, weights, u = tied_block()
    noise = None if kind == "argmax" else u
    got = run_triton(dist, triplets, noise, weights, device, tau=0.1, block_p=16)
    want = torch_path(dist, triplets, noise, weights, tau=0.1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    if kind == "argmax":
        assert (got[0] == 3).all() and (got[1] == 3).all() and (got[2] == 0).all()  # first of 4 tied columns
    else:
        assert (got[0][:20] == 7).all() and (got[1][:20] == 3).all()
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-6)
    if kind == "uniforms":
        assert_grad_close(got[4], want[3], dist.max().item() / 0.1)
        needs_c_kernel()
        c = c_kernel(dist, triplets, u, weights, tau=0.1)
        assert torch.equal(got[0], c[0]) and torch.equal(got[1], c[1]) and torch.equal(got[3], c[3])
        assert_grad_close(got[4], c[4], dist.max().item() / 0.1)
    else:
        assert torch.equal(got[4], want[3])  # all collided: no gradient


@pytest.mark.parametrize("device", DEVICES)
def test_more_than_one_default_chunk(device):
    """P = 1100: two chunks of 1024 columns with the default blocking, against the float64 reference."""
    dist, triplets, weights = block(3, r=5, p=1100, t=4)
    got = run_triton(dist, triplets, KEY, weights, device, tau=0.5)
    want = reference(dist, triplets, KEY, weights, tau=0.5)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and torch.equal(got[3], want[3])
    torch.testing.assert_close(got[2], want[2].float(), rtol=1e-5, atol=1e-6)
    assert_grad_close(got[4], want[4], dist.max().item() / 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_key_is_read_from_device_memory(device):
    """Two keys give different LCAs, each those of counter_uniform(key) given as uniforms, bit for bit; writing a new
    key into the same tensor changes the result (the kernels read it at launch, as a CUDA graph replay needs)."""
    dist, triplets, weights = block(4, r=10, p=37, t=30)
    scaled = (dist * 2.0).to(device)
    triplets = [x.to(device) for x in triplets]
    key = key_tensor(KEY, device)
    outputs = []
    for n, value in enumerate((KEY, 12345)):
        key.copy_(key_tensor(value, device))  # same tensor, new contents
        u = counter_uniform(value, (2, len(weights), dist.shape[1])).to(device)
        by_key = triton_lca.lca_forward(scaled, scaled, *triplets, key, MARGIN)
        by_uniforms = triton_lca.lca_forward(scaled, scaled, *triplets, u, MARGIN)
        assert all(torch.equal(x, y) for x, y in zip(by_key, by_uniforms))
        e = by_key[3] * weights.to(device)
        grad_key = triton_lca.lca_backward(scaled, *triplets, key, *by_key[:2], e)
        grad_uniforms = triton_lca.lca_backward(scaled, *triplets, u, *by_key[:2], e)
        if device == "cpu":  # identical arithmetic on identical noise
            assert torch.equal(grad_key, grad_uniforms)
        else:  # ... but on a GPU the atomics may add in another order
            torch.testing.assert_close(grad_key, grad_uniforms, rtol=1e-5, atol=1e-6 * grad_uniforms.abs().max().item())
        outputs.append(by_key)
    assert not torch.equal(outputs[0][0], outputs[1][0])
    # With a constant block the LCA is the argmax of U itself: the noise is counter_uniform(key), element by element.
    flat = torch.zeros_like(scaled)
    key.copy_(key_tensor(KEY, device))
    a, b, _, _ = triton_lca.lca_forward(flat, flat, *triplets, key, MARGIN)
    u = counter_uniform(KEY, (2, len(weights), dist.shape[1]))
    assert torch.equal(a.cpu(), u[0].argmax(1)) and torch.equal(b.cpu(), u[1].argmax(1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", NOISES)
def test_no_triplets_and_no_active_hinge(device, kind):
    dist, triplets, weights = block(5, r=6, p=20, t=8)
    scaled = dist.to(device)
    none = [torch.zeros(0, dtype=torch.int64, device=device)] * 3
    noise = {"argmax": None, "uniforms": torch.rand(2, 0, 20, device=device), "key": key_tensor(7, device)}[kind]
    a, b, losses, active = triton_lca.lca_forward(scaled, scaled, *none, noise, MARGIN)
    assert a.shape == b.shape == losses.shape == (0,) and active.shape == (3, 0)
    grad = triton_lca.lca_backward(scaled, *none, noise, a, b, active)
    assert torch.equal(grad, torch.zeros_like(scaled))
    # T > 0 with every hinge weight zero (nothing to learn): exactly zero gradient, no NaN
    triplets = [x.to(device) for x in triplets]
    noise = {"argmax": None, "uniforms": torch.rand(2, 8, 20, device=device), "key": key_tensor(7, device)}[kind]
    a, b, losses, active = triton_lca.lca_forward(scaled, scaled, *triplets, noise, MARGIN)
    grad = triton_lca.lca_backward(scaled, *triplets, noise, a, b, torch.zeros_like(active))
    assert torch.equal(grad, torch.zeros_like(scaled))


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors are accepted only by Triton's interpreter")
def test_bad_arguments_get_clear_errors():
    """Checked from shapes and dtypes only (no kernel runs, no host sync)."""
    scaled = torch.rand(6, 20)
    triplets = list(torch.randint(0, 6, (3, 8)))
    with pytest.raises(ValueError, match=r"float32 uniforms of shape \(2, 8, 20\) or a 0-dim int64 key"):
        triton_lca.lca_forward(scaled, scaled, *triplets, torch.rand(2, 8, 19), MARGIN)
    with pytest.raises(ValueError, match="0-dim int64 key"):
        triton_lca.lca_forward(scaled, scaled, *triplets, torch.tensor([3]), MARGIN)
    with pytest.raises(ValueError, match="noise must be None or a tensor"):
        triton_lca.lca_forward(scaled, scaled, *triplets, 12345, MARGIN)
    with pytest.raises(ValueError, match="scaled must be a float32"):
        triton_lca.lca_forward(scaled.double(), scaled, *triplets, None, MARGIN)
    with pytest.raises(ValueError, match="P >= 1"):
        triton_lca.lca_forward(scaled[:, :0], scaled[:, :0], *triplets, None, MARGIN)
    with pytest.raises(ValueError, match="dist must be"):
        triton_lca.lca_forward(scaled, scaled[:, :10], *triplets, None, MARGIN)
    with pytest.raises(ValueError, match=r"Triplet index j must be an int64 tensor of shape \(8,\)"):
        triton_lca.lca_forward(scaled, scaled, triplets[0], triplets[1].int(), triplets[2], None, MARGIN)
    lca = torch.zeros(8, dtype=torch.int64)
    with pytest.raises(ValueError, match="e must be"):
        triton_lca.lca_backward(scaled, *triplets, None, lca, lca, torch.zeros(8))


@pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_with_a_key_drawn_on_the_device():
    """Forward + backward captured in a CUDA graph with the key drawn inside it: each replay equals eager calls with
    the key that replay drew."""
    dist, triplets, weights = block(6, r=40, p=64, t=500)
    scaled, weights = dist.cuda() * 10, weights.cuda()
    triplets = [x.cuda() for x in triplets]
    key = torch.zeros((), dtype=torch.int64, device="cuda")

    def step():
        key.random_()
        a, b, losses, active = triton_lca.lca_forward(scaled, scaled, *triplets, key, MARGIN)
        return a, b, losses, triton_lca.lca_backward(scaled, *triplets, key, a, b, active * weights)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    keys = set()
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        keys.add(int(key))
        a, b, losses, active = triton_lca.lca_forward(scaled, scaled, *triplets, key.clone(), MARGIN)
        grad = triton_lca.lca_backward(scaled, *triplets, key.clone(), a, b, active * weights)
        assert torch.equal(out[0], a) and torch.equal(out[1], b) and torch.equal(out[2], losses)
        torch.testing.assert_close(out[3], grad, rtol=1e-5, atol=1e-6)
    assert len(keys) == 2
