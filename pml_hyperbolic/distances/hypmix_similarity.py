import torch
from pytorch_metric_learning.distances import BaseDistance

from .. import poincare
from ..utils.checks import check_curvature, check_embeddings, check_in_ball


class HypMixSimilarity(BaseDistance):
    r"""The mixed-geometry similarity of HypMix (Yue et al., WACV 2024), an inverted pml distance:

    .. math:: s(x, y) = \frac{\cos(x_E, y_E)}{\tau_e} - \lambda\,\frac{d_c(x_H, y_H)}{\tau_h}

    With one head (``euclidean_dim=None``, the official HypMix model) the embeddings are Euclidean: :math:`x_E` is
    their L2-normalised direction and :math:`x_H = \exp_0(x_E)` its image in the ball (the official code maps the
    normalised vector with ``ToPoincare``). With ``euclidean_dim=D_E`` the embeddings are ``[Euclidean | ball]``
    (:class:`~pml_hyperbolic.layers.EuclideanHyperbolicHead`) and each part is used as is.

    ``losses.NTXentLoss(temperature=1, distance=HypMixSimilarity(...))`` (or ``SupConLoss``) is the HypMix
    contrastive loss — the temperatures are inside the similarity — and ``CustomKNN(HypMixSimilarity(...))`` ranks
    with it in pml testers.

    Args:
        c: curvature. tau_e, tau_h: temperatures of the two terms. lam: λ, the weight of the hyperbolic term
            (the HypMix README's CUB run: tau_e=0.05, tau_h=0.2, lam=3; its code defaults: 0.1, 0.2, 0.5).
        euclidean_dim: None (one head) or D_E (two-head layout).
    """

    def __init__(self, c=0.1, tau_e=0.1, tau_h=0.2, lam=0.5, euclidean_dim=None, **kwargs):
        if kwargs.get("is_inverted") is False:
            raise ValueError("HypMixSimilarity is a similarity (is_inverted=True).")
        kwargs.pop("is_inverted", None)
        if not (tau_e > 0 and tau_h > 0 and lam >= 0):
            raise ValueError(f"need tau_e > 0, tau_h > 0 and lam >= 0, got {tau_e}, {tau_h}, {lam}.")
        super().__init__(normalize_embeddings=False, is_inverted=True, **kwargs)
        check_curvature(c)
        self.c, self.tau_e, self.tau_h, self.lam = c, tau_e, tau_h, lam
        self.euclidean_dim = euclidean_dim
        self.add_to_recordable_attributes(list_of_names=["tau_e", "tau_h", "lam"], is_stat=False)

    def _parts(self, x):
        if self.euclidean_dim is None:
            x_e = torch.nn.functional.normalize(x, dim=1)
            return x_e, poincare.expmap0(x_e.to(torch.promote_types(x.dtype, torch.float32)), self.c)
        if x.shape[1] <= self.euclidean_dim:
            raise ValueError(
                f"embeddings of width {x.shape[1]} have no ball part after euclidean_dim={self.euclidean_dim}."
            )
        x_h = x[:, self.euclidean_dim :]
        check_in_ball(x_h, self.c, "ball part of the embeddings")
        return torch.nn.functional.normalize(x[:, : self.euclidean_dim], dim=1), x_h

    def compute_mat(self, query_emb, ref_emb):
        qe, qh = self._parts(query_emb)
        re, rh = self._parts(ref_emb)
        d = poincare.cdist(qh, rh, self.c)
        return (qe @ re.t()).to(d.dtype) / self.tau_e - self.lam * d / self.tau_h

    def pairwise_distance(self, query_emb, ref_emb):
        qe, qh = self._parts(query_emb)
        re, rh = self._parts(ref_emb)
        d = poincare.dist(qh, rh, self.c)
        return (qe * re).sum(1).to(d.dtype) / self.tau_e - self.lam * d / self.tau_h

    def check_shapes(self, query_emb, ref_emb):
        check_embeddings(query_emb, "query embeddings")
        if ref_emb is not None:
            check_embeddings(ref_emb, "reference embeddings", query_emb.shape[1])
