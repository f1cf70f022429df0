"""Test-wide setup: without a GPU, Triton kernels run in Triton's interpreter on CPU tensors (set before any
kernel is defined), so the kernels CUDA runs are tested on every machine; the ``path`` fixture runs a test on every
(device, backend) of the distance kernels."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pml_hyperbolic import backends  # noqa: E402  (after TRITON_INTERPRET)
from pml_hyperbolic.backends import native  # noqa: E402

PATHS = [("cpu", "native"), ("cpu", "torch"), ("cpu", "triton")]
if torch.cuda.is_available():
    PATHS += [("cuda", "triton"), ("cuda", "torch")]


@pytest.fixture(params=PATHS, ids=["-".join(p) for p in PATHS])
def path(request):
    """(device, backend) of cdist: float32 with a constant curvature runs the C kernel on CPU and the Triton kernels
    on CUDA (on CPU in Triton's interpreter when the tests run without a GPU); "torch" forces the torch kernel."""
    device, backend = request.param
    if backend == "native" and native.library() is None:
        pytest.skip("no C compiler: the native kernels are not available")
    if device == "cpu" and backend == "triton" and not backends.triton_interpreted():
        pytest.skip("Triton kernels run on CPU tensors only in Triton's interpreter (TRITON_INTERPRET=1)")
    with backends.use(backend):
        assert backends.select(torch.empty(1, device=device)) == backend
        yield torch.device(device)
