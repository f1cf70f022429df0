import torch
from pytorch_metric_learning.distances import BaseDistance

from .. import poincare
from ..poincare.autograd import _exact_sq_dists
from ..utils.checks import check_curvature, check_embeddings, check_in_ball

SPACES = ("euclidean", "hyperbolic", "both")
# 2 - 2 x.y loses ~1e-7 absolutely to cancellation: pairs below this squared distance are recomputed exactly.
_CLOSE_SQ = 1e-2


def _chordal_sq(x, y):
    r"""\|x_i - y_j\|^2 of unit vectors, N×M: :math:`2 - 2\,x_i\cdot y_j` from one matrix product, with the close pairs
    (where the product cancels) taken from exact differences, values and gradients."""
    z = (2 - 2 * (x @ y.t())).float().clamp_min(0)
    with torch.no_grad():
        rows, cols = (z <= _CLOSE_SQ).nonzero(as_tuple=True)
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        exact = (x[rows].float() - y[cols].float()).pow(2).sum(1)
    else:  # chunked: evaluation may have many close pairs
        exact = _exact_sq_dists(x.float(), y.float(), rows, cols)
    return z.index_put((rows, cols), exact)


def _sqrt0(sq):
    """sqrt with a zero gradient (not NaN) at 0."""
    return torch.where(sq > 0, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), torch.zeros_like(sq))


class EuclideanHyperbolicDistance(BaseDistance):
    r"""Distance on embeddings laid out as ``[euclidean part (D_E) | ball part (D_H)]``
    (:class:`~pml_hyperbolic.layers.EuclideanHyperbolicHead`, :class:`~pml_hyperbolic.losses.CHESTLoss`).

    .. math::

        d_E = \|\hat x_E - \hat y_E\| = \sqrt{2 - 2\cos(x_E, y_E)},\qquad d_H = d_c(x_H, y_H),\qquad
        d = \sqrt{w_E\,d_E^2 + w_H\,d_H^2}\ \ (\text{space}=\text{"both"})

    ``space="euclidean"`` ranks exactly as cosine similarity on the Euclidean part, ``space="hyperbolic"`` as the
    Poincaré distance on the ball part, and ``"both"`` uses the product-space distance (the geodesic distance of
    :math:`S^{D_E-1}\times\mathbb D^{D_H}_c` with the chordal metric on the sphere). A non-inverted pml distance:
    usable in ``CustomKNN`` for pml testers; for one space, :meth:`knn_func` gives faiss-based exact search.

    Args:
        euclidean_dim: D_E, the width of the Euclidean part (the rest is the ball part).
        c: curvature of the ball part.
        space: "euclidean", "hyperbolic" or "both".
        euclidean_weight, hyperbolic_weight: w_E, w_H for ``space="both"``.
    """

    def __init__(self, euclidean_dim, c=0.1, space="both", euclidean_weight=1.0, hyperbolic_weight=1.0, **kwargs):
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}.")
        if euclidean_dim < 1:
            raise ValueError(f"euclidean_dim must be >= 1, got {euclidean_dim}.")
        if euclidean_weight < 0 or hyperbolic_weight < 0:
            raise ValueError("euclidean_weight and hyperbolic_weight must be >= 0.")
        super().__init__(normalize_embeddings=False, is_inverted=False, **kwargs)
        check_curvature(c)
        self.euclidean_dim = euclidean_dim
        self.c = c
        self.space = space
        self.euclidean_weight = euclidean_weight
        self.hyperbolic_weight = hyperbolic_weight
        self.add_to_recordable_attributes(list_of_names=["euclidean_weight", "hyperbolic_weight"], is_stat=False)

    def split(self, embeddings):
        """(unit-normalised Euclidean part, ball part) of ``embeddings``."""
        if embeddings.shape[1] <= self.euclidean_dim:
            raise ValueError(
                f"embeddings of width {embeddings.shape[1]} have no ball part after "
                f"euclidean_dim={self.euclidean_dim} columns."
            )
        x_e = torch.nn.functional.normalize(embeddings[:, : self.euclidean_dim], dim=1)
        return x_e, embeddings[:, self.euclidean_dim :]

    def compute_mat(self, query_emb, ref_emb):
        qe, qh = self.split(query_emb)
        re, rh = self.split(ref_emb)
        d_e2 = d_h = None
        if self.space != "hyperbolic":
            d_e2 = _chordal_sq(qe, re)
        if self.space != "euclidean":
            check_in_ball(qh, self.c, "ball part of the query embeddings")
            check_in_ball(rh, self.c, "ball part of the reference embeddings")
            d_h = poincare.cdist(qh, rh, self.c)
        return self._combine(d_e2, d_h)

    def pairwise_distance(self, query_emb, ref_emb):
        qe, qh = self.split(query_emb)
        re, rh = self.split(ref_emb)
        d_e2 = (qe - re).pow(2).sum(1).float() if self.space != "hyperbolic" else None
        d_h = poincare.dist(qh, rh, self.c) if self.space != "euclidean" else None
        return self._combine(d_e2, d_h)

    def _combine(self, d_e2, d_h):
        if d_h is None:
            return _sqrt0(d_e2)
        if d_e2 is None:
            return d_h
        return _sqrt0(self.euclidean_weight * d_e2.to(d_h.dtype) + self.hyperbolic_weight * d_h.square())

    def check_shapes(self, query_emb, ref_emb):
        check_embeddings(query_emb, "query embeddings")
        if ref_emb is not None:
            check_embeddings(ref_emb, "reference embeddings", query_emb.shape[1])

    def knn_func(self):
        """A ``knn_func`` for pml's ``AccuracyCalculator`` ranking by this distance: exact faiss search on the
        relevant part for one space (inner product on the unit Euclidean part, ``PoincareKNN`` on the ball part),
        ``CustomKNN(self)`` for both."""
        from pytorch_metric_learning.utils.inference import CustomKNN, FaissKNN

        from ..utils.inference import PoincareKNN, SliceKNN

        if self.space == "euclidean":  # L2 search on unit vectors ranks as cosine
            return SliceKNN(FaissKNN(), stop=self.euclidean_dim, normalize=True)
        if self.space == "hyperbolic":
            return SliceKNN(PoincareKNN(c=self.c), start=self.euclidean_dim)
        return CustomKNN(self)
