"""Counting what one call costs on a GPU, measurable on any device: aten ops, and the ops that make the host wait for
the device (``.item()``, ``nonzero``, boolean-mask indexing, ``unique``: each a host synchronisation on CUDA)."""

import collections

import torch

SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero",
                      "aten::nonzero_static", "aten::masked_select", "aten::unique", "aten::_unique",
                      "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim"})


def _in_kernel(event):
    """Whether ``event`` ran inside a Triton launch (``triton::`` range): on CPU tensors that is Triton's interpreter
    at work, which on CUDA is one kernel and no aten op."""
    while event is not None:
        if event.name.startswith("triton::"):
            return True
        event = event.cpu_parent
    return False


def count_ops(fn):
    """(aten ops, ops that synchronise on CUDA, Counter of the latter by name, Triton launches) of one ``fn()`` call,
    from ``torch.profiler`` on the CPU (nested aten ops included; the interpreter's ops inside a Triton launch are
    not counted, the launch is)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.events()
    names = [e.name for e in events if e.name.startswith("aten::") and not _in_kernel(e)]
    syncs = collections.Counter(name for name in names if name in SYNC_OPS)
    launches = sum(e.name.startswith("triton::") for e in events)
    return len(names), sum(syncs.values()), syncs, launches
