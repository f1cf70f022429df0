import torch

from .to_poincare import ToPoincare


class EuclideanHyperbolicHead(torch.nn.Module):
    r"""Two embedding heads on shared backbone features, concatenated (CHEST's layout):

    .. math:: z = \big[\ \operatorname{normalize}(W_E f)\ \big|\ \operatorname{ToPoincare}(W_H f)\ \big]
              \in S^{D_E-1} \times \mathbb D^{D_H}_c

    The first ``euclidean_dim`` columns are a unit vector (cosine geometry), the last ``hyperbolic_dim`` columns a
    point of the Poincaré ball. :class:`~pml_hyperbolic.losses.CHESTLoss` splits the two parts;
    :class:`~pml_hyperbolic.distances.EuclideanHyperbolicDistance` evaluates either space or both.

    Args:
        in_features: width of the backbone features.
        euclidean_dim: D_E.
        hyperbolic_dim: D_H.
        c, clip_r, riemannian: passed to :class:`~pml_hyperbolic.layers.ToPoincare`.
        layer_norm: apply an affine-free LayerNorm to the features first (as HIER's head does).
    """

    def __init__(
        self, in_features, euclidean_dim, hyperbolic_dim, c=0.1, clip_r=2.3, riemannian=False, layer_norm=False
    ):
        super().__init__()
        if euclidean_dim < 1 or hyperbolic_dim < 1:
            raise ValueError(
                f"euclidean_dim and hyperbolic_dim must be >= 1, got {euclidean_dim} and {hyperbolic_dim}."
            )
        self.euclidean_dim = euclidean_dim
        self.hyperbolic_dim = hyperbolic_dim
        self.norm = torch.nn.LayerNorm(in_features, elementwise_affine=False) if layer_norm else torch.nn.Identity()
        self.euclidean = torch.nn.Linear(in_features, euclidean_dim)
        self.hyperbolic = torch.nn.Linear(in_features, hyperbolic_dim)
        self.to_poincare = ToPoincare(c=c, clip_r=clip_r, riemannian=riemannian)

    def knn_func(self, space="both"):
        """The ``knn_func`` for pml's ``AccuracyCalculator`` that ranks this head's embeddings in ``space``:
        ``"euclidean"`` (cosine), ``"hyperbolic"`` (Poincaré) or ``"both"`` (the product-space distance), see
        :meth:`pml_hyperbolic.distances.EuclideanHyperbolicDistance.knn_func`."""
        from ..distances import EuclideanHyperbolicDistance

        return EuclideanHyperbolicDistance(self.euclidean_dim, c=self.to_poincare.c, space=space).knn_func()

    def forward(self, features):
        features = self.norm(features)
        z_e = torch.nn.functional.normalize(self.euclidean(features), dim=1)
        z_h = self.to_poincare(self.hyperbolic(features))
        return torch.cat([z_e.to(z_h.dtype), z_h], dim=1)
