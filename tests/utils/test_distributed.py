"""DistributedLossWrapper: 2 gloo processes under torchrun against one process on the same global batch."""

import os
import subprocess
import sys

import pytest
import torch

from pml_hyperbolic.losses import HyperbolicSoftTripleLoss
from pml_hyperbolic.utils.distributed import DistributedLossWrapper

WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")


def run(args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def assert_close_to_scale(x, ref, rtol=1e-4):
    """Equal up to float32 summation order: errors relative to the tensor's largest entry (a gradient entry that
    nearly cancels may differ relatively more, not absolutely). A world_size× error would be far outside."""
    assert (x - ref).abs().max() <= rtol * ref.abs().max() + 1e-7


CASES = ["softtriple", "softtriple+global_miner", "hier", "hier+local_miner", "chest"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Every case in one single-process launch and one 2-process torchrun launch (interpreters start once)."""
    folder = tmp_path_factory.mktemp("ddp")
    single, multi = str(folder / "single"), str(folder / "ddp")
    run([WORKER, ",".join(CASES), single])
    run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER, ",".join(CASES), multi])
    return single, multi


@pytest.mark.parametrize("case", CASES)
def test_two_processes_match_one_process_on_the_global_batch(outputs, case):
    single, multi = outputs
    ref = torch.load(f"{single}.{case}")
    ranks = [torch.load(f"{multi}.{case}.rank{r}") for r in range(2)]
    for rank in ranks:
        for step, ref_step in zip(rank["steps"], ref["steps"]):
            assert step["loss"] == pytest.approx(ref_step["loss"], rel=1e-5)
            for g, ref_g in zip(step["grads"], ref_step["grads"]):
                assert_close_to_scale(g, ref_g)
        for p, ref_p in zip(rank["params"], ref["params"]):
            assert_close_to_scale(p, ref_p)
    # the loss parameters (proxies) are bit-identical on both ranks
    for p0, p1 in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(p0, p1)


def test_without_a_process_group_it_is_the_plain_loss():
    torch.manual_seed(0)
    loss = HyperbolicSoftTripleLoss(3, 4, centers_per_class=2)
    x, y = torch.randn(9, 4) * 0.3, torch.arange(9) % 3
    assert DistributedLossWrapper(loss)(x, y).item() == loss(x, y).item()
    with pytest.raises(ValueError, match="ref_emb"):
        DistributedLossWrapper(loss)(x, y, ref_emb=x)
