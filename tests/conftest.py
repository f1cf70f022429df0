"""Test-wide setup: without a GPU, Triton kernels run in Triton's interpreter on CPU tensors (set before any
kernel is defined), so the kernels CUDA runs are tested on every machine."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
