import math

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction, SoftTripleLoss
from pytorch_metric_learning.utils import common_functions as c_f

from ..distances import EuclideanHyperbolicDistance, PoincareDistance
from ..regularizers import HypHCProxyRegularizer
from ..utils.checks import check_embeddings, check_labels
from .hier_loss import HIERLoss
from .hyperbolic_soft_triple_loss import HyperbolicSoftTripleLoss

# CHEST's defaults for its parts and regularizers, chosen on digits, Fashion-MNIST and the class tree on seeds 10-14
# (benchmarks/quality.py --select; the held-out results are in docs/quality.md).
HYPERBOLIC_DEFAULTS = dict(la=32.0, gamma=0.1, margin=0.01)
EUCLIDEAN_DEFAULTS = dict(la=80, gamma=0.03, margin=0.01)
HIER_DEFAULTS = dict(num_proxies=32, topk=10, triplets_per_anchor=10)
HYPHC_DEFAULTS = dict(similarity="class_means", temperature=0.5, sampling="uniform", num_triplets=1000)
REGULARIZER_WEIGHTS = {"hyphc": 3.0, "hier": 0.5}
REGULARIZERS = ("hyphc", "hier", None)
CLASS_MEANS_MOMENTUM = 0.9


class CHESTLoss(BaseMetricLossFunction):
    r"""CHEST: Combined Hyperbolic and Euclidean Soft Triple loss (Saeki, Kawahara, Aman, arXiv 2510.05643).

    A SoftTriple loss with proxies in the Poincaré ball, a SoftTriple loss with proxies on the sphere (cosine) and a
    regulariser of the hyperbolic proxies, as one pml loss:

    .. math:: L = w_H\,L_{ST}^{H}(z_H) + w_E\,L_{ST}^{E}(z_E) + w_R\,R

    What is the paper's and what is inferred (the method section is not public; docs/chest.md has the sources):
    the two SoftTriple losses in two spaces and the sum are the paper's (abstract, Fig. 1); the regulariser is "based
    on hyperbolic hierarchical clustering" (abstract), the title of HypHC (Chami et al., 2020), and two independent
    summaries say it organises the proxies: so ``regularizer="hyphc"`` is HypHC's relaxed Dasgupta cost on the
    hyperbolic class proxies (:class:`~pml_hyperbolic.regularizers.HypHCProxyRegularizer`, inferred), by default with
    the cosines of running class means of the Euclidean embeddings as similarity (``similarity="class_means"``: the
    only source measured to carry a class hierarchy into the proxies; ``"euclidean"``: the Euclidean proxies);
    ``"hier"`` is HIER (Kim et al., CVPR 2023: learnable LCA proxies and Gumbel LCAs on the batch,
    :class:`~pml_hyperbolic.losses.HIERLoss`). The regularizers' MAP@R differ by less than the seed noise, and HypHC
    with class means is the only one that improves the hierarchy figures (docs/quality.md), so it is the default; no
    CHEST variant reaches pml's ``SoftTripleLoss`` MAP@R there. The weights, temperatures and defaults are ours
    (``benchmarks/quality.py``).

    The parts are submodules: ``hyperbolic_loss`` (:class:`~pml_hyperbolic.losses.HyperbolicSoftTripleLoss`),
    ``euclidean_loss`` (pml's own ``SoftTripleLoss``, cosine similarity) and ``regularizer`` (HypHC or HIER); a part
    whose weight is 0 is not built (None). Their loss terms become this loss's sub-losses, prefixed with the part's
    name (``hyperbolic_loss``, ``euclidean_loss``, ``hyphc_loss`` or ``hier_data_loss`` / ``hier_proxy_loss``, ...),
    each multiplied by its weight and reduced by this loss's ``reducer`` (one copy per sub-loss, summed, as pml does
    for any loss with sub-losses). So ``MeanReducer`` gives exactly the weighted sum of the parts' own outputs; entries
    without a ``"divisor"`` (pml's ``SoftTripleLoss`` gives none) get their number of elements. (pml's
    ``MultipleLosses`` would sum reduced parts; here one reducer sees every sub-loss, which record-keeper logs.)

    Embedding layouts:

    * (a) ``euclidean_dim=None``: the embeddings are ball points (``ToPoincare``); every part sees them, the
      Euclidean SoftTriple through its cosine similarity, i.e. their direction.
    * (b) ``euclidean_dim=D_E``: ``[Euclidean part (D_E) | ball part (embedding_size - D_E)]``, as produced by
      :class:`~pml_hyperbolic.layers.EuclideanHyperbolicHead` (the paper's two heads).

    ``loss.distance`` is the layout's evaluation distance (:class:`~pml_hyperbolic.distances.PoincareDistance`, or
    :class:`~pml_hyperbolic.distances.EuclideanHyperbolicDistance` over both spaces) for pml testers; the loss itself
    compares embeddings with proxies through its parts.

    A pml miner's ``indices_tuple`` weights both SoftTriple parts (as pml's ``SoftTripleLoss`` does) and, with HIER,
    replaces its mining of the data term. ``hier_class_proxies=True`` (HIER only) adds the hyperbolic proxies of the
    batch's classes to HIER's data term as labelled points.

    Args:
        num_classes: number of classes C; labels must lie in [0, C).
        embedding_size: width of the embeddings (D_E + D_H in layout (b)).
        euclidean_dim: D_E for layout (b), or None for layout (a).
        centers_per_class: K proxies per class, in both SoftTriple parts.
        c, clip_r: curvature of the ball and tangent clipping radius of the proxies (SoftTriple and HIER).
        regularizer: ``"hyphc"`` (default), ``"hier"`` or None.
        hyperbolic_weight, euclidean_weight, regularizer_weight: the parts' weights (>= 0; 0 switches a part off;
            ``regularizer_weight=None``: ``REGULARIZER_WEIGHTS[regularizer]``).
        hier_class_proxies: with ``regularizer="hier"``, add the batch classes' hyperbolic proxies to its data term.
        hyperbolic_kwargs, euclidean_kwargs, regularizer_kwargs: the parts' other arguments, merged over
            ``HYPERBOLIC_DEFAULTS``, ``EUCLIDEAN_DEFAULTS`` and ``HYPHC_DEFAULTS`` / ``HIER_DEFAULTS``. HypHC's
            ``similarity`` may also be ``"class_means"`` (its default here): running means of the Euclidean
            embeddings per class (buffer ``class_means``, momentum 0.9), updated every forward. Not ``reducer``:
            this loss's reducer reduces every part.
        **kwargs: pml's ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``, ``collect_stats`` (also
            passed to the parts).
    """

    def __init__(
        self,
        num_classes,
        embedding_size,
        euclidean_dim=None,
        centers_per_class=10,
        c=0.1,
        clip_r=2.3,
        regularizer="hyphc",
        hyperbolic_weight=1.0,
        euclidean_weight=1.0,
        regularizer_weight=None,
        hier_class_proxies=False,
        hyperbolic_kwargs=None,
        euclidean_kwargs=None,
        regularizer_kwargs=None,
        **kwargs,
    ):
        _check_arguments(num_classes, embedding_size, euclidean_dim, regularizer, kwargs,
                         dict(hyperbolic=hyperbolic_kwargs, euclidean=euclidean_kwargs, regularizer=regularizer_kwargs))
        if regularizer_weight is None:
            regularizer_weight = REGULARIZER_WEIGHTS.get(regularizer, 0.0)
        weights = {"hyperbolic": hyperbolic_weight, "euclidean": euclidean_weight, "regularizer": regularizer_weight}
        for name, value in weights.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}_weight must be a finite number >= 0, got {value!r}.")
        if not any(weights.values()):
            raise ValueError("At least one of hyperbolic_weight, euclidean_weight and regularizer_weight must be > 0.")
        if regularizer is None or regularizer_weight == 0:
            regularizer = None
        if regularizer == "hyphc" and not hyperbolic_weight > 0:
            raise ValueError("regularizer='hyphc' regularises the hyperbolic proxies: it needs hyperbolic_weight > 0.")
        if hier_class_proxies and not (regularizer == "hier" and hyperbolic_weight > 0):
            raise ValueError("hier_class_proxies=True needs regularizer='hier' and the hyperbolic part (weight > 0).")
        hyperbolic_dim = embedding_size if euclidean_dim is None else embedding_size - euclidean_dim
        shared = {"collect_stats": kwargs.get("collect_stats")}
        parts, class_means = {}, False
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
        if regularizer == "hier":
            parts["hier"] = HIERLoss(hyperbolic_dim, c=c, clip_r=clip_r,
                                     **{**HIER_DEFAULTS, **shared, **(regularizer_kwargs or {})})
        elif regularizer == "hyphc":
            options = {**HYPHC_DEFAULTS, **shared, **(regularizer_kwargs or {})}
            class_means = options["similarity"] == "class_means"
            if class_means:  # the running class means are passed as the regularizer's "euclidean proxies"
                options["similarity"] = "euclidean"
            parts["hyphc"] = HypHCProxyRegularizer(num_classes, centers_per_class, **options)
        # Read by _sub_loss_names() and get_default_distance() inside super().__init__.
        self.chest_sub_loss_names = [f"{name}_{sub}" for name, part in parts.items() for sub in part.sub_loss_names()]
        self.euclidean_dim, self.c = euclidean_dim, c
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.centers_per_class = centers_per_class
        self.regularizer_name = regularizer
        self.hyperbolic_weight = hyperbolic_weight
        self.euclidean_weight = euclidean_weight
        self.regularizer_weight = regularizer_weight if regularizer else 0.0
        self.hier_class_proxies = hier_class_proxies
        self.hyperbolic_loss = parts.get("hyperbolic")
        self.euclidean_loss = parts.get("euclidean")
        self.regularizer = parts.get(regularizer) if regularizer else None
        if regularizer == "hyphc" and class_means:
            self.register_buffer("class_means", torch.zeros(num_classes, euclidean_dim or embedding_size))
        else:
            self.class_means = None
        self.add_to_recordable_attributes(
            list_of_names=["num_classes", "embedding_size", "centers_per_class", "hyperbolic_weight",
                           "euclidean_weight", "regularizer_weight"],
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

    def knn_func(self, space="both"):
        """The ``knn_func`` for pml's ``AccuracyCalculator`` that ranks this loss's embeddings: layout (a) by the
        Poincaré distance; layout (b) in ``space`` (``"euclidean"``, ``"hyperbolic"`` or ``"both"``)."""
        if self.euclidean_dim is None:
            from ..utils.inference import PoincareKNN

            return PoincareKNN(c=self.c)
        return EuclideanHyperbolicDistance(self.euclidean_dim, c=self.c, space=space).knn_func()

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
                self._add_part(loss_dict, "hyperbolic", self.hyperbolic_weight, self.hyperbolic_loss,
                               self.hyperbolic_loss.compute_loss(z_h, labels, indices_tuple, z_h, labels), z_h)
            if self.euclidean_loss is not None:
                self._add_part(loss_dict, "euclidean", self.euclidean_weight, self.euclidean_loss,
                               self.euclidean_loss.compute_loss(z_e, labels, indices_tuple, z_e, labels), z_e)
            if self.regularizer_name == "hier":
                points, point_labels = self.hier_points(z_h, labels)
                terms = self.regularizer.compute_loss(points, point_labels, indices_tuple, points, point_labels)
                self._add_part(loss_dict, "hier", self.regularizer_weight, self.regularizer, terms, points)
            elif self.regularizer_name == "hyphc":
                if self.class_means is not None:
                    self._update_class_means(z_e, labels)
                    euclidean = self.class_means
                else:
                    euclidean = None if self.euclidean_loss is None else self.euclidean_loss.fc.t()
                proxies = self.hyperbolic_loss.get_proxies(x.dtype)
                terms = self.regularizer.compute_loss(proxies, labels, euclidean_proxies=euclidean)
                self._add_part(loss_dict, "hyphc", self.regularizer_weight, None, terms, None)
        return loss_dict

    @torch.no_grad()
    def _update_class_means(self, euclidean_embeddings, labels):
        """Running means (momentum CLASS_MEANS_MOMENTUM; a class's first batch sets it) of each class's normalised
        Euclidean embeddings: HypHC's similarity with ``similarity="class_means"``. Fixed shapes, no host sync."""
        x = torch.nn.functional.normalize(euclidean_embeddings.detach().to(self.class_means.dtype), dim=1)
        sums = torch.zeros_like(self.class_means).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=self.num_classes).unsqueeze(1)
        seen = counts > 0
        fresh = seen & (self.class_means.abs().sum(1, keepdim=True) == 0)
        momentum = torch.where(fresh, 0.0, CLASS_MEANS_MOMENTUM)
        update = momentum * self.class_means + (1 - momentum) * sums / counts.clamp_min(1)
        self.class_means.copy_(torch.where(seen, update, self.class_means))

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

    @staticmethod
    def _add_part(loss_dict, prefix, weight, part, part_dict, x):
        """The part's loss dict (with its embedding regularizer, as its forward adds it), weighted, prefixed."""
        if part is not None:
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
                logits = self.hyperbolic_weight * self.hyperbolic_loss.get_logits(z_h)
            if self.euclidean_loss is not None:
                self.euclidean_loss.cast_types(x.dtype, x.device)
                euclidean = self.euclidean_loss.get_logits(z_e)
                logits = logits + self.euclidean_weight * self.euclidean_loss.la * euclidean
        return logits

    def _check_inputs(self, embeddings, labels=None):
        """Validate shapes and labels; the embeddings in the working dtype (float64 stays, others become float32).
        The parts validate their own slices (the ball part: finite points inside the ball)."""
        check_embeddings(embeddings, "embeddings", self.embedding_size)
        if embeddings.shape[0] == 0:
            raise ValueError("embeddings is an empty batch.")
        if labels is not None:
            check_labels(labels, self.num_classes)
        return embeddings if embeddings.dtype == torch.float64 else embeddings.float()


def _check_arguments(num_classes, embedding_size, euclidean_dim, regularizer, kwargs, part_kwargs):
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
    if regularizer not in REGULARIZERS:
        raise ValueError(f"regularizer must be 'hyphc', 'hier' or None, got {regularizer!r}.")
    if "distance" in kwargs:
        raise ValueError(
            "CHESTLoss has no distance argument: each part has its own (pass it in hyperbolic_kwargs, "
            "euclidean_kwargs or regularizer_kwargs)."
        )
    for name, value in part_kwargs.items():
        if value is not None and (not isinstance(value, dict) or "reducer" in value):
            raise ValueError(
                f"{name}_kwargs must be a dict of {name} part arguments without 'reducer' (CHESTLoss's reducer "
                f"reduces every part), got {value!r}."
            )
