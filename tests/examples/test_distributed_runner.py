"""The runner under torchrun: 2 gloo processes on CPU train, rank 0 evaluates and checkpoints, and a run resumes."""

import json
import os
import subprocess
import sys

from pml_hyperbolic_examples.distributed import RankShardSampler
from pytorch_metric_learning.samplers import MPerClassSampler

TRAIN = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "train.py")
FAST = ["--device", "cpu", "--samples-per-epoch", "100", "--hier-proxies", "32", "--hier-topk", "10"]
FAST += ["--batch-size", "20"]


def torchrun(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TRAIN, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_rank_shards_partition_each_global_batch():
    labels = [i % 10 for i in range(200)]
    batches = list(MPerClassSampler(labels, m=4, batch_size=20, length_before_new_iter=100))
    shards = []
    for rank in range(2):
        shards.append(list(RankShardSampler(batches, 20, rank, 2)))
        assert len(RankShardSampler(batches, 20, rank, 2)) == 50
    for b in range(5):
        assert shards[0][b * 10 : (b + 1) * 10] + shards[1][b * 10 : (b + 1) * 10] == batches[b * 20 : (b + 1) * 20]


def test_torchrun_trains_evaluates_and_resumes(tmp_path):
    out = str(tmp_path / "run")
    torchrun("--loss", "chest", "--epochs", "1", *FAST, "--output", out)
    with open(os.path.join(out, "results.json")) as f:
        first = json.load(f)
    assert [e["epoch"] for e in first["history"]] == [1]
    assert os.path.exists(os.path.join(out, "saved_models", "metric_loss_1.pth"))
    torchrun("--loss", "chest", "--epochs", "2", *FAST, "--output", out, "--resume")
    with open(os.path.join(out, "results.json")) as f:
        second = json.load(f)
    assert [e["epoch"] for e in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]
