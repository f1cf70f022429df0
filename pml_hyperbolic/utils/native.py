"""Optional native kernel for HIER's LCA selection, compiled at first use with the system C compiler.

``pml_hyperbolic/csrc/hier_lca.c`` fuses what ``HIERLoss`` does per triplet and candidate (maxima, Gumbel noise,
softmax, argmax, straight-through backward) into one pass per row, on all torch CPU threads; it is several times
faster than the same computation in torch ops. It is built once per machine into a cache folder
(``$PML_HYPERBOLIC_CACHE``, else ``$XDG_CACHE_HOME/pml_hyperbolic`` or ``~/.cache/pml_hyperbolic``) with ``$CC``
(default ``cc``), and loaded with ctypes: no build step at install time, no torch headers. Without a working compiler,
or with ``PML_HYPERBOLIC_NATIVE=0``, :func:`hier_lca` returns None (with a warning in the first case) and the losses
use their torch implementation, which gives the same results.
"""

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "hier_lca.c"
# Reassociation lets the compiler vectorise the row reductions; nothing here needs errno, traps or signed zeros.
_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-pthread", "-fno-math-errno", "-fno-trapping-math",
          "-fno-signed-zeros", "-fassociative-math", "-ffinite-math-only"]
_I64, _F32 = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float)


def _cache_dir():
    if os.environ.get("PML_HYPERBOLIC_CACHE"):
        return Path(os.environ["PML_HYPERBOLIC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pml_hyperbolic"


def _cpu_signature():
    """What -march=native depends on: the CPU's feature flags (Linux), else the processor name."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def _build(compiler):
    """Compile the kernel (with -march=native if the compiler takes it) into the cache; returns the library path."""
    errors = []
    for flags in (_FLAGS + ["-march=native"], _FLAGS):
        tag = hashlib.sha256(repr((_SOURCE.read_bytes(), compiler, flags, _cpu_signature())).encode()).hexdigest()
        target = _cache_dir() / f"hier_lca_{tag[:16]}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        result = subprocess.run([compiler, *flags, str(_SOURCE), "-o", tmp], capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(tmp, target)  # atomic: concurrent processes may build the same file
            return target
        os.unlink(tmp)
        errors.append(result.stderr.strip()[-500:])
    raise RuntimeError("\n".join(errors))


@functools.lru_cache(maxsize=None)
def hier_lca():
    """The loaded kernel library (ctypes), or None if disabled or it cannot be built."""
    if os.environ.get("PML_HYPERBOLIC_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC", "cc")
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"pml_hyperbolic: could not build the native HIER kernel with {compiler!r} ({error}). HIERLoss falls back "
            "to its torch implementation (same results, several times slower on CPU). Install a C compiler (e.g. "
            "gcc), or set CC, or set PML_HYPERBOLIC_NATIVE=0 to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    lib.hier_lca_forward.argtypes = [_F32, ctypes.c_int64, _I64, _I64, _I64, ctypes.c_int64, _F32, ctypes.c_uint64,
                                     _I64, _I64, ctypes.c_int]
    lib.hier_lca_backward.argtypes = [_F32, ctypes.c_int64, ctypes.c_int64, _I64, _I64, _I64, ctypes.c_int64, _F32,
                                      ctypes.c_uint64, _I64, _I64, _F32, _F32, ctypes.c_int]
    for fn in (lib.hier_lca_forward, lib.hier_lca_backward):
        fn.restype = ctypes.c_int
    return lib


def _ptr(t, kind):
    return ctypes.cast(t.data_ptr(), kind) if t is not None else None


def _check(code):
    if code != 0:
        raise MemoryError("The native HIER kernel could not allocate its row buffers.")


def lca_forward(scaled, i, j, k, noise, key):
    """LCAs (pair, triplet) of each triplet; ``scaled`` (R×P float32), ``noise`` (2×T×P uniforms) or None (key)."""
    lib, p, t = hier_lca(), scaled.shape[1], len(i)
    lca1, lca2 = torch.empty(t, dtype=torch.int64), torch.empty(t, dtype=torch.int64)
    _check(lib.hier_lca_forward(_ptr(scaled, _F32), p, _ptr(i, _I64), _ptr(j, _I64), _ptr(k, _I64), t,
                                _ptr(noise, _F32), key, _ptr(lca1, _I64), _ptr(lca2, _I64), torch.get_num_threads()))
    return lca1, lca2


def lca_backward(scaled, i, j, k, noise, key, lca1, lca2, e):
    """dL/dD (R×P) for hinge weights ``e`` (3×T float32); the same arguments as :func:`lca_forward`."""
    lib, (r, p), t = hier_lca(), scaled.shape, len(i)
    grad = torch.zeros(r, p, dtype=torch.float32)
    _check(lib.hier_lca_backward(_ptr(scaled, _F32), r, p, _ptr(i, _I64), _ptr(j, _I64), _ptr(k, _I64), t,
                                 _ptr(noise, _F32), key, _ptr(lca1, _I64), _ptr(lca2, _I64), _ptr(e, _F32),
                                 _ptr(grad, _F32), torch.get_num_threads()))
    return grad
