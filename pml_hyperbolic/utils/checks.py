"""Input validation shared by the distances, layers and losses: clear messages, one host sync per check."""

import torch


def check_curvature(c):
    """Raise ValueError unless the curvature ``c`` (float or tensor) is finite and > 0."""
    value = c.detach() if isinstance(c, torch.Tensor) else torch.tensor(float(c))
    if value.numel() != 1 or not bool(torch.isfinite(value).all() and (value > 0).all()):
        raise ValueError(
            f"The curvature parameter c must be a finite number > 0 (the ball has curvature -c), got {c!r}."
        )


def check_embeddings(x, name="embeddings", dim=None):
    """Raise ValueError unless ``x`` is a 2-D floating tensor (of width ``dim`` when given)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor of shape (batch_size, embedding_size), got {shape}.")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got dtype {x.dtype}.")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have width {x.shape[1]}, but this module was built for embedding_size={dim}.")


def check_in_ball(x, c, name="embeddings"):
    """Raise ValueError if a row of ``x`` is not finite or lies outside the open ball c ||x||^2 < 1."""
    with torch.no_grad():
        x = x.detach()
        sq = (x if x.dtype == torch.float64 else x.float()).pow(2).sum(-1)
        cn = (c.detach().to(sq.dtype) if isinstance(c, torch.Tensor) else c) * sq
        bad = ~(cn < 1)  # also catches NaN
        if bool(bad.any()):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contain NaN or inf values: check the model output and the learning rate.")
            worst = float(cn.max().sqrt())
            raise ValueError(
                f"{name} must lie inside the Poincaré ball of radius 1/sqrt(c) (sqrt(c)*||x|| < 1), but "
                f"{int(bad.sum())} row(s) do not (largest sqrt(c)*||x|| = {worst:.4g}). Map Euclidean features into "
                "the ball with pml_hyperbolic.layers.ToPoincare, or project them with pml_hyperbolic.poincare.project."
            )
