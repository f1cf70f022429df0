"""Who computes: the C kernels (CPU float32), the Triton kernels (CUDA) or plain torch ops. One rule, here.

Every operation that has a kernel asks :func:`select` which implementation to run on its tensors:

* ``"native"``: the C kernels of :mod:`.native` (``csrc/``), for float32 tensors on the CPU and a constant curvature;
* ``"triton"``: the Triton kernels (:mod:`.triton_cdist`, :mod:`.triton_lca`), for float32 CUDA tensors and a
  constant curvature (and for CPU tensors when Triton's interpreter is on, ``TRITON_INTERPRET=1``: the tests);
* ``"torch"``: torch ops, everywhere else (float64, a learnable curvature, no C compiler, no Triton). Each kernel is
  tested against its torch twin.

The public switch is :func:`set_backend` (``"auto"``, the default, or one of the three names to force it where it
applies) or, before the first import, the environment variable ``PML_HYPERBOLIC_BACKEND``. ``"torch"`` turns every
kernel off.
"""

import contextlib
import functools
import os

import torch

_CHOICES = ("auto", "native", "triton", "torch")
_choice = None


def _validated(name, source):
    if name not in _CHOICES:
        raise ValueError(f"{source} must be one of {', '.join(_CHOICES)}, got {name!r}.")
    return name


def get_backend():
    """The current choice: ``"auto"``, ``"native"``, ``"triton"`` or ``"torch"``."""
    global _choice
    if _choice is None:
        _choice = _validated(os.environ.get("PML_HYPERBOLIC_BACKEND", "auto"), "PML_HYPERBOLIC_BACKEND")
    return _choice


def set_backend(name):
    """Choose the implementation for the whole process: ``"auto"`` (C on CPU, Triton on CUDA, torch elsewhere),
    ``"native"`` or ``"triton"`` (that kernel where it applies, torch elsewhere) or ``"torch"`` (no kernels)."""
    global _choice
    _choice = _validated(name, "the backend")


@contextlib.contextmanager
def use(name):
    """:func:`set_backend` for a ``with`` block; the previous choice is restored afterwards."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def launch(kernel, device):
    """Context of one Triton launch: the tensors' CUDA device made current, and a ``triton::<kernel>`` profiler range
    (which also lets :func:`pml_hyperbolic.utils.profiling.count_ops` tell the interpreter's work from the caller's)."""
    stack = contextlib.ExitStack()
    if device.type == "cuda":
        stack.enter_context(torch.cuda.device(device))
    stack.enter_context(torch.profiler.record_function(f"triton::{kernel}"))
    return stack


def row_kernels(kind):
    """The module with the row-wise kernels of a backend: :mod:`.native` ("native") or :mod:`.triton_rows`."""
    if kind == "native":
        from . import native

        return native
    from . import triton_rows

    return triton_rows


@functools.lru_cache(maxsize=None)
def triton_interpreted():
    """Whether Triton runs in its interpreter (``TRITON_INTERPRET=1``): kernels then take CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") and triton_installed()


@functools.lru_cache(maxsize=None)
def triton_installed():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def select(*tensors, kernels=("native", "triton")):
    """``"native"``, ``"triton"`` or ``"torch"`` for an operation on ``tensors`` that has the given kernels.

    Kernels take float32 tensors of one device type and a constant curvature (callers with a learnable one use
    torch). ``"native"`` needs CPU tensors and a C compiler; ``"triton"`` CUDA tensors (or the interpreter) and Triton.
    """
    choice = get_backend()
    if choice == "torch" or any(t.dtype != torch.float32 for t in tensors):
        return "torch"
    device_types = {t.device.type for t in tensors}
    if device_types == {"cpu"}:
        if "native" in kernels and choice in ("auto", "native"):
            from . import native

            if native.library() is not None:
                return "native"
        if "triton" in kernels and choice == "triton" and triton_interpreted():
            return "triton"
        return "torch"
    if device_types == {"cuda"} and "triton" in kernels and choice in ("auto", "triton") and triton_installed():
        return "triton"
    return "torch"


@contextlib.contextmanager
def ieee_matmul(device_type):
    """Float32 matrix products in full IEEE precision inside the block, whatever the process-wide setting is (legacy
    ``allow_tf32``, the ``fp32_precision`` knobs of torch >= 2.9, ``set_float32_matmul_precision``); the setting is
    restored afterwards, also when an exception passes. Only the knob of ``device_type``'s matrix products is read,
    through the API that does not raise for settings made with the other one. The Triton kernels do not need this: their
    products are IEEE by construction."""
    knob = torch.backends.cuda.matmul if device_type == "cuda" else getattr(torch.backends.mkldnn, "matmul", None)
    if knob is not None and hasattr(knob, "fp32_precision"):
        name, previous, wanted = "fp32_precision", knob.fp32_precision, "ieee"
        if previous in ("ieee", "none"):
            knob = None
    elif device_type == "cuda":  # torch < 2.9: the legacy flag
        name, previous, wanted = "allow_tf32", knob.allow_tf32, False
        if not previous:
            knob = None
    else:
        knob = None
    if knob is None:
        yield
        return
    setattr(knob, name, wanted)
    try:
        yield
    finally:
        setattr(knob, name, previous)
