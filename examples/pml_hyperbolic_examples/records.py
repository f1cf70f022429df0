"""Each sub-loss's value per iteration, for record-keeper: pml's hooks log only ``metric_loss`` and ``total_loss``."""

import torch
from pytorch_metric_learning.losses import MultipleLosses
from pytorch_metric_learning.reducers import MultipleReducers


class SubLosses:
    """The latest reduced value of every sub-loss of ``loss``, read from its reducers by forward hooks (the loss
    classes are untouched, and nothing is copied to the host until :meth:`scalars`).

    pml reduces a loss's ``loss_dict`` with one reducer per sub-loss name (a ``MultipleReducers`` when there are
    several), each called with ``{name: entry}``; the hook keeps what it returns. Names are
    ``metric_loss/<sub-loss>``, with the part's name inside a ``MultipleLosses`` (``metric_loss/hier/data_loss``).
    A name not computed yet reads as NaN.
    """

    def __init__(self, loss, prefix="metric_loss/"):
        self.values = {}
        parts = [(None, loss)]
        if isinstance(loss, MultipleLosses):
            parts = loss.losses.items() if isinstance(loss.losses, torch.nn.ModuleDict) else enumerate(loss.losses)
        for name, part in parts:
            reducer = getattr(part, "reducer", None)
            if reducer is None or not hasattr(part, "sub_loss_names"):
                continue
            part_prefix = prefix if name is None else f"{prefix}{name}/"
            for sub in part.sub_loss_names():
                self.values[part_prefix + sub] = torch.tensor(float("nan"))
            reducers = [reducer]
            if isinstance(reducer, MultipleReducers):
                reducers = [*reducer.reducers.values(), reducer.default_reducer]
            for r in reducers:
                r.register_forward_hook(self._keep(part_prefix))

    def _keep(self, prefix):
        def hook(module, args, output):
            loss_dict = args[0]
            if len(loss_dict) == 1:
                self.values[prefix + next(iter(loss_dict))] = output.detach() if torch.is_tensor(output) else output

        return hook

    def scalars(self):
        """``{name: float}`` (reads the values from the device)."""
        return {k: float(v) for k, v in self.values.items()}
