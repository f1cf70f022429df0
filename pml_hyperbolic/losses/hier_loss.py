import math

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.losses.mixins import WeightMixin
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from .. import backends, poincare
from ..distances import PoincareDistance
from ..layers import ToPoincare
from ..miners import ReciprocalTripletMiner
from ..utils.checks import check_curvature, check_embeddings, check_finite, check_indices
from ..utils.random import counter_uniform
from .hier_lca import _TripletLCAHinge


class HIERLoss(WeightMixin, BaseMetricLossFunction):
    r"""HIER regulariser (Kim, Jeong, Kwak, "HIER: Metric Learning Beyond Class Labels via Hierarchical
    Regularization", CVPR 2023): triplets of ball embeddings organised around learnable hierarchical proxies.

    The proxies :math:`\rho_1..\rho_P` are tangent vectors mapped into the ball like the embeddings (feature clipping,
    :math:`\exp_0`, Riemannian gradient scaling). For a triplet :math:`(i, j, k)` and a distance block :math:`D`
    (rows: the triplet members, columns: the proxies), with :math:`M_{ij} = \max(D_i, D_j)` and
    :math:`M_{ijk} = \max(D_k, M_{ij})` element-wise:

    .. math::

        \pi_{ij} = \text{hardGumbelSoftmax}(-M_{ij}/\tau),\quad \pi_{ijk} = \text{hardGumbelSoftmax}(-M_{ijk}/\tau),
        \quad d_a(\pi) = D_a\cdot\pi

        L_{ijk} = [a \ne b]\,\big([d_i(\pi_{ij}) - d_i(\pi_{ijk}) + \delta]_+
                  + [d_j(\pi_{ij}) - d_j(\pi_{ijk}) + \delta]_+ + [d_k(\pi_{ijk}) - d_k(\pi_{ij}) + \delta]_+\big)

    where :math:`a, b` are the proxies selected by :math:`\pi_{ij}, \pi_{ijk}` (the LCAs of the pair and of the triplet;
    a "collision" :math:`a = b` zeroes the triplet). The hard samples use the straight-through gradient of
    ``F.gumbel_softmax(logits, tau=1, hard=True)``: the gradient also flows through the soft sample into :math:`M`.
    The loss has two terms, both computed like this: the **data term** on data→proxy distances with triplets of the
    batch, and the **proxy term** on proxy→proxy distances with triplets of proxies, both mined by
    :class:`~pml_hyperbolic.miners.ReciprocalTripletMiner` (mutual top-k neighbours with the label bonus for the data).

    Official semantics by default (``hier/losses.py::HIERLoss``, snapshot 3986a744): proxy init
    :math:`\mathcal N(0, (0.9\,r/\sqrt D)^2)`, Gumbel LCAs over :math:`-\max d/\tau`, mean over all sampled triplets
    (collided ones included) per term, data term + proxy term. Differences, all documented options:

    * ``exclude_self_negative=True`` (default; official: False): the official sampler lets the anchor be its own
      negative, a triplet whose hinge terms contradict each other (they sum to ≥ 2·margin whatever the embedding).
    * ``lca="argmax"``: deterministic LCA :math:`\arg\min_\rho \max(d(x_i,\rho), d(x_j,\rho))` (the paper's rule; ties
      go to the lowest index), with gradient through the selected distances only. Default ``"gumbel"`` is the
      official code.
    * ``reduction="non_collided"``: average over non-collided triplets only (the official mean also counts collided,
      zeroed triplets, so its scale depends on the collision rate). Default ``"all"`` is the official reduction.
    * The (B+P)×(B+P) distance matrix is :func:`~pml_hyperbolic.poincare.pdist` (exactly symmetric, so that the tie
      between a pair's own members is exact; the official code builds a (B+P)×(B+P)×D tensor), both terms go through
      one LCA pass with a hand-written backward (:mod:`~pml_hyperbolic.losses.hier_lca`), and the mining gives every
      point ``triplets_per_anchor`` slots with a validity mask (:meth:`ReciprocalTripletMiner.mine_fixed`): fixed
      shapes, no host synchronisation on CUDA. Each term's losses are weighted by w / mean(w) (w: 1 for the triplets
      that count), so pml's ``MeanReducer`` averages over them exactly as the official mean does. Kernels: C on the
      CPU, Triton on CUDA (:mod:`pml_hyperbolic.backends`), torch ops elsewhere, with the same triplets and LCAs.
    * Gumbel noise on CPU: the counter-based stream :func:`~pml_hyperbolic.utils.random.counter_uniform` of one key
      drawn from ``generator`` per forward (the kernel computes it in place); on other devices ``torch.rand``.
    * Robustness: the official code crashes or samples wrong indices for batch ≤ topk or anchors with a single
      negative. Here an anchor needs two mutual neighbours and one negative; if no anchor qualifies (e.g. batch ≤
      topk: every pair is mutual) the term is zero. ``num_proxies`` must exceed ``topk``.

    Use it next to a base loss, as in the paper (λ = 0.5 with Proxy-Anchor on the L2-normalised ball points)::

        loss_fn = MultipleLosses([ProxyAnchorLoss(num_classes, dim), HIERLoss(dim)], weights=[1, 0.5])

    It has parameters: give ``loss_fn.parameters()`` to an optimizer (the official recipe uses 50× the base
    learning rate for the HIER proxies).

    Args:
        embedding_size: width D of the ball embeddings.
        num_proxies: number P of hierarchical proxies (512 in the paper).
        c: curvature of the ball (float > 0).
        clip_r: feature-clipping radius of the proxies' tangent vectors (> 0).
        margin: hinge margin δ.
        tau: temperature of the LCA logits :math:`-\max d / \tau` (the Gumbel-softmax temperature itself is 1).
        topk: neighbourhood size of the reciprocal-kNN mining, the point itself included.
        triplets_per_anchor: triplets sampled per valid anchor.
        lca: ``"gumbel"`` (official, stochastic, straight-through) or ``"argmax"`` (deterministic).
        reduction: ``"all"`` (official: the sampled triplets of each term, collided ones included) or
            ``"non_collided"`` (only non-collided triplets are passed to the reducer).
        exclude_self_negative: see above (True fixes the official sampler).
        riemannian: scale the proxies' gradient by :math:`(1 - c\|\rho\|^2)^2/4` (official: True).
        generator: randomness of the mining and of the Gumbel noise (one stream: data mining, proxy mining, then the
            noise of both terms: on CPU one key per forward): None (global RNG), an int seed or a ``torch.Generator``.
        **kwargs: passed to pml's ``BaseMetricLossFunction`` (``reducer``, ``distance``, ``weight_init_func``,
            ``embedding_regularizer``, ``collect_stats``). The distance must be a
            :class:`~pml_hyperbolic.distances.PoincareDistance` with the same ``c``.

    Forward: ``loss_fn(embeddings, labels, indices_tuple=None)``. ``embeddings`` are ball points (N×D), e.g. from
    :class:`~pml_hyperbolic.layers.ToPoincare`. ``indices_tuple`` (triplets or pairs from any pml miner) replaces the
    reciprocal mining for the data term; labels are needed otherwise.

    Reducer input: ``data_loss`` and ``proxy_loss``, reduction type ``"triplet"`` with a ``"divisor"`` (the number of
    triplets); the data term's indices are batch indices, the proxy term's are proxy indices (reducers that look up
    labels by index, like ``ClassWeightedReducer``, apply to ``data_loss`` only). Default reducer: ``MeanReducer``.
    """

    def __init__(
        self,
        embedding_size,
        num_proxies=512,
        c=0.1,
        clip_r=2.3,
        margin=0.1,
        tau=0.1,
        topk=20,
        triplets_per_anchor=50,
        lca="gumbel",
        reduction="all",
        exclude_self_negative=True,
        riemannian=True,
        generator=None,
        **kwargs,
    ):
        for name, value in (("embedding_size", embedding_size), ("num_proxies", num_proxies)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if isinstance(c, torch.Tensor):
            raise ValueError("HIERLoss takes a float curvature c.")
        check_curvature(c)
        if not (clip_r > 0 and tau > 0 and margin >= 0):
            raise ValueError(f"Need clip_r > 0, tau > 0 and margin >= 0, got {clip_r!r}, {tau!r}, {margin!r}.")
        if lca not in ("gumbel", "argmax"):
            raise ValueError(f"lca must be 'gumbel' or 'argmax', got {lca!r}.")
        if reduction not in ("all", "non_collided"):
            raise ValueError(f"reduction must be 'all' or 'non_collided', got {reduction!r}.")
        if isinstance(topk, int) and num_proxies <= topk:
            raise ValueError(
                f"num_proxies ({num_proxies}) must be larger than topk ({topk}): with num_proxies <= topk every pair "
                "of proxies is a mutual neighbour and the proxy term has no negatives."
            )
        # Read by get_default_distance / get_default_weight_init_func inside super().__init__.
        self.c, self.clip_r, self.embedding_size = float(c), float(clip_r), embedding_size
        super().__init__(**kwargs)
        if not isinstance(self.distance, PoincareDistance):
            raise ValueError(f"HIERLoss needs a PoincareDistance, got {type(self.distance).__name__}.")
        if isinstance(self.distance.c, torch.Tensor) or float(self.distance.c) != self.c:
            raise ValueError(f"The distance's curvature ({self.distance.c!r}) must equal c ({self.c}).")
        self.num_proxies = num_proxies
        self.margin, self.tau = margin, tau
        self.lca, self.reduction = lca, reduction
        self.to_ball = ToPoincare(c=self.c, clip_r=self.clip_r, riemannian=riemannian)
        self.miner = ReciprocalTripletMiner(
            topk=topk,
            triplets_per_anchor=triplets_per_anchor,
            exclude_self_negative=exclude_self_negative,
            generator=generator,
            distance=self.distance,
        )
        self.proxies = torch.nn.Parameter(torch.empty(num_proxies, embedding_size))
        self.weight_init_func(self.proxies)
        self.add_to_recordable_attributes(
            list_of_names=["embedding_size", "num_proxies", "c", "clip_r", "margin", "tau"], is_stat=False
        )
        self.add_to_recordable_attributes(
            list_of_names=["num_data_triplets", "num_proxy_triplets", "data_collision_rate", "proxy_collision_rate"],
            is_stat=True,
        )

    def get_default_distance(self):
        return PoincareDistance(c=self.c)

    def get_default_weight_init_func(self):
        return c_f.TorchInitWrapper(torch.nn.init.normal_, std=0.9 * self.clip_r / math.sqrt(self.embedding_size))

    def _sub_loss_names(self):
        return ["data_loss", "proxy_loss"]

    def cast_types(self, dtype, device):
        self.proxies.data = c_f.to_device(self.proxies.data, device=device, dtype=dtype)

    def get_proxies(self):
        """The hierarchical proxies as ball points (P×D)."""
        return self.to_ball(self.proxies)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        c_f.labels_or_indices_tuple_required(labels, indices_tuple)
        check_embeddings(embeddings, "embeddings", dim=self.embedding_size)
        self.cast_types(torch.promote_types(embeddings.dtype, torch.float32), embeddings.device)
        proxies = self.get_proxies()
        n = len(embeddings)
        # One symmetric (N+P)×(N+P) distance matrix holds every block the loss needs (symmetric, so that the tie
        # between a pair's own members is exact).
        dist = self._distance_matrix(torch.cat([embeddings.to(proxies.dtype), proxies]))
        if indices_tuple is None:
            data_triplets = self.miner.mine_fixed(-dist[:n, :n].detach(), labels)
        else:
            triplets = self._check_triplets(lmu.convert_to_triplets(indices_tuple, labels), n, embeddings.device)
            data_triplets = (*triplets, torch.ones_like(triplets[0], dtype=torch.bool))
        proxy_triplets = self.miner.mine_fixed(-dist[n:, n:].detach())
        # Both terms in one pass over the rows [embeddings; proxies] × proxies: proxy triplets are offset by n.
        t = len(data_triplets[0])
        triplets = [torch.cat([d, p + n]) for d, p in zip(data_triplets[:3], proxy_triplets[:3])]
        # valid by construction: finite points in the ball, mined or checked triplets
        losses, collided = self._lca_losses(dist[:, n:], *triplets)
        data_losses, proxy_losses = losses[:t], losses[t:]
        data_collided, proxy_collided = collided[:t], collided[t:]
        if self.collect_stats:
            self.num_data_triplets = int(data_triplets[3].sum())
            self.num_proxy_triplets = int(proxy_triplets[3].sum())
            self.data_collision_rate = _rate(data_collided, data_triplets[3])
            self.proxy_collision_rate = _rate(proxy_collided, proxy_triplets[3])
        return {
            "data_loss": self._term(data_losses, data_collided, data_triplets),
            "proxy_loss": self._term(proxy_losses, proxy_collided, proxy_triplets),
        }

    def _distance_matrix(self, points):
        """d(points_a, points_b), exactly symmetric (so that the tie between a pair's own members is exact):
        :func:`~pml_hyperbolic.poincare.pdist` with the default distance, else the distance's matrix, symmetrised."""
        d = self.distance
        if type(d) is PoincareDistance and d.power == 1 and not d.normalize_embeddings:
            d._check(points, points)  # the distance's own input check
            return poincare.pdist(points, self.c)
        dist = d(points)
        return (dist + dist.t()) / 2

    def _term(self, losses, collided, triplets):
        """The reducer's input of one term: every triplet slot, weighted by w / mean(w) with w = 1 for the triplets
        that count (valid; with ``reduction="non_collided"`` also not collided), else 0. So pml's ``MeanReducer``
        (the default) gives the mean over the triplets that count, and no shape depends on the data."""
        if len(losses) == 0:
            return self.zero_loss()
        counts = triplets[3] & ~collided if self.reduction == "non_collided" else triplets[3]
        w = counts.to(losses.dtype)
        losses = losses * (w / w.mean().clamp_min(torch.finfo(w.dtype).tiny))
        return {"losses": losses, "indices": triplets[:3], "reduction_type": "triplet", "divisor": len(losses)}

    @staticmethod
    def _check_triplets(triplets, n, device):
        if len(triplets) != 3 or any(not isinstance(t, torch.Tensor) or t.ndim != 1 for t in triplets):
            raise ValueError("indices_tuple must hold 1-D index tensors: (anchors, positives, negatives) or pairs.")
        if not len(triplets[0]) == len(triplets[1]) == len(triplets[2]):
            raise ValueError("anchors, positives and negatives of indices_tuple must have the same length.")
        triplets = tuple(t.to(device=device, dtype=torch.long) for t in triplets)
        check_indices(triplets, n, "The indices of indices_tuple (they must index the batch's embeddings)")
        return triplets

    def triplet_lca_losses(self, dist, anchors, positives, negatives):
        """Per-triplet HIER losses on any distance block, the reusable core of this loss.

        ``dist`` (R×P): distances from R points (the triplet members, indexed by ``anchors``, ``positives``,
        ``negatives``) to P candidate LCAs. Returns ``(losses, collided)``, both of shape (T,); collided triplets
        (same LCA for the pair and the triplet) have loss 0. Gumbel noise comes from :meth:`sample_noise`.
        """
        if dist.ndim != 2 or dist.shape[1] == 0:
            raise ValueError(f"dist must be a 2-D (points × candidates) matrix, got shape {tuple(dist.shape)}.")
        check_finite(dist, "dist holds NaN or inf: the distances must be finite.")
        triplets = [t.to(device=dist.device, dtype=torch.long) for t in (anchors, positives, negatives)]
        check_indices(triplets, dist.shape[0], "Triplet indices (rows of the distance block)")
        return self._lca_losses(dist, *triplets)

    def _lca_losses(self, dist, *triplets):
        """:meth:`triplet_lca_losses` for inputs known to be valid (finite block, in-range triplets)."""
        if len(triplets[0]) == 0:
            return dist.new_zeros(0), torch.zeros(0, dtype=torch.bool, device=dist.device)
        kind = backends.select(dist, kernels=("native", "triton") if self.lca == "gumbel" else ("triton",))
        noise_shape = (2, len(triplets[0]), dist.shape[1])
        if self.lca == "argmax":
            noise = None
        elif not self._default_noise():
            noise = self.sample_noise(noise_shape, dist.dtype, dist.device)
            if noise.shape != noise_shape:
                raise ValueError(f"sample_noise returned shape {tuple(noise.shape)}, expected {noise_shape}.")
            noise = noise.to(dist.device, dist.dtype)
            check_finite(torch.where((noise > 0) & (noise < 1), noise, torch.nan),
                         f"sample_noise must return uniforms in the open interval (0, 1) (in {dist.dtype}).")
        elif kind == "triton":  # the key of the counter stream, drawn on the device (a CUDA graph redraws it)
            generator = self.miner.get_generator(dist.device)
            noise = torch.empty((), dtype=torch.int64, device=dist.device).random_(generator=generator)
        elif dist.device.type == "cpu":
            noise = self._noise_key()  # counter_uniform(key, noise_shape), computed where it is used
        else:
            noise = self.sample_noise(noise_shape, dist.dtype, dist.device)
        losses, lca_pair, lca_triplet = _TripletLCAHinge.apply(dist, *triplets, self.margin, self.tau, noise, kind)
        return losses, lca_pair == lca_triplet

    def sample_noise(self, shape, dtype, device):
        r"""Uniform variates :math:`U` of the Gumbel noise :math:`g = -\log(-\log U)` (``F.gumbel_softmax`` draws
        :math:`E = -\log U \sim \text{Exp}(1)` and takes :math:`-\log E`), shape ``(2, T, P)``: [0] for
        :math:`\pi_{ij}`, [1] for :math:`\pi_{ijk}`. On CPU: :func:`~pml_hyperbolic.utils.random.counter_uniform` of
        one key drawn from the generator per call (the native kernel computes the same values in place instead of
        calling this); on other devices ``torch.rand``. Override it (on the class or an instance) to inject noise."""
        if device.type == "cpu":
            return counter_uniform(self._noise_key(), shape, dtype)
        u = torch.rand(shape, generator=self.miner.get_generator(device), device=device, dtype=dtype)
        return u.clamp_min_(torch.finfo(dtype).tiny)

    def _noise_key(self):
        generator = self.miner.get_generator(torch.device("cpu"))
        return int(torch.empty((), dtype=torch.int64).random_(generator=generator))

    def _default_noise(self):
        return "sample_noise" not in vars(self) and type(self).sample_noise is HIERLoss.sample_noise


def _rate(collided, valid):
    """Share of collided triplets among the valid ones (a Python float: collect_stats reads it on the host)."""
    return float((collided & valid).sum()) / max(int(valid.sum()), 1)
