import torch

_GAMMA, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_GAMMA32, _LOWBIAS1, _LOWBIAS2 = 0x9E3779B9, 0x7FEB352D, 0x846CA68B
_BLOCK = 1 << 18  # elements hashed per step (cache-sized temporaries)


def _int64(x):
    """An unsigned 64-bit constant as the int64 with the same bits (torch integer arithmetic wraps modulo 2^64)."""
    return x - (1 << 64) if x >= 1 << 63 else x


def _shift_right(z, n):
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def _splitmix64(key, rows):
    """Outputs ``rows`` (int64 tensor of indices r) of the SplitMix64 stream seeded with key, as int64 bit patterns."""
    z = (rows + 1).mul_(_int64(_GAMMA)).add_(_int64(key))
    z.bitwise_xor_(_shift_right(z, 30)).mul_(_int64(_MIX1))
    z.bitwise_xor_(_shift_right(z, 27)).mul_(_int64(_MIX2))
    return z.bitwise_xor_(_shift_right(z, 31))


def _int32(x):
    """An unsigned 32-bit constant as the int32 with the same bits."""
    return x - (1 << 32) if x >= 1 << 31 else x


def _mix32(x):
    """lowbias32 (C. Wellons) in place on int32 bit patterns (multiplication wraps modulo 2^32)."""
    x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF)).mul_(_int32(_LOWBIAS1))
    x.bitwise_xor_((x >> 15).bitwise_and_(0x1FFFF)).mul_(_int32(_LOWBIAS2))
    return x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))


def counter_uniform(key, shape, dtype=torch.float32, device="cpu", first_row=0):
    r"""Counter-based uniforms in the open interval (0, 1), any element computable on its own.

    The output is viewed as rows × P (P = the last dimension). Row :math:`r` has the 64-bit seed
    :math:`s_r = \operatorname{SplitMix64}(\text{key} + (r + 1)\gamma)` (output :math:`r` of the SplitMix64 generator of
    Steele, Lea, Flood, OOPSLA 2014), split into 32-bit halves :math:`(l_r, h_r)`; element :math:`p` is

    .. math:: x = \mu\big(\mu(l_r + p\,\gamma_{32}) \oplus h_r\big), \qquad
              U = (\lfloor x / 2^9 \rfloor + \tfrac12)\,2^{-23}

    with :math:`\mu` the 32-bit "lowbias32" mixer (a bijection) and arithmetic modulo :math:`2^{32}`: 23 random bits
    per value, in :math:`[2^{-24}, 1 - 2^{-24}]` (never 0 or 1, exact in float32). The native HIER kernel draws the
    same Gumbel noise in place this way, with vector instructions.

    Args:
        key: the stream's seed, an int in [0, 2^64).
        shape: output shape (at least 1-D; the last dimension must be below 2^32).
        dtype, device: of the output (floating point).
        first_row: index r of the output's first row (a block of rows of a larger array).
    """
    if not 0 <= key < 1 << 64:
        raise ValueError(f"key must be an int in [0, 2**64), got {key!r}.")
    shape = torch.Size(shape)
    if len(shape) == 0 or shape[-1] >= 1 << 32:
        raise ValueError(f"shape must have a last dimension in [0, 2**32), got {tuple(shape)}.")
    out = torch.empty(shape, dtype=dtype, device=device)
    cols = shape[-1]
    rows = out.view(-1, cols) if cols else out.view(0, 0)
    step = max(1, _BLOCK // max(cols, 1))
    p = torch.arange(cols, dtype=torch.int32, device=device).mul_(_int32(_GAMMA32))
    for start in range(0, len(rows), step):
        end = min(start + step, len(rows))
        seeds = _splitmix64(key, torch.arange(first_row + start, first_row + end, dtype=torch.int64, device=device))
        lo, hi = seeds.to(torch.int32), _shift_right(seeds, 32).to(torch.int32)  # the low and high 32 bits
        x = _mix32(_mix32(lo[:, None] + p).bitwise_xor_(hi[:, None]))
        rows[start : start + len(seeds)] = (x >> 9).bitwise_and_(0x7FFFFF).to(dtype).add_(0.5).mul_(2.0**-23)
    return out


class DeviceGenerators:
    """A randomness source given as None (torch's global RNG), an int seed (a ``torch.Generator`` seeded with it is
    created on each device, so CPU and CUDA generators draw different streams from the same seed) or a
    ``torch.Generator``; ``get(device)`` returns the generator to draw from on ``device``. ``what`` names the tensors
    drawn for in the error about a generator on another device."""

    def __init__(self, source, what):
        if isinstance(source, bool) or not (source is None or isinstance(source, (int, torch.Generator))):
            raise ValueError(f"generator must be None, an int seed or a torch.Generator, got {source!r}.")
        self.source, self.what, self._seeded = source, what, {}

    def get(self, device):
        device = torch.device(device)
        if isinstance(self.source, torch.Generator):
            if self.source.device.type != device.type:
                raise ValueError(
                    f"The generator is on {self.source.device.type} but {self.what} are on {device.type}: create it "
                    f"with torch.Generator(device='{device.type}'), or pass an int seed."
                )
            return self.source
        if self.source is None:
            return None
        if device not in self._seeded:
            self._seeded[device] = torch.Generator(device=device).manual_seed(self.source)
        return self._seeded[device]
