"""HypHC's relaxed Dasgupta cost as a pml regularizer of a loss's proxies: one class with its options (leaves,
similarity sources, sampling) and their validation, hence the length; the per-triplet cost is in
:mod:`.relaxed_dasgupta`."""

import math

import torch
import torch.nn.functional as F
from pytorch_metric_learning.regularizers import BaseRegularizer

from .. import backends
from ..utils.random import DeviceGenerators
from .relaxed_dasgupta import _MIN_NORM, _depth, _FusedRelaxedDasgupta, _RelaxedDasgupta, _rho, _sq

# HypHC's clamp of the leaves' radius in the unit ball (model/hyphc.py: min scale 1e-2, max_scale 1 - 1e-3).
MIN_RADIUS, MAX_RADIUS = 1e-2, 1 - 1e-3
_SIMILARITIES = ("hyperbolic", "euclidean", "labels")


class HypHCProxyRegularizer(BaseRegularizer):
    r"""HypHC's continuous Dasgupta loss (Chami et al., NeurIPS 2020) on a loss's proxies: the proxies' directions
    become the leaves of a hyperbolic tree whose shape should follow a similarity between the classes.

    The leaves are unit directions :math:`u_i` placed on one sphere of radius :math:`r` in the unit Poincaré ball.
    The lowest common ancestor of two leaves is the point of their geodesic closest to the origin; its distance
    from the origin (its depth) depends only on the angle :math:`\theta_{ij}` between them:

    .. math::

        \delta_{ij} = \operatorname{artanh}\bigl(\rho \cos(\theta_{ij}/2)\bigr), \qquad \rho = \frac{2r}{1 + r^2}
        = \tanh(d(o, r u)),

    computed without cancellation (float32 is accurate for every angle and radius, identical leaves included; see
    :mod:`~pml_hyperbolic.regularizers.relaxed_dasgupta`). For a triplet of leaves :math:`(i, j, k)` with
    similarities :math:`w`:

    .. math::

        \ell_{ijk} = \sum_{(a,b)} w_{ab}\,\bigl(1 - \operatorname{softmax}(\delta/\tau)_{ab}\bigr),
        \qquad (a, b) \in \{(i,j), (i,k), (j,k)\},

    which tends, as :math:`\tau \to 0`, to :math:`w_{ij} + w_{ik} + w_{jk} - w_{\text{first merged pair}}`. Summed
    over all triplets, plus :math:`2\sum_{i<j} w_{ij}`, this is Dasgupta's cost of the tree the leaves encode.

    Leaves (``leaves``):

    * ``"classes"``: one leaf per class, the direction :math:`\operatorname{normalize}(\sum_k p_c^k)` of the mean
      of its K proxies (:meth:`class_directions`);
    * ``"proxies"``: every proxy is a leaf (pairs of one class then get the class's similarity, 1 for the
      similarity sources below).

    Similarity (``similarity``) between the classes :math:`c, d` of two leaves, never built as a C×C matrix:

    * ``"hyperbolic"``: :math:`(1 + \cos)/2` of the class directions of the proxies themselves;
    * ``"euclidean"``: :math:`(1 + \cos)/2` of the class directions of another set of proxies passed to
      :meth:`forward` (CHEST's cross-space reading: the Euclidean SoftTriple's proxies);
    * ``"labels"``: 1 for leaves of one class, else 0 (with ``leaves="proxies"``);
    * a (C, C) tensor (symmetric, finite, >= 0), or a callable ``f(a, b)`` returning the similarities of the class
      index tensors ``a`` and ``b`` (same shape).

    With ``detach_similarity`` (default) the similarity is a constant, as HypHC's: gradients reach only the leaves'
    directions and the learned radius.

    Triplets (``sampling``), drawn every call with three distinct leaves, fixed shapes, no host sync:

    * ``"uniform"``: ``num_triplets`` triplets, the anchor uniform over the leaves, the other two uniform over the
      rest (HypHC's sampling, without its triplets that repeat a leaf);
    * ``"batch"``: ``triplets_per_anchor`` triplets per sample of ``labels`` (its class, or one of its class's
      proxies drawn uniformly, is the anchor), the other two uniform over the other leaves.

    The random numbers come from ``generator`` (one ``torch.rand`` call per forward); to inject triplets, override
    :meth:`sample_triplets` (on the class or an instance).

    Where it runs: on CUDA (float32 proxies, ``dtype=torch.float32``) the loss and its gradients are two Triton
    launches (:mod:`pml_hyperbolic.backends.triton_dasgupta`) that form the leaves, and the detached
    ``"hyperbolic"`` / ``"euclidean"`` similarities, from the proxies themselves; elsewhere torch ops (the reference
    the kernels are tested against; ``pml_hyperbolic.backends.set_backend("torch")`` selects them everywhere).

    Args:
        num_classes: C.
        centers_per_class: K, the proxies per class: the proxies have C·K rows, row ``c * K + k`` is proxy k of
            class c (the layout of :class:`~pml_hyperbolic.losses.HyperbolicSoftTripleLoss` and pml's
            ``SoftTripleLoss``).
        leaves: ``"classes"`` or ``"proxies"`` (at least 3 leaves).
        leaf_radius: a fixed radius in [1e-2, 1 - 1e-3] (HypHC's range), or ``"learned"``: a parameter ``radius``
            initialised to 0.05 and clamped to that range in the forward, as HypHC's (train it with the proxies;
            docs/hyphc.md says why the default is fixed).
        similarity: ``"hyperbolic"``, ``"euclidean"``, ``"labels"``, a (C, C) tensor or a callable (see above).
        detach_similarity: no gradient through ``"hyperbolic"`` or ``"euclidean"`` similarities.
        sampling: ``"uniform"`` or ``"batch"``.
        num_triplets: triplets per call for ``"uniform"``.
        triplets_per_anchor: triplets per sample for ``"batch"`` (25 at a batch of 180 with 2 samples per class is
            50 per batch class, 4,500 in all).
        temperature: τ, in depth units of the unit ball (HypHC's examples use 0.05 to 0.1; 0.2 fitted known trees
            best with r = 0.99, 0.5 and 0.05 worse).
        dtype: ``torch.float32`` or ``torch.float64``, the dtype of the per-triplet computation (the class
            directions are computed in the proxies' dtype, float32 for half types). Autocast is disabled inside.
        generator: None (torch's global RNG), an int seed (a ``torch.Generator`` seeded with it is created on each
            device at first use), or a ``torch.Generator`` on the proxies' device.
        **kwargs: pml's ``reducer`` and ``collect_stats``. There is no ``distance``.

    Reducer input: one element per triplet (``"element"``), with ``divisor`` = number of triplets (so
    ``MeanReducer``, the default, and ``DivisorReducer`` give the mean). Its indices point into the reducer's labels:
    with ``"batch"`` the anchor's sample (labels: the batch labels, as in a loss that calls :meth:`compute_loss`),
    with ``"uniform"`` the anchor leaf (labels: the classes of the leaves), so ``ClassWeightedReducer(weights)`` weighs
    each triplet by its anchor's class either way.

    Stats (``collect_stats=True``, one host sync each): ``excess``, the mean of
    :math:`\ell - (\sum w - \max w)` (0 when every triplet's deepest pair is its most similar one), and
    ``current_radius``.
    """

    def __init__(
        self,
        num_classes,
        centers_per_class=1,
        leaves="classes",
        leaf_radius=0.99,
        similarity="hyperbolic",
        detach_similarity=True,
        sampling="uniform",
        num_triplets=4500,
        triplets_per_anchor=25,
        temperature=0.2,
        dtype=torch.float32,
        generator=None,
        **kwargs,
    ):
        if "distance" in kwargs:
            raise ValueError(
                "HypHCProxyRegularizer has no distance argument: the depths are HypHC's closed form on the "
                "proxies' directions."
            )
        _check_int("num_classes", num_classes, 1)
        _check_int("centers_per_class", centers_per_class, 1)
        if leaves not in ("classes", "proxies"):
            raise ValueError(f"leaves must be 'classes' or 'proxies', got {leaves!r}.")
        num_leaves = num_classes if leaves == "classes" else num_classes * centers_per_class
        if num_leaves < 3:
            raise ValueError(f"HypHC's triplets need at least 3 leaves, got {num_leaves} ({leaves!r}).")
        if leaf_radius != "learned" and not (
            isinstance(leaf_radius, (int, float)) and not isinstance(leaf_radius, bool)
            and MIN_RADIUS <= leaf_radius <= MAX_RADIUS
        ):
            raise ValueError(
                f"leaf_radius must be 'learned' or a number in [{MIN_RADIUS}, {MAX_RADIUS}] (the leaves' radius in "
                f"the unit ball, HypHC's range), got {leaf_radius!r}."
            )
        _check_similarity(similarity, num_classes, leaves, centers_per_class)
        if sampling not in ("uniform", "batch"):
            raise ValueError(f"sampling must be 'uniform' or 'batch', got {sampling!r}.")
        _check_int("num_triplets", num_triplets, 1)
        _check_int("triplets_per_anchor", triplets_per_anchor, 1)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}.")
        generators = DeviceGenerators(generator, "the proxies")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.centers_per_class = centers_per_class
        self.leaves = leaves
        self.num_leaves = num_leaves
        self.leaf_radius = leaf_radius
        self.similarity = similarity
        self.detach_similarity = bool(detach_similarity)
        self.sampling = sampling
        self.num_triplets = num_triplets
        self.triplets_per_anchor = triplets_per_anchor
        self.temperature = float(temperature)
        self.dtype = dtype
        self.generator = generator
        self._generators = generators
        if leaf_radius == "learned":
            self.radius = torch.nn.Parameter(torch.tensor(0.05))
        if isinstance(similarity, torch.Tensor):
            self.register_buffer("similarity_matrix", similarity.detach().clone())
        self.add_to_recordable_attributes(
            list_of_names=["num_classes", "centers_per_class", "temperature"], is_stat=False
        )
        self.add_to_recordable_attributes(
            name="num_triplets" if sampling == "uniform" else "triplets_per_anchor", is_stat=False
        )
        self.add_to_recordable_attributes(list_of_names=["excess", "current_radius"], is_stat=True)

    # ------------------------------------------------------------------------------------------------ public API
    def forward(self, proxies, labels=None, euclidean_proxies=None):
        """The reduced loss. ``proxies``: (C·K, D) (ball points or tangent vectors: only directions are used);
        ``labels``: the batch's labels (N,), used by ``sampling="batch"``; ``euclidean_proxies``: (C·K_E, D_E) rows,
        K_E >= 1 per class, used by ``similarity="euclidean"`` (for pml's ``SoftTripleLoss``, pass ``loss.fc.t()``).
        Inputs that the options do not use are ignored."""
        self.reset_stats()
        loss_dict = self.compute_loss(proxies, labels, euclidean_proxies)
        if self.sampling == "batch":
            return self.reducer(loss_dict, proxies, labels)
        leaf_classes = torch.arange(self.num_leaves, device=proxies.device)
        if self.leaves == "proxies":
            leaf_classes = leaf_classes.div_(self.centers_per_class, rounding_mode="floor")
        return self.reducer(loss_dict, proxies, leaf_classes)

    def compute_loss(self, proxies, labels=None, euclidean_proxies=None):
        """The loss dict ``{"loss": {"losses": (T,), "indices": (T,), "reduction_type": "element", "divisor": T}}``
        (what a loss that embeds this regularizer adds to its own dict); indices: the anchor's sample (``"batch"``)
        or leaf (``"uniform"``)."""
        self._check_inputs(proxies, labels, euclidean_proxies)
        device = proxies.device
        with torch.autocast(device_type=device.type, enabled=False):
            triplets = self.sample_triplets(self.num_leaves, labels if self.sampling == "batch" else None, device)
            x = _work(proxies)
            if self.dtype == torch.float32 and backends.select(x, kernels=("triton",)) == "triton":
                losses, w = self._fused_losses(x, triplets, euclidean_proxies)
            else:
                leaves, a, b, ca, cb = self._pairs(x, triplets)
                w = self._pair_similarity(x, leaves, ca, cb, euclidean_proxies)
                losses = _RelaxedDasgupta.apply(leaves, a, b, w, self._radius(), self.temperature,
                                                self.leaves == "proxies", self.dtype)
        if self.collect_stats:
            with torch.no_grad():
                if w is None:  # the leaves' own (1 + cos)/2, or computed by the Triton kernel
                    leaves, a, b, ca, cb = self._pairs(x, triplets)
                    w = self._pair_similarity(x, leaves, ca, cb, euclidean_proxies)
                    if w is None:
                        w = _sq(leaves.index_select(0, a).to(self.dtype) + leaves.index_select(0, b).to(self.dtype)) / 4
                w = w.view(3, -1)
                self.excess = float((losses - w.sum(0) + w.amax(0)).mean())
                self.current_radius = float(self._radius())
        if self.sampling == "batch":  # the anchor's sample, an index into the batch labels
            t = self.triplets_per_anchor
            anchors = torch.arange(len(labels) * t, device=device).div_(t, rounding_mode="floor")
        else:  # the anchor leaf
            anchors = triplets[0]
        return {"loss": {"losses": losses, "indices": anchors, "reduction_type": "element", "divisor": len(losses)}}

    def sample_triplets(self, num_leaves, labels, device):
        """(3, T) int64 leaf indices (i, j, k), pairwise distinct: i uniform over the leaves (``labels=None``) or the
        leaf of each sample's class (``triplets_per_anchor`` per sample), j uniform over the other leaves, k over the
        leaves other than i and j. One ``torch.rand`` call from the generator; no host sync."""
        n = num_leaves
        t = self.num_triplets if labels is None else len(labels) * self.triplets_per_anchor
        u = torch.rand(3, t, dtype=torch.float64, generator=self.get_generator(device), device=device)
        if labels is None:
            i = _uniform_int(u[0], n)
        else:
            i = _repeat_each(labels.to(device=device, dtype=torch.int64), self.triplets_per_anchor)
            if self.leaves == "proxies":
                i = i * self.centers_per_class + _uniform_int(u[0], self.centers_per_class)
        j = _skip(_uniform_int(u[1], n - 1), i)
        k = _uniform_int(u[2], n - 2)
        k = _skip(_skip(k, torch.minimum(i, j)), torch.maximum(i, j))
        return torch.stack([i, j, k])

    def get_generator(self, device):
        """The ``torch.Generator`` to draw from on ``device`` (None means torch's global RNG)."""
        return self._generators.get(device)

    @staticmethod
    def class_directions(proxies, centers_per_class):
        r"""(C, D) unit directions :math:`\operatorname{normalize}(\sum_k p_c^k)` of the (C·K, D) proxies: the
        direction of each class's proxy mean (one pass over the proxies; its backward writes one (C·K, D) buffer)."""
        k = centers_per_class
        if proxies.ndim != 2 or proxies.shape[0] % k:
            raise ValueError(f"proxies must be (C·K, D) with K = {k} rows per class, got {tuple(proxies.shape)}.")
        x = _work(proxies)
        c, d = x.shape[0] // k, x.shape[1]
        if x.t().is_contiguous():  # column-major, e.g. pml's SoftTripleLoss.fc.t(): reduce along contiguous memory
            sums = x.t().reshape(d, c, k).sum(2).t().contiguous()
        else:
            sums = x.view(c, k, d).sum(1)
        return F.normalize(sums, dim=1, eps=_MIN_NORM)

    @staticmethod
    def lca_depth(u, v, radius):
        r"""Depth :math:`\operatorname{artanh}(\rho\cos(\theta/2))`, :math:`\rho = 2r/(1+r^2)`, of the hyperbolic
        lowest common ancestor of the points :math:`r\hat u` and :math:`r\hat v` of the unit ball (``u``, ``v``:
        (..., D) directions, normalised here; ``radius``: a float or tensor in (0, 1))."""
        u, v = F.normalize(u, dim=-1, eps=_MIN_NORM), F.normalize(v, dim=-1, eps=_MIN_NORM)
        r = torch.as_tensor(radius, dtype=u.dtype, device=u.device)
        rho, one_minus_rho, _ = _rho(r)
        return _depth(_sq(u + v) / 4, _sq(v - u) / 4, rho, one_minus_rho)[0]

    # --------------------------------------------------------------------------------------------------- internals
    def _radius(self):
        """The leaves' radius r: a tensor (clamped parameter) when learned, else a float."""
        if self.leaf_radius == "learned":
            return self.radius.to(self.dtype).clamp(MIN_RADIUS, MAX_RADIUS)
        return float(self.leaf_radius)

    def _pairs(self, x, triplets):
        """(leaves, a, b, ca, cb) of the torch path: the leaf rows, the pairs (i, j), (i, k), (j, k) as (3T,) leaf
        indices a, b, and their classes."""
        i, j, k = triplets
        a, b = torch.cat([i, i, j]), torch.cat([j, k, k])
        if self.leaves == "classes":
            return self.class_directions(x, self.centers_per_class), a, b, a, b
        size = self.centers_per_class
        return x, a, b, a.div(size, rounding_mode="floor"), b.div(size, rounding_mode="floor")

    def _fused_losses(self, x, triplets, euclidean_proxies):
        """(losses, w or None) by the Triton kernels: the leaves (class directions or proxies) are formed from x in
        the kernel, and so are the detached "hyperbolic" and "euclidean" similarities; other similarities are
        computed as in the torch path and passed per pair."""
        k, s = self.centers_per_class, self.similarity
        group = k if self.leaves == "classes" else 1  # proxies summed per leaf
        w, directions, directions_group = None, None, 1
        if isinstance(s, str) and s in ("hyperbolic", "euclidean") and self.detach_similarity:
            if s == "euclidean":
                directions, directions_group = euclidean_proxies, euclidean_proxies.shape[0] // self.num_classes
            elif self.leaves == "proxies":
                directions, directions_group = x, k
        else:
            leaves, _, _, ca, cb = self._pairs(x, triplets)
            w = self._pair_similarity(x, leaves, ca, cb, euclidean_proxies)
        losses = _FusedRelaxedDasgupta.apply(x, triplets, w, self._radius(), directions, self.temperature, group,
                                             directions_group, k // group)
        return losses, w

    def _pair_similarity(self, x, leaves, ca, cb, euclidean_proxies):
        """w (3T,) of the leaf pairs of classes (ca, cb); None for the leaves' own (1 + cos)/2, detached (computed
        with the depths)."""
        s = self.similarity
        if isinstance(s, torch.Tensor):
            return self.similarity_matrix[ca, cb].to(self.dtype)
        if callable(s):
            w = s(ca, cb)
            if not isinstance(w, torch.Tensor) or w.shape != ca.shape:
                raise ValueError(
                    f"The similarity callable must return a tensor of the shape of its inputs {tuple(ca.shape)}, got "
                    f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}."
                )
            return w.to(self.dtype)
        if s == "labels":
            return (ca == cb).to(self.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_similarity):
            if s == "hyperbolic" and self.leaves == "classes":
                if self.detach_similarity:
                    return None
                e = leaves  # the leaves' own (1 + cos)/2, with a gradient
            elif s == "hyperbolic":
                e = self.class_directions(x, self.centers_per_class)
            else:
                e = self.class_directions(euclidean_proxies, euclidean_proxies.shape[0] // self.num_classes)
            if self.detach_similarity:
                e = e.detach()
            return _sq(e.index_select(0, ca).to(self.dtype) + e.index_select(0, cb).to(self.dtype)) / 4

    def _check_inputs(self, proxies, labels, euclidean_proxies):
        rows = self.num_classes * self.centers_per_class
        _check_matrix(proxies, "proxies")
        if proxies.shape[0] != rows:
            raise ValueError(
                f"proxies must have num_classes * centers_per_class = {self.num_classes} * {self.centers_per_class} "
                f"= {rows} rows (row c * K + k = proxy k of class c), got shape {tuple(proxies.shape)}."
            )
        if self.sampling == "batch":
            if labels is None:
                raise ValueError(
                    "sampling='batch' draws its anchors from the batch labels: call reg(proxies, labels), or use "
                    "sampling='uniform' (e.g. as the weight_regularizer of a loss, which passes no labels)."
                )
            if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or len(labels) == 0:
                raise ValueError(f"labels must be a non-empty 1-D tensor, got {_describe(labels)}.")
            if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
                raise ValueError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}.")
            if labels.device != proxies.device:
                raise ValueError(f"labels are on {labels.device} but the proxies on {proxies.device}.")
        if self.similarity == "euclidean":
            if euclidean_proxies is None:
                raise ValueError(
                    "similarity='euclidean' needs the Euclidean proxies: call reg(proxies, labels, euclidean_proxies) "
                    "(CHESTLoss does), or choose similarity='hyperbolic', 'labels' or a matrix."
                )
            _check_matrix(euclidean_proxies, "euclidean_proxies")
            if euclidean_proxies.shape[0] % self.num_classes:
                raise ValueError(
                    f"euclidean_proxies must have C·K_E rows (K_E >= 1 proxies per class, row c·K_E + k), a "
                    f"multiple of num_classes = {self.num_classes}; for pml's SoftTripleLoss pass loss.fc.t(). Got "
                    f"shape {tuple(euclidean_proxies.shape)}."
                )
            if euclidean_proxies.device != proxies.device:
                raise ValueError(
                    f"euclidean_proxies are on {euclidean_proxies.device} but the proxies on {proxies.device}."
                )


def _repeat_each(x, t):
    """Each element of the 1-D x repeated t times in a row (a fixed shape, unlike a tensor of repeats)."""
    return x.unsqueeze(1).expand(len(x), t).reshape(-1)


def _uniform_int(u, m):
    """floor(u·m) for float64 uniforms u in [0, 1), clamped to m − 1 (rounding of u·m)."""
    return (u * float(m)).long().clamp_max_(m - 1)


def _skip(x, y):
    """x + (x >= y): the integer of rank x (from 0) among those other than y."""
    return torch.where(x >= y, x + 1, x)


def _work(x):
    """float64 and float32 stay, half types are computed in float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")


def _describe(x):
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_matrix(x, name):
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D tensor (rows, D) with D >= 1, got {_describe(x)}.")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got dtype {x.dtype}.")


def _check_similarity(similarity, num_classes, leaves, centers_per_class):
    if isinstance(similarity, torch.Tensor):
        s = similarity.detach()
        if s.shape != (num_classes, num_classes) or not s.is_floating_point():
            raise ValueError(
                f"A similarity matrix must be a floating point (num_classes, num_classes) = ({num_classes}, "
                f"{num_classes}) tensor, got {tuple(s.shape)} {s.dtype}."
            )
        s = s.double()
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()) or not torch.allclose(s, s.t()):
            raise ValueError("A similarity matrix must be finite, >= 0 and symmetric (Dasgupta's weights).")
        return
    if callable(similarity):
        return
    if similarity not in _SIMILARITIES:
        raise ValueError(
            f"similarity must be one of {_SIMILARITIES}, a (C, C) tensor or a callable, got {similarity!r}."
        )
    if similarity == "labels" and (leaves != "proxies" or centers_per_class < 2):
        raise ValueError(
            "similarity='labels' is 1 within a class and 0 across: it needs leaves='proxies' and centers_per_class "
            ">= 2 (with one leaf per class every pair would weigh 0)."
        )
