import torch

from .. import poincare
from ..utils.checks import check_curvature


class ToPoincare(torch.nn.Module):
    r"""Map Euclidean features into the Poincaré ball: the last layer of a hyperbolic embedding head.

    .. math:: z = \operatorname{proj}\big(\exp_0(\min(1, r/\|x\|)\,x)\big),
              \qquad \exp_0(u) = \tanh(\sqrt c\|u\|)\,\frac{u}{\sqrt c\|u\|}

    With clipping, :math:`d_c(0, z) = 2\|u\| \le 2r` and :math:`\sqrt c\|z\| \le \tanh(\sqrt c\,r)` (0.62 for the
    Hyp-ViT/HIER defaults c = 0.1, r = 2.3), so embeddings stay away from the boundary. Computed as one scale per row
    by :func:`pml_hyperbolic.poincare.tangent_to_ball`.

    Args:
        c: curvature (> 0), a float or a tensor (pass an ``nn.Parameter`` to learn it; it is registered here).
        clip_r: feature-clipping radius r (Guo et al., CVPR 2022); ``None`` disables clipping.
        riemannian: if True, the backward pass scales the gradient by :math:`(1-c\|z\|^2)^2/4` (hyptorch's
            "Riemannian gradient"), using this instance's own (possibly learnable) c.
    """

    def __init__(self, c=0.1, clip_r=2.3, riemannian=False):
        super().__init__()
        check_curvature(c)
        if clip_r is not None and not clip_r > 0:
            raise ValueError(f"clip_r must be > 0 or None (no clipping), got {clip_r!r}.")
        self.c = c
        self.clip_r = clip_r
        self.riemannian = riemannian

    def forward(self, x):
        """Map (N, D) features to ball points; half-precision input (autocast) is computed and returned in float32."""
        if isinstance(self.c, torch.Tensor):
            check_curvature(self.c)
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = poincare.tangent_to_ball(x.to(torch.promote_types(x.dtype, torch.float32)), self.c, self.clip_r)
            if self.riemannian:
                z = poincare.riemannian_gradient(z, self.c)
        return z

    def extra_repr(self):
        c = float(self.c) if not isinstance(self.c, torch.Tensor) else "learnable"
        return f"c={c}, clip_r={self.clip_r}, riemannian={self.riemannian}"
