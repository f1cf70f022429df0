"""Input validation shared by the distances, layers and losses: clear messages, and no host sync on CUDA.

A value check (finite embeddings inside the ball, labels in range, ...) reduces the input to a few numbers on its
device. On the CPU they are read at once and a bad input raises a ``ValueError`` immediately. On CUDA, reading them
would make the host wait for the GPU, so they are copied into pinned host memory without waiting, and read when the
GPU has got there: a bad input raises its ``ValueError`` at the next checked call (usually the next training step),
its message saying so; :func:`raise_pending` waits for and raises any outstanding one (e.g. at the end of an epoch).
Inside a CUDA-graph capture the value checks are skipped (the graph would freeze them). ``set_checks(False)`` skips
them everywhere; shape and dtype checks, which need no device value, always run.
"""

import collections

import torch

_pending = collections.deque()
_enabled = True


def set_checks(enabled):
    """Turn the value checks of inputs (finiteness, ball membership, label range) on or off for the process."""
    global _enabled
    _enabled = bool(enabled)


def raise_pending(wait=True):
    """Raise the ``ValueError`` of an input found bad on the GPU by an earlier call (waiting for the GPU if
    ``wait``)."""
    while _pending and (wait or _pending[0][0].query()):
        event, values, message = _pending.popleft()
        event.synchronize()
        text = message(values.tolist())
        if text:
            _pending.clear()
            raise ValueError(f"{text} (found on the GPU after the call that received it: the check does not stop "
                             "the GPU, so it is raised at the next checked call)")


def _verify(values, message):
    """Raise ValueError(message(values)) if it is not None; ``values`` is a small 1-D tensor on the input's device."""
    if not _enabled:
        return
    if values.device.type != "cuda":
        text = message(values.tolist())
        if text:
            raise ValueError(text)
        return
    raise_pending(wait=False)
    if torch.cuda.is_current_stream_capturing():
        return
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    _pending.append((event, host, message))


def check_curvature(c):
    """Raise ValueError unless the curvature ``c`` (float or tensor) is finite and > 0."""
    if not isinstance(c, torch.Tensor):
        c = torch.tensor(float(c))
    if c.numel() != 1:
        raise ValueError(f"The curvature parameter c must be a single number, got shape {tuple(c.shape)}.")
    text = "The curvature parameter c must be a finite number > 0 (the ball has curvature -c), got {}."
    _verify(c.detach().reshape(1).double(), lambda v: None if 0 < v[0] < float("inf") else text.format(v[0]))


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
    if x.numel() == 0:
        return
    with torch.no_grad():
        norm = torch.linalg.vector_norm(x.detach(), dim=-1, dtype=torch.float64 if x.dtype == torch.float64 else
                                        torch.float32).amax()
        scaled = norm * (c.detach().to(norm).sqrt() if isinstance(c, torch.Tensor) else float(c) ** 0.5)
        _verify(scaled.reshape(1).double(), lambda v: _ball_message(v[0], name))


def _ball_message(largest, name):
    if largest < 1:
        return None
    if largest != largest or largest == float("inf"):
        return f"{name} contain NaN or inf values: check the model output and the learning rate."
    return (f"{name} must lie inside the Poincaré ball of radius 1/sqrt(c) (sqrt(c)*||x|| < 1), but a row does not "
            f"(largest sqrt(c)*||x|| = {largest:.4g}). Map Euclidean features into the ball with "
            "pml_hyperbolic.layers.ToPoincare, or project them with pml_hyperbolic.poincare.project.")


def check_labels(labels, num_classes, name="labels"):
    """Raise ValueError unless ``labels`` is an integer tensor with values in [0, num_classes)."""
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be an integer tensor of class indices, got {kind}.")
    if labels.numel() == 0:
        return
    low, high = torch.aminmax(labels.detach())
    text = (f"{name} must lie in [0, num_classes={num_classes}), got values in [{{:.0f}}, {{:.0f}}]: map the "
            "dataset's labels to 0..C-1 (pml trainers: set_min_label_to_zero=True) or raise num_classes.")
    _verify(torch.stack([low, high]).double(),
            lambda v: None if v[0] >= 0 and v[1] < num_classes else text.format(*v))


def check_indices(indices, size, name):
    """Raise ValueError unless the integer tensors ``indices`` (a tuple) hold values in [0, size)."""
    flat = torch.cat([t.reshape(-1) for t in indices])
    if flat.numel() == 0:
        return
    low, high = torch.aminmax(flat)
    text = f"{name} must lie in [0, {size}), got values in [{{:.0f}}, {{:.0f}}]."
    _verify(torch.stack([low, high]).double(), lambda v: None if v[0] >= 0 and v[1] < size else text.format(*v))


def check_finite(x, message):
    """Raise ValueError(message) if ``x`` holds NaN or inf."""
    if x.numel():
        _verify(torch.isfinite(x.detach()).all().reshape(1).double(), lambda v: None if v[0] else message)
