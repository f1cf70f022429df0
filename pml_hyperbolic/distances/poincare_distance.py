import torch
from pytorch_metric_learning.distances import BaseDistance

from .. import poincare
from ..utils.checks import check_curvature, check_embeddings, check_in_ball


class PoincareDistance(BaseDistance):
    r"""Geodesic distance of the Poincaré ball with curvature :math:`-c`:

    .. math:: d_c(x, y) = \frac{2}{\sqrt c}\operatorname{asinh}\sqrt{\frac{c\,\|x-y\|^2}{(1-c\|x\|^2)(1-c\|y\|^2)}}

    A non-inverted pml distance (small = similar). ``compute_mat`` uses the matrix-product kernel
    :func:`pml_hyperbolic.poincare.cdist` (O(N·M) memory, float32 speed with float64-like accuracy, exact zeros and
    zero gradients for identical points, ≥ float32 internally under autocast).

    Args:
        c: curvature, a float > 0 or a tensor (e.g. an ``nn.Parameter`` shared with
            :class:`~pml_hyperbolic.layers.ToPoincare` to learn it). A tensor ``c`` is registered on this module.
        normalize_embeddings: pml's flag. Here ``normalize`` is the idempotent projection into the ball
            (:func:`pml_hyperbolic.poincare.project`), not an L2 normalisation; default False, so that points outside
            the ball raise a clear error instead of being silently moved.
        check_inputs: validate that inputs are finite and inside the ball (one host sync per call).
        **kwargs: passed to pml's ``BaseDistance`` (``power``, ``collect_stats``). ``is_inverted=True`` is refused.
    """

    def __init__(self, c=0.1, normalize_embeddings=False, check_inputs=True, **kwargs):
        if kwargs.get("is_inverted", False):
            raise ValueError("PoincareDistance is a distance (is_inverted=False); negate it for a similarity.")
        super().__init__(normalize_embeddings=normalize_embeddings, **kwargs)
        check_curvature(c)
        self.c = c
        self.check_inputs = check_inputs
        if not isinstance(c, torch.Tensor):
            self.add_to_recordable_attributes(list_of_names=["c"], is_stat=False)

    def compute_mat(self, query_emb, ref_emb):
        self._check(query_emb, ref_emb)
        return poincare.cdist(query_emb, ref_emb, self.c)

    def pairwise_distance(self, query_emb, ref_emb):
        self._check(query_emb, ref_emb)
        return poincare.dist(query_emb, ref_emb, self.c)

    def normalize(self, embeddings, dim=1, **kwargs):
        """Idempotent projection into the ball along ``dim`` (pml calls it ``normalize``)."""
        return poincare.project(embeddings, self.c, dim=dim)

    def check_shapes(self, query_emb, ref_emb):
        check_embeddings(query_emb, "query embeddings")
        if ref_emb is not None:
            check_embeddings(ref_emb, "reference embeddings")
            if ref_emb.shape[1] != query_emb.shape[1]:
                raise ValueError(
                    f"query and reference embeddings must have the same width, got {query_emb.shape[1]} "
                    f"and {ref_emb.shape[1]}."
                )

    def _check(self, query_emb, ref_emb):
        if isinstance(self.c, torch.Tensor):
            check_curvature(self.c)
        if self.check_inputs:
            check_in_ball(query_emb, self.c, "query embeddings")
            if ref_emb is not query_emb:
                check_in_ball(ref_emb, self.c, "reference embeddings")
