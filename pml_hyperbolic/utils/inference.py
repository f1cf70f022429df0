"""Exact hyperbolic nearest neighbours with faiss, as a ``knn_func`` for pml's ``AccuracyCalculator``."""

import faiss
import torch
from pytorch_metric_learning.utils.inference import FaissKMeans, return_results, try_gpu

from .. import poincare
from .checks import check_curvature, check_embeddings, check_in_ball

_RERANK_CHUNK = 1 << 24  # elements of gathered candidate vectors per re-ranking chunk


def _augment_reference(y, c):
    """Rows [1, y, ||y||^2] / (1 - c||y||^2): inner products with [-||x||^2, 2x, -1] give -||x-y||^2/(1-c||y||^2)."""
    y = y.to(torch.float64)
    v = y.pow(2).sum(1, keepdim=True)
    beta = 1 - c * v
    return (torch.cat([torch.ones_like(v), y, v], 1) / beta).float()


def _augment_query(x):
    x = x.to(torch.float64)
    u = x.pow(2).sum(1, keepdim=True)
    return torch.cat([-u, 2 * x, -torch.ones_like(u)], 1).float()


class PoincareKNN:
    r"""Exact Poincaré nearest neighbours, a drop-in ``knn_func`` for pml (same call signature as ``FaissKNN``).

    For a fixed query x the Poincaré distance is increasing in :math:`\|x-y\|^2/(1-c\|y\|^2)`, which equals
    :math:`-\langle[-\|x\|^2, 2x, -1],\,[1, y, \|y\|^2]/(1-c\|y\|^2)\rangle`: a maximum-inner-product search over
    vectors with two extra coordinates, which any faiss index can run. The best ``k + extra`` candidates are then
    re-ranked with the exact distance (:func:`pml_hyperbolic.poincare.dist`), so ties and float32 rounding in the
    index cannot change the result; the returned distances are Poincaré distances, smallest first.

    Args:
        c: curvature of the ball (> 0).
        reset_before / reset_after: as in pml's ``FaissKNN`` (build a fresh index per call, or keep one built with
            :meth:`train` / :meth:`add` for ``InferenceModel``).
        index_init_fn: ``dim -> faiss index`` using the inner-product metric; default ``faiss.IndexFlatIP`` (exact).
            Approximate indexes (IVF, HNSW, ...) work too; IVF-style indexes are trained on the references.
        gpus: as in ``FaissKNN``: run faiss on these GPUs (faiss-gpu builds only; falls back to CPU).
        extra_candidates: candidates retrieved beyond k for the exact re-ranking.
    """

    def __init__(self, c=0.1, reset_before=True, reset_after=True, index_init_fn=None, gpus=None, extra_candidates=16):
        check_curvature(c)
        self.c = float(c)
        self.reset_before = reset_before
        self.reset_after = reset_after
        self.index_init_fn = faiss.IndexFlatIP if index_init_fn is None else index_init_fn
        self.gpus = gpus
        self.extra_candidates = extra_candidates
        self.reset()

    def __call__(self, query, k, reference=None, ref_includes_query=False):
        check_embeddings(query, "query")
        check_in_ball(query, self.c, "query")
        if ref_includes_query:
            k = k + 1
        if self.reset_before or self.index is None:
            if reference is None:
                raise ValueError("PoincareKNN needs `reference` (or an index built with train/add).")
            self.train(reference)
        elif reference is not None:
            self.add(reference)
        k_search = min(k + self.extra_candidates, self.reference.shape[0])
        _, candidates = try_gpu(self.index, _augment_query(query), None, k_search, query.is_cuda, self.gpus)
        candidates = candidates.to(query.device)
        if k > self.reference.shape[0]:
            raise ValueError(f"k = {k} neighbours requested but only {self.reference.shape[0]} references exist.")
        distances, indices = self._rerank(query, candidates, k)
        if self.reset_after:
            self.reset()
        return return_results(distances, indices, ref_includes_query)

    def _rerank(self, query, candidates, k):
        reference = self.reference.to(query.device)
        valid = candidates >= 0  # approximate indexes may return -1 for missing results
        safe = candidates.clamp_min(0)
        out_d, out_i = [], []
        step = max(1, _RERANK_CHUNK // (candidates.shape[1] * query.shape[1]))
        for s in range(0, query.shape[0], step):
            cand = safe[s : s + step]
            d = poincare.dist(query[s : s + step].unsqueeze(1), reference[cand], self.c)
            d = d.masked_fill(~valid[s : s + step], float("inf"))
            d, order = torch.sort(d, dim=1, stable=True)
            out_d.append(d[:, :k])
            out_i.append(cand.gather(1, order[:, :k]))
        return torch.cat(out_d), torch.cat(out_i)

    def train(self, embeddings):
        """Build a new index over ``embeddings`` (ball points)."""
        check_embeddings(embeddings, "reference")
        self.index = self.index_init_fn(embeddings.shape[1] + 2)
        self.reference = None
        if not self.index.is_trained:
            self.index.train(_augment_reference(embeddings.detach().cpu(), self.c))
        self.add(embeddings)

    def add(self, embeddings):
        """Add ``embeddings`` (ball points) to the index."""
        check_in_ball(embeddings, self.c, "reference")
        embeddings = embeddings.detach()
        self.index.add(_augment_reference(embeddings.cpu(), self.c))
        self.reference = embeddings if self.reference is None else torch.cat([self.reference, embeddings.to(self.reference.device)])

    def save(self, filename):
        """Write the faiss index to ``filename`` and the reference points to ``filename + '.ref.pt'``."""
        faiss.write_index(faiss.index_gpu_to_cpu(self.index) if "Gpu" in type(self.index).__name__ else self.index, filename)
        torch.save(self.reference.cpu(), filename + ".ref.pt")

    def load(self, filename):
        self.index = faiss.read_index(filename)
        self.reference = torch.load(filename + ".ref.pt")

    def reset(self):
        self.index = None
        self.reference = None


class TangentKMeans:
    """``kmeans_func`` for pml's ``AccuracyCalculator`` (NMI / AMI): faiss k-means on ``logmap0`` of ball points."""

    def __init__(self, c=0.1, **faiss_kwargs):
        check_curvature(c)
        self.c = float(c)
        self.kmeans = FaissKMeans(**faiss_kwargs)

    def __call__(self, x, n_clusters):
        return self.kmeans(poincare.logmap0(x, self.c), n_clusters)
