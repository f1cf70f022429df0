import torch
from pytorch_metric_learning.miners import BaseMiner

from .. import backends
from ..backends import native
from ..distances import PoincareDistance
from ..utils.checks import check_embeddings, check_finite
from ..utils.random import DeviceGenerators


class ReciprocalTripletMiner(BaseMiner):
    r"""Triplets from mutual (reciprocal) nearest neighbours, the sampling of HIER (Kim et al., CVPR 2023).

    With :math:`\mathcal N_k(i)` the ``topk`` most similar points of :math:`i` (itself included) under the
    similarity :math:`S_{ij} = e^{-d(x_i, x_j)} + [y_i = y_j]`:

    .. math:: \text{pos}(i) = \{j \ne i : j \in \mathcal N_k(i),\ i \in \mathcal N_k(j)\},\qquad
              \text{neg}(i) = \{j \ne i\} \setminus \text{pos}(i)

    Every anchor with :math:`|\text{pos}(i)| \ge 2` and a non-empty :math:`\text{neg}(i)` gets ``triplets_per_anchor``
    triplets :math:`(i, j, k)`, with :math:`j` and :math:`k` drawn uniformly with replacement from pos(i) and neg(i)
    (negatives include one-way neighbours, as in the official code). The output is grouped by anchor, in index order.
    Each draw takes one uniform :math:`u`: member :math:`\lfloor u\,|\text{set}|\rfloor` of the set in index order. The
    uniforms are drawn for every point, shape (N, 2, ``triplets_per_anchor``), one ``torch.rand`` call per mining.

    The label bonus of the official code ranks same-label points above all others; it is applied here as a strict
    priority (same label first, then by similarity, ties to the lower index), which is the same ranking without the
    ties of ``exp`` underflow; the point itself always counts as one of its ``topk``. When ``topk`` is at least the
    number of points, every pair is mutual and no anchor has a negative: nothing is mined. On CPU in float32 the
    mining runs in a C kernel (:mod:`pml_hyperbolic.backends.native`); elsewhere in torch ops, with the same results.
    :meth:`mine_fixed` gives every point its slots with a validity mask (fixed shapes, no host sync on CUDA).

    Differences from the official code (``hier/losses.py::get_reciprocal_triplets``): fully vectorised (no Python loop
    over anchors; the pml-style output costs one host sync per call, :meth:`mine_fixed` none), no crash or wrong
    indices for small batches (the official code needs N ≥ topk and mis-samples an anchor with a single negative),
    and ``exclude_self_negative=True`` by default: the official code lets the anchor be its own negative (its
    diagonal is filled with −1 < 1), which makes HIER's hinge terms contradictory (they sum to at least 2·margin
    whatever the embedding). Set it to False for the official rule.

    Args:
        topk: neighbourhood size k, the point itself included (HIER's scripts use 20). Must be ≥ 3.
        triplets_per_anchor: triplets sampled per valid anchor (50 in the official code).
        exclude_self_negative: never use the anchor as its own negative (default; False = official behaviour).
        generator: randomness source: None (torch's global RNG), an int seed (a ``torch.Generator`` seeded with it is
            created on the embeddings' device at first use, so a run is reproducible on that device; CPU and CUDA
            generators draw different streams from the same seed), or a ``torch.Generator`` on the embeddings' device.
        **kwargs: passed to pml's ``BaseMiner`` (``distance``, ``collect_stats``). The default distance is
            :class:`~pml_hyperbolic.distances.PoincareDistance` (c = 0.1); any pml distance works (inverted ones rank by
            similarity, others by −distance, the same ranking as :math:`e^{-d}`).
    """

    def __init__(self, topk=20, triplets_per_anchor=50, exclude_self_negative=True, generator=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 3:
            raise ValueError(
                f"topk must be an int >= 3 (it counts the point itself, and an anchor needs two mutual neighbours), "
                f"got {topk!r}."
            )
        if isinstance(triplets_per_anchor, bool) or not isinstance(triplets_per_anchor, int) or triplets_per_anchor < 1:
            raise ValueError(f"triplets_per_anchor must be an int >= 1, got {triplets_per_anchor!r}.")
        generators = DeviceGenerators(generator, "the data")
        self.topk = topk
        self.triplets_per_anchor = triplets_per_anchor
        self.exclude_self_negative = exclude_self_negative
        self.generator = generator
        self._generators = generators
        self.add_to_recordable_attributes(list_of_names=["topk", "triplets_per_anchor"], is_stat=False)
        self.add_to_recordable_attributes(list_of_names=["num_anchors"], is_stat=True)

    def get_default_distance(self):
        return PoincareDistance()

    def get_generator(self, device):
        """The ``torch.Generator`` to draw from on ``device`` (None means torch's global RNG)."""
        return self._generators.get(device)

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        if ref_emb is not embeddings:
            raise ValueError("ReciprocalTripletMiner mines within one set of embeddings: ref_emb is not supported.")
        check_embeddings(embeddings)
        mat = self.distance(embeddings)
        return self.mine_similarity(mat if self.distance.is_inverted else -mat, labels)

    def mine_similarity(self, sim, labels=None):
        """Triplets (anchors, positives, negatives) from an N×N similarity matrix (larger = closer), e.g. −distance:
        the valid slots of :meth:`mine_fixed`. Their number depends on the data, so on CUDA this costs one host sync,
        as any pml miner's output does; :class:`~pml_hyperbolic.losses.HIERLoss` uses :meth:`mine_fixed` instead."""
        anchors, positives, negatives, valid = self.mine_fixed(sim, labels)
        return anchors[valid], positives[valid], negatives[valid]

    def mine_fixed(self, sim, labels=None):
        """Every point's ``triplets_per_anchor`` triplet slots, valid or not: (anchors, positives, negatives, valid),
        each of length N·``triplets_per_anchor`` (point i owns slots i·t ... i·t + t - 1; an invalid anchor's slots
        hold (i, i, i) and ``valid`` False). Fixed shapes: no host sync, capturable in a CUDA graph.

        ``sim`` is N×N (larger = closer); ``labels`` (N,) is optional: without it, the ranking uses the similarity
        alone (HIER's proxy block).
        """
        if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
            raise ValueError(f"mine_similarity needs a square N×N similarity matrix, got shape {tuple(sim.shape)}.")
        n, device, t = sim.shape[0], sim.device, self.triplets_per_anchor
        if labels is not None and (labels.ndim != 1 or len(labels) != n):
            raise ValueError(f"labels must have shape ({n},) like the similarity matrix, got {tuple(labels.shape)}.")
        if labels is not None and labels.device != device:
            raise ValueError(f"labels are on {labels.device} but the similarities on {device}: move them to {device}.")
        with torch.no_grad():
            sim = sim.detach()
            uniforms = torch.rand((n, 2, t), generator=self.get_generator(device), device=device)
            if backends.select(sim, kernels=("native",)) == "native":  # the kernel checks that sim is finite
                args = (self.topk, t, self.exclude_self_negative, uniforms)
                anchors, positives, negatives, ok = native.reciprocal_triplets(sim, labels, *args)
                ok = ok.bool()
            else:
                check_finite(sim, native.NON_FINITE_SIMILARITY)
                anchors, positives, negatives, ok = self._triplets(sim, labels, uniforms)
        if self.collect_stats:
            self.num_anchors = int(ok.sum())
        return anchors, positives, negatives, ok.repeat_interleave(t)

    def _triplets(self, sim, labels, uniforms):
        """The mining rule in torch ops, fixed shapes (the native kernel computes the same slots)."""
        n, device, t = sim.shape[0], sim.device, self.triplets_per_anchor
        # Rank by priority (the point itself 2, same label 1, others 0), then similarity, then index: two stable sorts.
        order = sim.argsort(dim=1, descending=True, stable=True)
        priority = torch.zeros(n, n, dtype=torch.int8, device=device)
        if labels is not None:
            priority = (labels.unsqueeze(1) == labels.unsqueeze(0)).to(torch.int8)
        priority.fill_diagonal_(2)
        order = order.gather(1, priority.gather(1, order).argsort(dim=1, descending=True, stable=True))
        knn = torch.zeros(n, n, dtype=torch.bool, device=device)
        knn.scatter_(1, order[:, : self.topk], True)
        pos = knn & knn.t()
        pos.fill_diagonal_(False)
        neg = ~pos
        if self.exclude_self_negative:
            neg.fill_diagonal_(False)
        n_pos, n_neg = pos.sum(1, keepdim=True), neg.sum(1, keepdim=True)
        ok = ((n_pos >= 2) & (n_neg >= 1)).squeeze(1)
        point = torch.arange(n, device=device).unsqueeze(1)

        def sample(mask, counts, u):
            """Member floor(u |set|) of each row's set, in index order: the first column where the running count of the
            set reaches it; the point itself for invalid anchors."""
            rank = (u * counts).long().minimum(counts - 1)
            member = torch.searchsorted(mask.cumsum(1), rank + 1).clamp_max(n - 1)
            return torch.where(ok.unsqueeze(1), member, point)

        positives, negatives = sample(pos, n_pos, uniforms[:, 0]), sample(neg, n_neg, uniforms[:, 1])
        return point.expand(n, t).flatten(), positives.flatten(), negatives.flatten(), ok
