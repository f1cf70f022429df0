"""Building and loading the C kernels of ``csrc/``: compiled at first use with the system C compiler, cached, loaded
with ctypes; the one place that declares their signatures.

The library is built once per machine and source version into ``$PML_HYPERBOLIC_CACHE`` (else
``$XDG_CACHE_HOME/pml_hyperbolic`` or ``~/.cache/pml_hyperbolic``) with ``$CC`` (default ``cc``): no build step at
install time, no torch headers. The flags keep strict IEEE float semantics (no reassociation, no contraction into
FMAs), so every x86-64 (or other) CPU and compiler computes the same bits, and ``-march=native`` (when the compiler
takes it) only changes the speed; the reductions vectorise through fixed lanes (``csrc/lanes.h``). Without a working
compiler, :func:`library` warns once and returns None, and every caller runs its torch implementation.
"""

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
import warnings
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
# No reassociation and no contraction into FMAs: the rounding is the code's on every CPU. Finite math and unsigned zeros
# let selects and clamps vectorise; they change no value of finite inputs (the kernels' inputs are checked finite).
FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-fno-math-errno",
         "-fno-trapping-math", "-ffinite-math-only", "-fno-signed-zeros"]

# Every exported function: (return type, argument types), in the C spelling without const/restrict; checked against
# the C sources by the tests (a mismatch would corrupt memory).
SIGNATURES = {
    "hier_lca_forward": ("int", ["float*", "int64_t", "int64_t*", "int64_t*", "int64_t*", "int64_t", "float*",
                                 "uint64_t", "int64_t*", "int64_t*", "float*", "int64_t", "float", "float*", "float*",
                                 "int"]),
    "hier_lca_backward": ("int", ["float*", "int64_t", "int64_t", "int64_t*", "int64_t*", "int64_t*", "int64_t",
                                  "float*", "uint64_t", "int64_t*", "int64_t*", "float*", "float*", "int"]),
    "poincare_cdist_forward": ("int64_t", ["float*", "float*", "float*", "int64_t", "int64_t", "int64_t", "double",
                                           "double", "float*", "float*", "float*", "int"]),
    "poincare_cdist_backward": ("int", ["float*", "float*", "float*", "float*", "int64_t", "int64_t", "double",
                                        "float*", "float*", "float*", "float*", "int"]),
    "poincare_cdist_flagged": ("int64_t", ["float*", "int64_t", "int64_t", "int64_t*", "int64_t*"]),
    "poincare_cdist_pair_grads": ("int", ["float*", "float*", "int64_t", "int64_t", "int64_t*", "int64_t*", "float*",
                                          "int64_t", "float*", "float*", "int"]),
    "poincare_pdist_forward": ("int", ["float*", "int64_t", "int64_t", "double", "float*", "int"]),
    "poincare_pdist_backward": ("int", ["float*", "int64_t", "int64_t", "double", "float*", "float*", "int"]),
    "reciprocal_triplets": ("int64_t", ["float*", "int64_t", "int64_t*", "int64_t", "int64_t", "int", "float*",
                                        "int64_t*", "int64_t*", "int64_t*", "float*"]),
    "relaxed_similarity_forward": ("int", ["float*", "int64_t", "int64_t", "int64_t", "float", "float", "float*",
                                           "float*", "int"]),
    "relaxed_similarity_backward": ("int", ["float*", "int64_t", "int64_t", "int64_t", "float", "float", "float*",
                                            "float*", "float*", "float*", "int"]),
    "tangent_to_ball_forward": ("void", ["float*", "int64_t", "int64_t", "double", "double", "double", "float*"]),
    "tangent_to_ball_backward": ("void", ["float*", "float*", "int64_t", "int64_t", "double", "double", "double",
                                          "float*"]),
}
_CTYPES = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "uint64_t": ctypes.c_uint64, "float": ctypes.c_float,
           "double": ctypes.c_double, "float*": ctypes.POINTER(ctypes.c_float),
           "int64_t*": ctypes.POINTER(ctypes.c_int64), "void": None}


def cache_dir():
    if os.environ.get("PML_HYPERBOLIC_CACHE"):
        return Path(os.environ["PML_HYPERBOLIC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pml_hyperbolic"


def build(compiler, flag_sets=(FLAGS + ["-march=native"], FLAGS), folder=None):
    """Compile the kernels with the first flag set the compiler takes, into ``folder`` (default :func:`cache_dir`),
    once per source version, compiler and flags; returns the library's path."""
    errors = []
    sources = sorted(CSRC.glob("*.c"))
    code = [path.read_bytes() for path in sorted(CSRC.glob("*.[ch]"))]
    folder = Path(folder) if folder is not None else cache_dir()
    for flags in flag_sets:
        tag = hashlib.sha256(repr((code, compiler, flags)).encode()).hexdigest()
        target = folder / f"kernels_{tag[:16]}.so"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        command = [compiler, *flags, *map(str, sources), "-o", tmp, "-lm"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(tmp, target)  # atomic: concurrent processes may build the same file
            return target
        os.unlink(tmp)
        errors.append(result.stderr.strip()[-500:])
    raise RuntimeError("\n".join(errors))


def load(path):
    """The library at ``path`` with every function's ctypes signature set from :data:`SIGNATURES`."""
    lib = ctypes.CDLL(str(path))
    for name, (result, arguments) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = _CTYPES[result], [_CTYPES[a] for a in arguments]
    return lib


@functools.lru_cache(maxsize=None)
def library():
    """The loaded kernel library, or None (with one warning) if it cannot be built."""
    compiler = os.environ.get("CC", "cc")
    try:
        return load(build(compiler))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"pml_hyperbolic: could not build the native kernels with {compiler!r} ({error}). The losses and distances "
            "fall back to their torch implementations (same results, several times slower on CPU). Install a C "
            "compiler (e.g. gcc), or set CC, or set PML_HYPERBOLIC_BACKEND=torch to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
