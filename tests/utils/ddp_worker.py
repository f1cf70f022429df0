"""Trains a small model with one of this package's losses for a few SGD steps, either under torchrun (DDP, each rank
on its share of the global batch, the loss wrapped in DistributedLossWrapper) or in one process on the global batch,
and saves the losses, gradients and parameters of every step: ``python ddp_worker.py CASE[,CASE...] OUT_PREFIX``
(one file per case, ``OUT_PREFIX.CASE`` plus ``.rankN`` under torchrun: one launch for every case)."""

import os
import sys

import torch
import torch.distributed as dist
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.miners import MultiSimilarityMiner, TripletMarginMiner

from pml_hyperbolic.distances import PoincareDistance
from pml_hyperbolic.layers import EuclideanHyperbolicHead, ToPoincare
from pml_hyperbolic.losses import CHESTLoss, HIERLoss, HyperbolicSoftTripleLoss
from pml_hyperbolic.utils.distributed import DistributedLossWrapper

CLASSES, DIM, STEPS = 4, 8, 3
LOCAL_SIZES = (14, 10)  # unequal local batches: the gradients must still be those of the global batch
HIER = dict(num_proxies=16, topk=5, triplets_per_anchor=4, generator=0)


def build(case):
    torch.manual_seed(0)
    if case == "chest":
        model = torch.nn.Sequential(torch.nn.Linear(6, 12), EuclideanHyperbolicHead(12, DIM // 2, DIM // 2))
        loss = CHESTLoss(CLASSES, DIM, euclidean_dim=DIM // 2, centers_per_class=3, regularizer="hier",
                         regularizer_kwargs=HIER)
    else:
        model = torch.nn.Sequential(torch.nn.Linear(6, DIM), ToPoincare(clip_r=1.0))
        if case == "hier":
            loss = HIERLoss(DIM, **HIER)
        else:
            loss = HyperbolicSoftTripleLoss(CLASSES, DIM, centers_per_class=3)
    miner = None
    if case == "softtriple+global_miner":
        miner = MultiSimilarityMiner(epsilon=0.5, distance=PoincareDistance())
    return model, loss, miner


def local_miner(case):
    if case == "hier+local_miner":
        return TripletMarginMiner(margin=0.5, distance=LpDistance())
    return None


def mine_locally(case, emb, y, distributed):
    """A pml miner on each rank's own batch; one process mines each rank's share the same way, with offsets."""
    miner = local_miner(case)
    if miner is None or distributed:
        return miner and miner(emb, y)
    parts, start = [], 0
    for n in LOCAL_SIZES:
        parts.append([t + start for t in miner(emb[start : start + n], y[start : start + n])])
        start += n
    return tuple(torch.cat(ts) for ts in zip(*parts))


def data():
    g = torch.Generator().manual_seed(1)
    n = sum(LOCAL_SIZES)
    return torch.randn(n, 6, generator=g), torch.arange(n) % CLASSES


def main(cases, prefix):
    distributed = "RANK" in os.environ
    torch.set_num_threads(1)
    if distributed:
        dist.init_process_group("gloo")
    for case in cases.split(","):
        run_case(case, f"{prefix}.{case}", distributed)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
        # gloo's worker threads can abort the interpreter's finalisation ("terminate called without an active
        # exception", about 1 run in 6 with torch 2.14): every result is saved, so leave without it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def run_case(case, out_file, distributed):
    x, y = data()
    model, loss, miner = build(case)
    if distributed:
        rank = dist.get_rank()
        if rank == 1:  # a different init on rank 1: the wrapper must broadcast rank 0's proxies
            with torch.no_grad():
                for p in loss.parameters():
                    p.add_(0.5)
        start = sum(LOCAL_SIZES[:rank])
        x, y = x[start : start + LOCAL_SIZES[rank]], y[start : start + LOCAL_SIZES[rank]]
        model = torch.nn.parallel.DistributedDataParallel(model)
        loss_fn = DistributedLossWrapper(loss, miner=miner)
    else:
        loss_fn = DistributedLossWrapper(loss, miner=miner)  # no process group: the plain loss
    params = list(model.parameters()) + list(loss.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    record = []
    for _ in range(STEPS):
        emb = model(x)
        tuples = mine_locally(case, emb, y, distributed)
        value = loss_fn(emb, y, tuples)
        opt.zero_grad()
        value.backward()
        record.append(dict(loss=value.item(), grads=[p.grad.clone() for p in params]))
        opt.step()
    result = dict(steps=record, params=[p.detach().clone() for p in params])
    if distributed:
        out_file = f"{out_file}.rank{dist.get_rank()}"
    torch.save(result, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
