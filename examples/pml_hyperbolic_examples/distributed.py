"""``torchrun --nproc_per_node=N examples/train.py ...``: data-parallel training with the gradients of one process.

Every rank draws the same global batches of ``--batch-size`` (one ``MPerClassSampler``, same seed) and trains on its
share; the trunk and the embedder are wrapped in ``DistributedDataParallel``, the loss in
:class:`pml_hyperbolic.utils.distributed.DistributedLossWrapper` (the loss sees the global batch, the proxies stay
identical on every rank). Rank 0 evaluates, logs and saves checkpoints; the other ranks only train.
"""

import os

import torch
import torch.distributed as dist


def world():
    """(rank, world size) from torchrun's environment; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init(device):
    """Join the process group (NCCL on CUDA, gloo on CPU); on CUDA each rank takes the GPU ``LOCAL_RANK``."""
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"torchrun started local rank {local_rank} but this node has {torch.cuda.device_count()} GPU(s): run "
                "at most one process per GPU (--nproc_per_node), or train on CPU with --device cpu."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def wrap_model(module, device):
    """DDP for a module with trainable parameters. Buffers (BatchNorm statistics) stay per rank: broadcasting them
    would make rank 0's evaluation a collective call that the training ranks never join."""
    if not any(p.requires_grad for p in module.parameters()):
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


class RankShardSampler(torch.utils.data.Sampler):
    """This rank's share of each global batch of ``sampler`` (global batches of ``batch_size``, split in ``world``
    consecutive parts of ``batch_size / world``). Every rank must draw the same order: seed them alike."""

    def __init__(self, sampler, batch_size, rank, world_size):
        if batch_size % world_size:
            raise ValueError(f"--batch-size {batch_size} must be divisible by the number of processes ({world_size}).")
        self.sampler, self.batch_size, self.rank, self.world_size = sampler, batch_size, rank, world_size

    def __len__(self):
        return len(self.sampler) // self.world_size

    def __iter__(self):
        indices = list(self.sampler)
        local = self.batch_size // self.world_size
        for start in range(0, len(indices) - self.batch_size + 1, self.batch_size):
            yield from indices[start + self.rank * local : start + (self.rank + 1) * local]
