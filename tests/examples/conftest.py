import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples"))  # the runner package
sys.path.insert(0, os.path.join(HERE, "..", "datasets"))  # benchmark_folders


@pytest.fixture(autouse=True)
def restore_torch_globals():
    """The runner sets torch's thread count and deterministic mode for its process; undo that after each test."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
