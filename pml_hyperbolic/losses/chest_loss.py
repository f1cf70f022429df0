import math

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction, SoftTripleLoss
from pytorch_metric_learning.utils import common_functions as c_f

from ..distances import EuclideanHyperbolicDistance, PoincareDistance
from ..utils.checks import check_embeddings, check_in_ball, check_labels
from .hier_loss import HIERLoss
from .hyperbolic_soft_triple_loss import HyperbolicSoftTripleLoss

# CHEST's defaults for its parts, chosen on the digits zero-shot split (benchmarks/digits_chest.py --sweep).
HYPERBOLIC_DEFAULTS = dict(la=32.0, gamma=0.1, margin=0.01)
EUCLIDEAN_DEFAULTS = dict(la=80, gamma=0.03, margin=0.01)
HIER_DEFAULTS = dict(num_proxies=32, topk=10, triplets_per_anchor=10)


class CHESTLoss(BaseMetricLossFunction):
    r"""CHEST: Combined Hyperbolic and Euclidean Soft Triple loss (Saeki, Kawahara, Aman, arXiv 2510.05643).

    A SoftTriple loss with proxies in the Poincaré ball, a SoftTriple loss with proxies on the sphere (cosine) and
    a hyperbolic hierarchical-clustering regulariser (HIER), as one pml loss:

    .. math::

        L = w_H\,L_{ST}^{H}(z_H) + w_E\,L_{ST}^{E}(z_E) + w_{hier}\,L_{HIER}(z_H)

    The parts are submodules: ``hyperbolic_loss``
    (:class:`~pml_hyperbolic.losses.HyperbolicSoftTripleLoss`), ``euclidean_loss`` (pml's own ``SoftTripleLoss``,
    cosine similarity) and ``hier_loss`` (:class:`~pml_hyperbolic.losses.HIERLoss`). A part whose weight is 0 is not
    built (its attribute is None). Their loss terms become this loss's sub-losses, prefixed with the part's name
    (``hyperbolic_loss``, ``hyperbolic_centers_reg_loss``, ``euclidean_loss``, ``euclidean_weight_reg_loss``,
    ``hier_data_loss``, ``hier_proxy_loss``, ...), each multiplied by its part's weight and reduced by this loss's
    ``reducer`` (one copy per sub-loss, summed, as pml does for any loss with several sub-losses). With the default
    ``MeanReducer``, :math:`L` is exactly the weighted sum of the parts' own outputs; reducers with thresholds
    (``ThresholdReducer``) compare the *weighted* losses. Entries without a ``"divisor"`` (pml's ``SoftTripleLoss``
    gives none) get their number of elements, so ``DivisorReducer`` works.

    Embedding layouts:

    * (a) ``euclidean_dim=None``: the embeddings are ball points (``ToPoincare``); every part sees them, the
      Euclidean SoftTriple through its cosine similarity, i.e. their direction.
    * (b) ``euclidean_dim=D_E``: the embeddings are ``[Euclidean part (D_E) | ball part (embedding_size - D_E)]``, as
      produced by :class:`~pml_hyperbolic.layers.EuclideanHyperbolicHead` (the paper's two heads). The Euclidean
      SoftTriple sees the first part, the hyperbolic SoftTriple and HIER the second.

    ``hier_class_proxies=True`` adds the hyperbolic class proxies of the classes in the batch to HIER's data term, as
    points labelled with their class ("regularise the proxies by hierarchical clustering"). HIER's data term uses a
    pml miner's ``indices_tuple`` instead of its own mining when one is given (HIER's rule): the class proxies, which
    the miner's triplets do not index, then take no part. Both SoftTriple parts weight their samples by the
    ``indices_tuple`` as pml's ``SoftTripleLoss`` does.

    All computations run in float32 (float64 for float64 embeddings), also under autocast; the hyperbolic and HIER
    proxies keep their dtype. pml's ``SoftTripleLoss`` casts its centers to the dtype it is given: float32 here.

    Proxy learning rates per part, e.g. with :func:`pml_hyperbolic.utils.optim.param_groups`::

        opt = torch.optim.AdamW(param_groups(None, loss.hyperbolic_loss, loss.euclidean_loss, loss.hier_loss,
                                             lr=1e-4, proxy_lr=[1e-2, 1e-2, 5e-3]))

    (one ``metric_loss_optimizer`` over ``loss.parameters()`` trains them all at one rate).

    Args:
        num_classes: number of classes C; labels must lie in [0, C).
        embedding_size: width of the embeddings (D_E + D_H in layout (b)).
        euclidean_dim: D_E for layout (b), or None for layout (a).
        centers_per_class: K proxies per class, in both SoftTriple parts.
        c, clip_r: curvature of the ball and tangent clipping radius of the proxies (SoftTriple and HIER).
        hyperbolic_weight, euclidean_weight, hier_weight: the parts' weights (>= 0; 0 switches a part off).
        hier_class_proxies: add the batch classes' hyperbolic proxies to HIER's data term (needs the hyperbolic part).
        hyperbolic_kwargs, euclidean_kwargs, hier_kwargs: the parts' other arguments (``la``, ``gamma``, ``margin``,
            ``centers_reg_weight``, ``weight_regularizer``, ``num_proxies``, ``topk``, ``triplets_per_anchor``,
            ``generator``...), merged over ``HYPERBOLIC_DEFAULTS``, ``EUCLIDEAN_DEFAULTS`` and ``HIER_DEFAULTS``.
            Not ``reducer``: this loss's reducer reduces every part.
        **kwargs: pml's ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``, ``collect_stats`` (also
            passed to the parts). ``loss.distance`` is the evaluation distance of the layout (Poincaré distance, or
            :class:`~pml_hyperbolic.distances.EuclideanHyperbolicDistance` on both spaces); the loss does not use it.
    """

    def __init__(
        self,
        num_classes,
        embedding_size,
        euclidean_dim=None,
        centers_per_class=10,
        c=0.1,
        clip_r=2.3,
        hyperbolic_weight=1.0,
        euclidean_weight=1.0,
        hier_weight=0.5,
        hier_class_proxies=False,
        hyperbolic_kwargs=None,
        euclidean_kwargs=None,
        hier_kwargs=None,
        **kwargs,
    ):
        for name, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if euclidean_dim is not None and not (
            isinstance(euclidean_dim, int) and not isinstance(euclidean_dim, bool) and 0 < euclidean_dim < embedding_size
        ):
            raise ValueError(
                f"euclidean_dim must be None (layout (a): ball embeddings) or an int in [1, embedding_size) (layout (b): "
                f"[Euclidean D_E | ball D_H]), got {euclidean_dim!r} with embedding_size={embedding_size}."
            )
        weights = {"hyperbolic": hyperbolic_weight, "euclidean": euclidean_weight, "hier": hier_weight}
        for name, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}_weight must be a finite number >= 0, got {value!r}.")
        if not any(weights.values()):
            raise ValueError("At least one of hyperbolic_weight, euclidean_weight and hier_weight must be > 0.")
        if hier_class_proxies and not (hier_weight > 0 and hyperbolic_weight > 0):
            raise ValueError("hier_class_proxies=True needs the HIER part and the hyperbolic part (both weights > 0).")
        if "distance" in kwargs:
            raise ValueError(
                "CHESTLoss has no distance argument: each part has its own (pass it in hyperbolic_kwargs, "
                "euclidean_kwargs or hier_kwargs)."
            )
        part_kwargs = {"hyperbolic": hyperbolic_kwargs, "euclidean": euclidean_kwargs, "hier": hier_kwargs}
        for name, value in part_kwargs.items():
            if value is not None and (not isinstance(value, dict) or "reducer" in value):
                raise ValueError(
                    f"{name}_kwargs must be a dict of {name} part arguments without 'reducer' (CHESTLoss's reducer "
                    f"reduces every part), got {value!r}."
                )
        hyperbolic_dim = embedding_size if euclidean_dim is None else embedding_size - euclidean_dim
        shared = {"collect_stats": kwargs.get("collect_stats")}
        parts = {}
        if hyperbolic_weight > 0:
            parts["hyperbolic"] = HyperbolicSoftTripleLoss(
                num_classes, hyperbolic_dim, centers_per_class, c=c, clip_r=clip_r,
                **{**HYPERBOLIC_DEFAULTS, **shared, **(hyperbolic_kwargs or {})},
            )  # fmt: skip
        if euclidean_weight > 0:
            parts["euclidean"] = SoftTripleLoss(
                num_classes, euclidean_dim or embedding_size, centers_per_class,
                **{**EUCLIDEAN_DEFAULTS, **shared, **(euclidean_kwargs or {})},
            )  # fmt: skip
        if hier_weight > 0:
            parts["hier"] = HIERLoss(hyperbolic_dim, c=c, clip_r=clip_r, **{**HIER_DEFAULTS, **shared, **(hier_kwargs or {})})
        # Read by _sub_loss_names() and get_default_distance() inside super().__init__.
        self.chest_sub_loss_names = [f"{name}_{sub}" for name, part in parts.items() for sub in part.sub_loss_names()]
        self.euclidean_dim, self.c = euclidean_dim, c
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.centers_per_class = centers_per_class
        self.hyperbolic_weight = hyperbolic_weight
        self.euclidean_weight = euclidean_weight
        self.hier_weight = hier_weight
        self.hier_class_proxies = hier_class_proxies
        self.hyperbolic_loss = parts.get("hyperbolic")
        self.euclidean_loss = parts.get("euclidean")
        self.hier_loss = parts.get("hier")
        self.add_to_recordable_attributes(
            list_of_names=["num_classes", "embedding_size", "centers_per_class", "hyperbolic_weight",
                           "euclidean_weight", "hier_weight"],
            is_stat=False,
        )  # fmt: skip
        if euclidean_dim is not None:
            self.add_to_recordable_attributes(name="euclidean_dim", is_stat=False)

    def _sub_loss_names(self):
        return self.chest_sub_loss_names

    def get_default_distance(self):
        if self.euclidean_dim is None:
            return PoincareDistance(c=self.c)
        return EuclideanHyperbolicDistance(self.euclidean_dim, c=self.c, space="both")

    def split(self, embeddings):
        """(Euclidean part, ball part) of ``embeddings``: the same tensor twice in layout (a)."""
        if self.euclidean_dim is None:
            return embeddings, embeddings
        return embeddings[:, : self.euclidean_dim], embeddings[:, self.euclidean_dim :]

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        x = self._check_inputs(embeddings, labels)
        loss_dict = {}
        with torch.autocast(device_type=x.device.type, enabled=False):
            z_e, z_h = self.split(x)
            if self.hyperbolic_loss is not None:
                self._add_part(loss_dict, "hyperbolic", self.hyperbolic_loss, z_h, labels, indices_tuple)
            if self.euclidean_loss is not None:
                self._add_part(loss_dict, "euclidean", self.euclidean_loss, z_e, labels, indices_tuple)
            if self.hier_loss is not None:
                points, point_labels = self.hier_points(z_h, labels)
                self._add_part(loss_dict, "hier", self.hier_loss, points, point_labels, indices_tuple)
        return loss_dict

    def hier_points(self, ball_embeddings, labels):
        """The points of HIER's data term and their labels: the ball embeddings, then (``hier_class_proxies``) the
        hyperbolic proxies of the classes in ``labels``, class by class (K rows each)."""
        if not self.hier_class_proxies:
            return ball_embeddings, labels
        k = self.centers_per_class
        classes = torch.unique(labels)
        proxies = self.hyperbolic_loss.get_proxies(ball_embeddings.dtype).view(self.num_classes, k, -1)[classes]
        points = torch.cat([ball_embeddings, proxies.flatten(0, 1)])
        return points, torch.cat([labels, classes.repeat_interleave(k)])

    def _add_part(self, loss_dict, prefix, part, x, labels, indices_tuple):
        """The part's loss dict (its ``forward`` without the reduction), weighted, under prefixed names."""
        weight = getattr(self, f"{prefix}_weight")
        if part is self.euclidean_loss:  # pml's SoftTripleLoss
            part_dict = part.compute_loss(x, labels, indices_tuple, x, labels)
        else:  # ours, without re-validating what _check_inputs validated
            part_dict = part._loss_dict(x, labels, indices_tuple)
        part.add_embedding_regularization_to_loss_dict(part_dict, x)
        for name, entry in part_dict.items():
            entry = dict(entry)
            if torch.is_tensor(entry["losses"]):
                if weight != 1:
                    entry["losses"] = entry["losses"] * weight
                if entry["reduction_type"] != "already_reduced":
                    entry.setdefault("divisor", len(entry["losses"]))
            loss_dict[f"{prefix}_{name}"] = entry

    def get_logits(self, embeddings):
        r"""Class scores (batch_size, num_classes): the weighted sum of the SoftTriple parts' scaled logits,
        :math:`w_H\lambda_H S^H + w_E\lambda_E S^E` (the log of the product of their class posteriors, up to a
        constant per sample)."""
        if self.hyperbolic_loss is None and self.euclidean_loss is None:
            raise ValueError("get_logits needs a SoftTriple part: hyperbolic_weight or euclidean_weight must be > 0.")
        x = self._check_inputs(embeddings)
        with torch.autocast(device_type=x.device.type, enabled=False):
            z_e, z_h = self.split(x)
            logits = 0
            if self.hyperbolic_loss is not None:
                logits = self.hyperbolic_weight * self.hyperbolic_loss.la * self.hyperbolic_loss.get_logits(z_h)
            if self.euclidean_loss is not None:
                self.euclidean_loss.cast_types(x.dtype, x.device)
                euclidean = self.euclidean_loss.get_logits(z_e)
                logits = logits + self.euclidean_weight * self.euclidean_loss.la * euclidean
        return logits

    def _check_inputs(self, embeddings, labels=None):
        """Validate; return the embeddings in the working dtype (float64 stays, anything else becomes float32)."""
        check_embeddings(embeddings, "embeddings", self.embedding_size)
        if embeddings.shape[0] == 0:
            raise ValueError("embeddings is an empty batch.")
        if labels is not None:
            check_labels(labels, self.num_classes)
        x = embeddings if embeddings.dtype == torch.float64 else embeddings.float()
        if self.hyperbolic_loss is not None or self.hier_loss is not None:
            name = "embeddings" if self.euclidean_dim is None else f"the ball part (columns {self.euclidean_dim}:) of the embeddings"
            check_in_ball(self.split(x)[1], self.c, name)
        return x
