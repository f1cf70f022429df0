"""Building the C kernels: the cache, the fallback without a compiler, the signatures declared once (against the C
sources), results that do not depend on the CPU's instruction set, the packaging, and the one switch that turns every
kernel off."""

import fnmatch
import os
import re
import shutil
from pathlib import Path

import pytest
import tomllib
import torch

from pml_hyperbolic import backends, poincare
from pml_hyperbolic.backends import build, native
from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.losses import CHESTLoss, HIERLoss, HyperbolicSoftTripleLoss
from pml_hyperbolic.miners import ReciprocalTripletMiner

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")


def exported_prototypes():
    """{name: (return type, [argument types])} of the non-static functions defined in csrc/*.c, from the source."""
    out = {}
    for path in build.CSRC.glob("*.c"):
        text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
        for result, name, args in re.findall(r"^(int|int64_t|void)\s+(\w+)\(([^)]*)\)\s*\{", text, flags=re.M):
            types = []
            for arg in args.split(","):
                arg = re.sub(r"\b(const|restrict)\b", "", arg).strip()
                match = re.fullmatch(r"(\w+)\s*(\*?)\s*\w+", arg)
                types.append(match.group(1) + match.group(2))
            out[name] = (result, types)
    return out


def test_signatures_match_the_c_sources():
    assert exported_prototypes() == build.SIGNATURES


@needs_compiler
def test_build_is_cached_and_loads_every_signature(monkeypatch, tmp_path):
    path = build.build(os.environ.get("CC", "cc"), folder=tmp_path)
    assert sorted(tmp_path.glob("kernels_*.so")) == [path] and not list(tmp_path.glob("*.tmp*"))

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(build.subprocess, "run", no_compiling)  # the cached build is found
    lib = build.load(build.build(os.environ.get("CC", "cc"), folder=tmp_path))
    assert all(getattr(lib, name).argtypes for name in build.SIGNATURES)


def test_fallback_without_compiler_warns_and_the_losses_still_work(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("PML_HYPERBOLIC_CACHE", str(tmp_path / "cache"))
    build.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not build the native kernels"):
            assert native.library() is None
        x = ToPoincare(c=0.1)(torch.randn(20, 8)).detach().requires_grad_()
        HIERLoss(8, num_proxies=24, topk=5, generator=0)(x, torch.arange(20) % 4).backward()
        assert torch.isfinite(x.grad).all()
    finally:
        build.library.cache_clear()


def _run_kernels(lib, monkeypatch):
    """Every kernel's outputs on fixed inputs, computed by the library ``lib``."""
    monkeypatch.setattr(native, "library", lambda: lib)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = poincare.expmap0(torch.randn(70, 37, generator=g), 0.1)
    y = poincare.expmap0(torch.randn(90, 37, generator=g), 0.1)
    y[:5] = x[:5] + 1e-4  # close pairs: the exact-difference path
    out = []
    with backends.use("native"):
        for a, b in ((x, y), (x, x)):
            a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
            d = poincare.cdist(a, b, 0.1)
            d.backward(torch.rand(d.shape, generator=g))
            out += [d, a.grad, b.grad]
        p = x.clone().requires_grad_()
        d = poincare.pdist(p, 0.1)
        d.backward(torch.rand(d.shape, generator=g))
        out += [d, p.grad]
        u = (torch.randn(50, 37, generator=g) * 2).requires_grad_()
        t = poincare.tangent_to_ball(u, 0.1, 2.3)
        t.backward(torch.randn(t.shape, generator=g))
        out += [t, u.grad]
        z = ToPoincare(c=0.1)(torch.randn(40, 16, generator=g)).detach().requires_grad_()
        labels = torch.arange(40) % 8
        for loss in (HyperbolicSoftTripleLoss(8, 16, 4), HIERLoss(16, num_proxies=24, topk=6, generator=1)):
            torch.manual_seed(1)
            z.grad = None
            value = loss(z, labels)
            value.backward()
            out += [value, z.grad]
        out += list(ReciprocalTripletMiner(topk=5, generator=2).mine_fixed(-torch.cdist(z, z).detach(), labels))
    return out


@needs_compiler
def test_two_instruction_sets_give_the_same_bits(monkeypatch, tmp_path):
    """Strict IEEE semantics and fixed-order reductions: the kernels built for the x86-64 baseline (SSE2) and for the
    CPU's full instruction set (-march=native: AVX2/AVX-512 here) give bitwise the same results (one thread)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 instruction sets")
    cc = os.environ.get("CC", "cc")
    libs = [build.load(build.build(cc, [build.FLAGS + [flag]], folder=tmp_path)) for flag in
            ("-march=x86-64", "-march=native")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        baseline, native_isa = (_run_kernels(lib, monkeypatch) for lib in libs)
    finally:
        torch.set_num_threads(threads)
    assert len(baseline) == len(native_isa) > 10
    for a, b in zip(baseline, native_isa):
        assert torch.equal(a, b)


def test_the_switch_turns_every_kernel_off(monkeypatch):
    """With backends.use("torch") no C or Triton kernel is called by any distance, layer, loss or miner (counted);
    with "native" the C kernels are."""
    calls = []

    class Counting:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real, name)

    real = build.library()
    if real is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr(native, "library", lambda: Counting())
    from pml_hyperbolic.backends import triton_cdist

    monkeypatch.setattr(triton_cdist, "cdist", lambda *a: calls.append("triton") or pytest.fail("Triton called"))
    x = ToPoincare(c=0.1)(torch.randn(40, 16)).detach()
    labels = torch.arange(40) % 8
    losses = [HyperbolicSoftTripleLoss(8, 16, 4), HIERLoss(16, num_proxies=24, topk=6, generator=0),
              CHESTLoss(8, 16, euclidean_dim=8, centers_per_class=4),
              CHESTLoss(8, 16, centers_per_class=4, regularizer="hier", regularizer_kwargs=dict(num_proxies=24))]
    for backend, expect_calls in (("torch", False), ("native", True)):
        calls.clear()
        with backends.use(backend):
            for loss in losses:
                z = x.clone().requires_grad_()
                loss(z, labels).backward()
            ReciprocalTripletMiner(topk=5)(x, labels)
            ToPoincare(c=0.1)(torch.randn(10, 16, requires_grad=True)).sum().backward()
        assert bool(calls) == expect_calls, (backend, calls)


def test_every_kernel_source_is_packaged():
    """A wheel must ship every file the build compiles or includes (pyproject's package-data globs)."""
    root = Path(build.__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("installed without the source tree")
    globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["pml_hyperbolic"]
    sources = [path.name for path in build.CSRC.iterdir() if path.suffix in (".c", ".h")]
    assert {"parallel.h", "fastmath.h", "ball.h", "lanes.h", "hier_lca.c", "poincare_pdist.c", "poincare_cdist.c",
            "reciprocal_mining.c", "relaxed_similarity.c", "tangent_map.c"} <= set(sources)
    for name in sources:
        assert any(fnmatch.fnmatch(f"backends/csrc/{name}", pattern) for pattern in globs), name
