import torch

# 1 - 2^-24: subtracted from the floats in [1, 2) built from 23 random mantissa bits (exact in float32).
_ONE_MINUS_HALF_ULP = 1.0 - 2.0**-24


def uniform_open(shape, generator=None, device="cpu", dtype=torch.float32):
    r"""Uniform variates in the open interval (0, 1), e.g. for Gumbel noise :math:`g = -\log(-\log U)`.

    On CPU in float32 each 32-bit half of a random int64 gives 23 mantissa bits :math:`m`, and
    :math:`U = (m + 1/2)\,2^{-23} \in [2^{-24}, 1 - 2^{-24}]`: the same resolution as ``torch.rand`` (24 bits), never
    exactly 0 or 1, and about half its cost (torch's CPU ``random_`` yields 64 bits per draw, ``uniform_`` 32).
    Elsewhere: ``torch.rand`` with the smallest positive value in place of an exact 0.

    Args:
        shape: output shape.
        generator: a ``torch.Generator`` on ``device``, or None for torch's global RNG.
        device, dtype: of the output.
    """
    device = torch.device(device)
    if device.type != "cpu" or dtype != torch.float32:
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return u.clamp_min_(torch.finfo(dtype).tiny)
    n = torch.Size(shape).numel()
    flat = torch.empty(n + n % 2, dtype=torch.float32)  # an even count of 32-bit words: n/2 int64 draws
    flat.view(torch.int64).random_(generator=generator)  # 63 random bits: both halves' low 23 bits are uniform
    flat.view(torch.int32).bitwise_and_(0x7FFFFF).bitwise_or_(0x3F800000)  # floats 1 + m 2^-23 in [1, 2)
    return flat[:n].view(shape).sub_(_ONE_MINUS_HALF_ULP)
