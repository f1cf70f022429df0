r"""Functional math of the Poincaré ball :math:`\mathbb{D}^n_c = \{x : c\|x\|^2 < 1\}`, curvature :math:`-c`, c > 0.

Every function takes the curvature ``c`` as a Python float or a tensor (a learnable curvature works: everything
is differentiable in ``c``) and works on the last dimension. Notation used in the docstrings:

* :math:`\alpha_x = 1 - c\|x\|^2` (positive inside the ball), :math:`\lambda_x = 2/\alpha_x` (conformal factor),
* :math:`A = \|x - y\|^2`.

The distance is evaluated in the asinh form, well conditioned both for close pairs and near the boundary:

.. math::

    d_c(x, y) = \frac{2}{\sqrt c}\,\operatorname{asinh}\sqrt{\frac{c\,\|x-y\|^2}{\alpha_x\,\alpha_y}}
              = \frac{2}{\sqrt c}\,\operatorname{artanh}\!\left(\sqrt c\,\|(-x)\oplus_c y\|\right).

Numerical rules (see CONTRIBUTING.md): half-precision inputs are computed in float32 and autocast is disabled
inside, the norms :math:`\|x\|^2` (hence :math:`\alpha`) are accumulated in float64, :math:`\operatorname{asinh}`
is evaluated as ``log1p`` (exact near 0), and :math:`d(x, x)` is exactly 0 with a zero gradient.

The functions live in :mod:`.math`; the autograd Functions with hand-written backwards behind them in
:mod:`.autograd`.
"""

from .math import (
    boundary_eps,
    cdist,
    clip_features,
    dist,
    dist0,
    expmap0,
    lambda_x,
    logmap0,
    max_norm,
    pdist,
    project,
    riemannian_gradient,
    tangent_to_ball,
)

__all__ = [
    "boundary_eps",
    "cdist",
    "clip_features",
    "dist",
    "dist0",
    "expmap0",
    "lambda_x",
    "logmap0",
    "max_norm",
    "pdist",
    "project",
    "riemannian_gradient",
    "tangent_to_ball",
]
