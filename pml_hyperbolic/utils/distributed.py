r"""Data-parallel training (``torch.distributed`` / DDP) with the exact gradients of one process on the global batch.

Each rank computes the loss on the *global* batch (every rank's embeddings, labels and mined tuples gathered in rank
order), so batch-dependent parts (HIER's triplets, pml miners' tuples) see the same batch as one process would, and
every rank gets the same loss and the same gradient for the loss's own parameters (the proxies): they stay identical
on every rank with no synchronisation. The gathered embeddings carry gradient to the local ones only, scaled by the
world size W, so that DDP's *average* over ranks of the model's gradients is the *sum* over the global batch:

.. math:: \frac1W\sum_r W\,\frac{\partial L}{\partial e_r}\frac{\partial e_r}{\partial \theta}
          = \frac{\partial L}{\partial \theta}\quad\text{(one process, global batch)}.

pml's ``DistributedLossWrapper`` (``efficient=False``) instead multiplies the loss by W, which makes the proxies'
gradient W times too large (DDP does not average parameters outside the DDP module). Use::

    model = DDP(model)
    loss_fn = DistributedLossWrapper(CHESTLoss(...))      # broadcasts the loss parameters from rank 0
    loss = loss_fn(model(x_local), y_local)                # same value on every rank
    loss.backward(); optimizer.step()                      # model and proxies: one optimizer, as usual

Randomness inside the loss (HIER's mining and Gumbel noise) must be the same on every rank: give HIER an int seed
(``generator=0``, also through ``CHESTLoss(hier_kwargs=...)``) rather than the global RNG.
"""

import torch
import torch.distributed as dist


def is_distributed():
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_rows(x):
    """Concatenation, in rank order, of every rank's ``x`` (first dimensions may differ between ranks). No gradient."""
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(x)], dtype=torch.long, device=x.device))
    sizes = [int(s) for s in sizes]
    if max(sizes) == 0:
        return x, sizes
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sizes


class _GatherRows(torch.autograd.Function):
    """Forward: every rank's rows in rank order. Backward: W times the gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, x):
        gathered, sizes = all_gather_rows(x)
        rank = dist.get_rank()
        ctx.start, ctx.stop, ctx.world = sum(sizes[:rank]), sum(sizes[: rank + 1]), len(sizes)
        return gathered

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.start : ctx.stop] * ctx.world


def gather_with_grad(x):
    """Every rank's rows of ``x`` in rank order; the gradient flows to this rank's rows, scaled by the world size."""
    return _GatherRows.apply(x)


class DistributedLossWrapper(torch.nn.Module):
    """Runs ``loss`` on the global batch of all ranks, with the gradients of one process (see the module docstring).

    Forward ``(embeddings, labels, indices_tuple=None)`` on this rank's batch. ``indices_tuple`` (from a pml miner
    run on the local batch) is re-indexed into the global batch and gathered, so the loss sees every rank's tuples;
    with ``miner=...`` the miner runs on the global batch instead (as one process would). Outside a process group (or
    with one rank) it calls the loss directly.

    Args:
        loss: any pml loss (``BaseMetricLossFunction``, ``MultipleLosses``, this package's losses).
        miner: optional pml miner run on the gathered batch.
        sync_parameters: broadcast the loss's parameters and buffers from rank 0 at construction, so every rank
            starts from the same proxies whatever its seed.
    """

    def __init__(self, loss, miner=None, sync_parameters=True):
        super().__init__()
        self.loss, self.miner = loss, miner
        if sync_parameters and is_distributed():
            with torch.no_grad():
                for t in [*loss.parameters(), *loss.buffers()]:
                    dist.broadcast(t.data, src=0)

    def state_dict(self, *args, **kwargs):
        """The wrapped loss's state dict: checkpoints are interchangeable with single-process runs."""
        return self.loss.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, *args, **kwargs):
        return self.loss.load_state_dict(state_dict, *args, **kwargs)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        if ref_emb is not None or ref_labels is not None:
            raise ValueError("DistributedLossWrapper does not support ref_emb / ref_labels.")
        if not is_distributed():
            if self.miner is not None and indices_tuple is None:
                indices_tuple = self.miner(embeddings, labels)
            return self.loss(embeddings, labels, indices_tuple)
        if labels is None:
            raise ValueError("DistributedLossWrapper needs labels on every rank.")
        if len(labels) != len(embeddings):
            raise ValueError(f"Got {len(embeddings)} embeddings but {len(labels)} labels.")
        all_labels, sizes = all_gather_rows(labels)
        all_emb = gather_with_grad(embeddings)
        if indices_tuple is not None:
            offset = sum(sizes[: dist.get_rank()])
            indices_tuple = tuple(all_gather_rows(t.to(labels.device) + offset)[0] for t in indices_tuple)
        elif self.miner is not None:
            indices_tuple = self.miner(all_emb, all_labels)
        return self.loss(all_emb, all_labels, indices_tuple)
