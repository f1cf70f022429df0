"""Optimizer parameter groups with a separate learning rate for the proxies of loss functions."""

import torch


def param_groups(model, *losses, lr, proxy_lr=None, proxy_lr_mult=None, weight_decay=0.0, proxy_weight_decay=None):
    r"""Torch optimizer parameter groups: one for ``model``, one per loss (its proxies) with a proxy learning rate.

    Proxy-based recipes train the proxies much faster than the network (SoftTriple: 100×, HIER: 50× for its
    hierarchical proxies and 10⁴× for the class proxies). Works for any ``nn.Module`` loss (pml's or this package's)
    and any torch or geoopt optimizer::

        opt = torch.optim.AdamW(param_groups(model, loss, lr=1e-4, proxy_lr_mult=100, weight_decay=1e-4))
        # pml trainers, one optimizer per key:
        optimizers = {"trunk_optimizer": torch.optim.AdamW(param_groups(trunk, lr=1e-4)),
                      "metric_loss_optimizer": torch.optim.AdamW(param_groups(None, loss, lr=1e-4, proxy_lr_mult=100))}

    A parameter appears once (a curvature shared by the model and a loss's distance goes to the model's group,
    one shared by two losses to the first); frozen parameters (``requires_grad=False``) and empty groups are left out.

    Args:
        model: an ``nn.Module`` trained at ``lr``, or None.
        *losses: ``nn.Module`` losses whose parameters are trained at the proxy learning rate.
        lr: learning rate of the model (and the base of ``proxy_lr_mult``).
        proxy_lr: learning rate of the losses' parameters: a number, or a sequence with one value per loss.
        proxy_lr_mult: alternatively, ``proxy_lr = proxy_lr_mult * lr`` (a number or one value per loss).
        weight_decay: weight decay of the model group.
        proxy_weight_decay: weight decay of the loss groups (default: ``weight_decay``).

    Returns:
        A list of dicts ``{"params", "lr", "weight_decay"}``, model first, then the losses in order.
    """
    if model is not None and not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be an nn.Module or None, got {type(model).__name__}.")
    for loss in losses:
        if not isinstance(loss, torch.nn.Module):
            raise ValueError(f"losses must be nn.Module instances, got {type(loss).__name__}.")
    proxy_lrs = _proxy_lrs(len(losses), lr, proxy_lr, proxy_lr_mult)
    proxy_weight_decay = weight_decay if proxy_weight_decay is None else proxy_weight_decay

    seen = set()

    def new_params(module):
        out = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in out)
        return out

    groups = []
    if model is not None:
        groups.append({"params": new_params(model), "lr": lr, "weight_decay": weight_decay})
    for loss, loss_lr in zip(losses, proxy_lrs):
        groups.append({"params": new_params(loss), "lr": loss_lr, "weight_decay": proxy_weight_decay})
    return [g for g in groups if g["params"]]


def _proxy_lrs(num_losses, lr, proxy_lr, proxy_lr_mult):
    """One learning rate per loss from ``proxy_lr`` or ``proxy_lr_mult`` (exactly one of them, if there are losses)."""
    if num_losses == 0:
        return []
    if (proxy_lr is None) == (proxy_lr_mult is None):
        raise ValueError(
            "Give exactly one of proxy_lr (the proxies' learning rate) or proxy_lr_mult "
            "(proxy_lr = proxy_lr_mult * lr)."
        )
    value = proxy_lr if proxy_lr is not None else proxy_lr_mult
    values = list(value) if isinstance(value, (list, tuple)) else [value] * num_losses
    if len(values) != num_losses:
        name = "proxy_lr" if proxy_lr is not None else "proxy_lr_mult"
        raise ValueError(f"{name} has {len(values)} values but {num_losses} losses were given.")
    for v in values:
        if not v > 0:
            raise ValueError(f"proxy learning rates must be > 0, got {value!r}.")
    return values if proxy_lr is not None else [v * lr for v in values]
