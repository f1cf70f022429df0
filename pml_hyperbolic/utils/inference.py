r"""Hyperbolic nearest neighbours with faiss: a ``knn_func`` for pml's ``AccuracyCalculator`` and ``InferenceModel``
(``PoincareKNN``, with its exact certification and approximate-index modes, hence the module's length; ``SliceKNN``
and a tangent-space k-means beside it).

For a fixed query x, the Poincaré distance
:math:`d_c(x, y) = \frac{2}{\sqrt c}\operatorname{asinh}\sqrt{c\,a_x\,g_x(y)}` (:math:`a_x = 1/(1-c\|x\|^2)`) is
increasing in the *key*

.. math:: g_x(y) = \|x-y\|^2 b_y = -\langle q_x, r_y\rangle + \|x\|^2 b_0 + w_0,\qquad b_y = \frac{1}{1-c\|y\|^2},

    q_x = [-\|x\|^2,\ 2x,\ -1],\qquad r_y = [b_y - b_0,\ b_y\,y,\ b_y\|y\|^2 - w_0],

for any constants :math:`b_0, w_0` (the means over the references: they make the vectors, hence the rounding errors,
smaller). So exact hyperbolic kNN is a maximum-inner-product search over vectors with two extra coordinates, which
faiss's brute-force ``IndexFlatIP`` runs on CPU or GPU.

Approximate indexes (IVF, HNSW, PQ) instead index the tangent vectors :math:`\log_0(y)` with the Euclidean metric
(distances to the origin are exact there, and neighbourhoods are preserved far better than by the raw coordinates):
their Euclidean neighbours are the candidates, re-ranked exactly. Their partitions and graphs compare references
with each other, which the asymmetric vectors above do not support: at 100,000 clustered points with spread norms,
HNSW (efSearch = 64) over those vectors reached recall@10 = 0.08, over the tangent vectors 0.97.
"""

import warnings

import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.inference import FaissKMeans, convert_to_gpu_index, return_results
from tqdm.auto import tqdm

from .. import poincare
from .checks import check_curvature, check_embeddings, check_in_ball


def _faiss():
    """faiss with its torch bindings, or an ImportError naming the extra to install."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (faiss indexes accept torch tensors)
    except ImportError as error:
        raise ImportError(
            "PoincareKNN needs faiss: pip install 'pml-hyperbolic[knn]' (faiss-cpu; for GPUs install a faiss-gpu "
            "build), or use pml's CustomKNN(PoincareDistance()) without faiss."
        ) from error
    return faiss


# Rows of the N×k' work arrays (float64) handled per chunk: bounded memory whatever N and k.
_CHUNK_ELEMENTS = 1 << 22
_MAX_CHUNK_ROWS = 8192
_EXACT_CHUNK = 2048  # (query, reference) pairs per exact-difference chunk: cache-sized buffers
# Exact keys use float64 inner products (error ~1e-14 (||x||^2 + ||y||^2)) except for pairs closer than this
# fraction of ||x||^2 + ||y||^2, where the difference is taken coordinate-wise (relative error ~1e-16).
_CLOSE_PAIR = 1e-4
# Keys derived from the index's float32 scores are replaced by exact ones where their worst-case relative error
# exceeds this, so returned distances have relative error below 5e-5 in the worst case (~1e-7 typically).
_KEY_RTOL = 1e-4
_GPU_MAX_K = 2048  # largest k a faiss GPU index accepts
_UNIT_ROUNDOFF = 2.0**-24  # float32


def _score_error_factor(dim):
    r""":math:`\gamma_n = nu/(1-nu)`, n = dim + 7: a float32 inner product of dim terms, summed in any order from
    factors rounded once to float32, is within :math:`\gamma_{dim+2} \sum_i |q_i r_i|` of the exact one; the extra
    terms are slack for the float64 norms and the float32 error terms."""
    n = dim + 7
    return n * _UNIT_ROUNDOFF / (1 - n * _UNIT_ROUNDOFF)


def _is_exact(index):
    """True for the exact index (inner products of the vectors of the module docstring), False for an approximate
    index over the tangent vectors (L2 metric)."""
    return index.metric_type == _faiss().METRIC_INNER_PRODUCT


class PoincareKNN:
    r"""Exact Poincaré nearest neighbours with faiss, a drop-in ``knn_func`` for pml (``FaissKNN``'s call signature).

    By default faiss's ``IndexFlatIP`` searches the vectors of the module docstring (the largest inner products are
    the nearest references) and the result is *exact*, certified from the float32 scores: each key
    :math:`\hat g` of the index is within :math:`e = \gamma\,(\|x\|^2|b_y - b_0| + 2\|x\|\|y\|b_y + |b_y\|y\|^2 - w_0|)`
    of the exact key (γ ≈ (D + 9)·6e-8, a bound on float32 rounding whatever the summation order), so

    * candidates whose interval :math:`[\hat g - e, \hat g + e]` meets another one (their order is unsure), and
      candidates too close to the query for :math:`\hat g` to give an accurate distance (:math:`e > 10^{-4}\hat g`)
      get their key recomputed in float64 (exact differences for close pairs); the order of the others is
      provably right;
    * a query is *certified* when its k-th key is below :math:`\hat g_{k'} - \max_y e` (k' = k + extra_candidates
      searched): no reference outside the candidates can be closer. Uncertified queries (near-ties at the edge of
      the candidate list, e.g. many duplicates) are searched again with twice as many candidates, up to all of them.

    The returned distances are float32 Poincaré distances, nearest first (relative error < 5e-5 worst case, 0 for
    identical points); with ``ref_includes_query`` the self-match is removed as in pml. Queries are processed in
    chunks, so the extra memory is bounded (the outputs aside).

    In high dimension far neighbours crowd together (D = 128: the distances around the 1000th neighbour differ by
    ~1e-5 relative), so for large k much of their order is within float32 rounding and needs float64 work.
    ``tie_rtol > 0`` counts neighbours whose distances differ by less than that relative amount as tied: they may
    come in either order, and a reference left out may be at most that much closer than the k-th; this skips most
    of that work (``tie_rtol=1e-4``, far below any embedding's accuracy, skips nearly all of it at D = 128).

    With ``index_init_fn``, an approximate faiss index (Euclidean metric) over the tangent vectors proposes
    ``k + extra_candidates`` candidates per query, all re-ranked here with exact distances; missing results (IVF
    lists too short) are index -1 at distance inf. Set its search knobs in ``index_init_fn`` (or on ``self.index``
    when it is kept)::

        def ivf(dim):
            index = _faiss().index_factory(dim, "IVF1024,Flat")
            index.nprobe = 32
            return index

        def hnsw(dim):
            index = _faiss().IndexHNSWFlat(dim, 32)
            index.hnsw.efSearch = 128
            return index

        knn = PoincareKNN(c=0.1, index_init_fn=hnsw)  # untrained indexes (IVF, PQ) are trained on the references

    Args:
        c: curvature of the ball (> 0).
        reset_before / reset_after: as in pml's ``FaissKNN``: build a fresh index per call, or keep the one built with
            :meth:`train` / :meth:`add` (pml's ``InferenceModel``: ``reset_before=False, reset_after=False``).
        index_init_fn: None for exact search, or ``dim -> faiss index`` with the L2 metric over the D coordinates of
            the tangent vectors (approximate). It must number vectors 0, 1, ... in insertion order (no ``IndexIDMap``).
        gpus: as in ``FaissKNN``: search with faiss on these GPUs (faiss-gpu builds; also used for CUDA queries when
            faiss sees a GPU; k' > 2048 falls back to the CPU index). The index is copied to the GPUs once per call.
        extra_candidates: candidates searched beyond k: the margin of the exactness certificate (exact search), or
            more candidates for the exact re-ranking (approximate indexes).
        tie_rtol: relative distance difference below which neighbours count as tied (exact search); 0 = exact order.
    """

    def __init__(
        self,
        c=0.1,
        reset_before=True,
        reset_after=True,
        index_init_fn=None,
        gpus=None,
        extra_candidates=16,
        tie_rtol=0.0,
    ):
        check_curvature(c)
        if gpus is not None and (not isinstance(gpus, (list, tuple)) or len(gpus) == 0):
            raise ValueError(f"gpus must be a non-empty list of GPU ids (as in pml's FaissKNN), got {gpus!r}.")
        if not isinstance(extra_candidates, int) or extra_candidates < 0:
            raise ValueError(f"extra_candidates must be an int >= 0, got {extra_candidates!r}.")
        if not 0 <= tie_rtol < 0.5:
            raise ValueError(f"tie_rtol must be in [0, 0.5) (a relative distance difference), got {tie_rtol!r}.")
        self.c = float(c)
        self.reset_before = reset_before
        self.reset_after = reset_after
        self.index_init_fn = index_init_fn
        self.gpus = gpus
        self.extra_candidates = extra_candidates
        self.tie_rtol = float(tie_rtol)
        self.reset()

    def __call__(self, query, k, reference=None, ref_includes_query=False):
        """(distances, indices) of the k nearest references of each query row, nearest first (pml's knn_func)."""
        check_embeddings(query, "query")
        check_in_ball(query, self.c, "query")
        _check_layout(query, self.c)
        if ref_includes_query:
            k = k + 1
        if self.reset_before or self.index is None:
            if reference is None:
                raise ValueError("PoincareKNN needs `reference` embeddings (or an index built with train/add).")
            self.train(reference)
        elif reference is not None:
            self.add(reference)
        if query.shape[1] != self.reference.shape[1]:
            raise ValueError(
                f"query has width {query.shape[1]} but the references have width {self.reference.shape[1]}."
            )
        n_ref = self.reference.shape[0]
        if not 1 <= k <= n_ref:
            extra = " (k + 1 with ref_includes_query)" if ref_includes_query else ""
            raise ValueError(f"k{extra} = {k} neighbours requested, but it must be in [1, {n_ref}] (the references).")
        c_f.LOGGER.info(f"PoincareKNN: k = {k}, {query.shape[0]} queries, {n_ref} references")
        device = query.device
        distances, indices = self._search_and_rerank(query.detach().to(self.reference.device), k)
        distances, indices = distances.to(device), indices.to(device)
        if self.reset_after:
            self.reset()
        if ref_includes_query and bool((indices[:, 0] == torch.arange(len(indices), device=indices.device)).all()):
            return distances[:, 1:], indices[:, 1:]  # pml's return_results, when every self-match comes first
        return return_results(distances, indices, ref_includes_query)

    def _search_and_rerank(self, query, k):
        search = self._searcher(query.is_cuda)
        exact = _is_exact(self.index)
        n, n_ref = query.shape[0], self.reference.shape[0]
        distances = torch.empty(n, k, device=query.device)
        indices = torch.empty(n, k, dtype=torch.long, device=query.device)
        todo = torch.arange(n, device=query.device)
        k_search = min(k + self.extra_candidates, n_ref)
        block = _faiss().cvar.distance_compute_blas_query_bs  # faiss's query block: chunks are multiples of it
        with tqdm(total=n, desc="PoincareKNN", leave=False, disable=n <= _MAX_CHUNK_ROWS) as progress:
            while todo.numel():
                step = max(1, min(_MAX_CHUNK_ROWS, _CHUNK_ELEMENTS // k_search))
                step = step - step % block if step > block else step
                retry = []
                for s in range(0, todo.numel(), step):
                    rows = todo[s : s + step]
                    x = query[rows]
                    scores, candidates = search(x, k_search)
                    d, i, certified = self._rerank(x, candidates, scores, k, exact, k_search == n_ref)
                    if not certified.all():
                        retry.append(rows[~certified])
                        rows, d, i = rows[certified], d[certified], i[certified]
                    distances[rows], indices[rows] = d, i
                    progress.update(len(rows))
                todo = torch.cat(retry) if retry else todo[:0]
                k_search = min(2 * k_search, n_ref)  # uncertified rows: search again with more candidates
        return distances, indices

    def _rerank(self, x, candidates, scores, k, exact, complete):
        """Top k of each row's candidates by exact key, their distances, and which rows are certified.

        ``scores``: the exact index's inner products, rows sorted descending (as faiss returns them); approximate
        indexes' candidates all get exact keys. ``complete``: the candidates are all the references. Keys are
        float32 (exact keys rounded to float32: ties at that resolution keep the index's order); the bounds e cover
        that rounding.
        """
        x64 = x.to(torch.float64)
        u = x64.pow(2).sum(1, keepdim=True)
        if exact:
            b0, w0 = self._offsets
            offset = (u * b0 + w0).float()
            key = offset - scores  # the index's keys g_hat, ascending
            # e = gamma (||x||^2 |b_y - b0| + 2 ||x|| ||y|| b_y + |b_y ||y||^2 - w0|) + float32 bookkeeping slack
            weights = torch.cat([u, u.sqrt(), torch.ones_like(u)], 1).float().mul_(_score_error_factor(x.shape[1]))
            terms = self._error_terms.index_select(0, candidates.flatten()).view(*candidates.shape, 3)
            e = torch.matmul(terms, weights.unsqueeze(2)).squeeze(2)
            e.add_(key.abs().add_(offset.abs()), alpha=4 * _UNIT_ROUNDOFF)
            lo, hi = key - e, key + e
            need = e > _KEY_RTOL * key  # g_hat too inaccurate for the distance
            if self.tie_rtol < _KEY_RTOL:  # candidates whose interval meets another one's: their order is unsure
                prefix_hi = hi.cummax(1).values  # largest upper bound among candidates 0..j
                suffix_lo = lo.flip(1).cummin(1).values.flip(1)  # smallest lower bound among candidates j..k'-1
                overlaps = torch.zeros_like(need)
                overlaps[:, 1:] = lo[:, 1:] <= prefix_hi[:, :-1]
                overlaps[:, :-1] |= hi[:, :-1] >= suffix_lo[:, 1:]
                if self.tie_rtol > 0:
                    overlaps &= e > self.tie_rtol * key
                need |= overlaps
            # only candidates that may be among the k nearest matter: k of them have a key <= max(hi[:, :k])
            need &= lo <= hi[:, :k].amax(1, keepdim=True)
            g_last = key[:, -1]
        else:
            need = candidates >= 0
            key = torch.full_like(scores, float("inf"))  # stays inf for missing results
        rows, cols = need.nonzero(as_tuple=True)
        exact_keys = self._exact_keys(x64, u.squeeze(1), rows, candidates[rows, cols]).float()
        key[rows, cols] = exact_keys
        if exact:
            upper = hi.index_put_((rows, cols), exact_keys)  # upper bounds of the keys (exact where recomputed)
        unsorted = (key[:, 1:] < key[:, :-1]).any(1).nonzero().squeeze(1)
        if unsorted.numel():
            order = key[unsorted].argsort(dim=1, stable=True)
            key[unsorted] = key[unsorted].gather(1, order)
            candidates[unsorted] = candidates[unsorted].gather(1, order)
            if exact:
                upper[unsorted] = upper[unsorted].gather(1, order)
        top_key = key[:, :k]
        certified = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if exact and not complete:
            # every reference outside the candidates has a key >= g_hat[:, -1] - max_y e(x, y)
            e_out = weights @ self._error_terms.amax(0) + 4 * _UNIT_ROUNDOFF * (g_last.abs() + offset.squeeze(1).abs())
            certified = (1 - 2 * self.tie_rtol) * upper[:, :k].amax(1) <= g_last - e_out
        # d = (2/sqrt c) asinh(sqrt(q)), q = c g / (1 - c||x||^2), with asinh(s) = log1p(s + q/(1 + sqrt(1 + q)))
        q = (top_key * (self.c / (1 - self.c * u)).float()).clamp_min_(0)
        d = torch.log1p(q.sqrt() + q / (1 + (1 + q).sqrt())).mul_(2 / self.c**0.5)
        if not exact:
            d.masked_fill_(top_key == float("inf"), float("inf"))  # missing results
        return d, candidates[:, :k], certified

    def _exact_keys(self, x64, u, rows, refs):
        """g = ||x_i - y_j||^2 b_j in float64 for the pairs (i, j) = (rows, refs), rows sorted.

        ||x - y||^2 = ||x||^2 + ||y||^2 - 2 x.y with the inner products of the pairs from one sampled matrix product
        (float32 coordinates: exact products, float64 sums); close pairs from coordinate-wise differences.
        """
        crow = torch.zeros(x64.shape[0] + 1, dtype=torch.long, device=x64.device)
        crow[1:] = torch.bincount(rows, minlength=x64.shape[0]).cumsum(0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            pairs = torch.sparse_csr_tensor(
                crow, refs, torch.zeros_like(refs, dtype=torch.float64), (x64.shape[0], self.reference.shape[0]),
                check_invariants=False,
            )
            dots = torch.sparse.sampled_addmm(pairs, x64, self.reference.t(), beta=0.0).values()
        sq = u[rows] + self._sq_norms[refs]
        a = sq - 2 * dots
        close = (a <= _CLOSE_PAIR * sq).nonzero().squeeze(1)
        for s in range(0, close.numel(), _EXACT_CHUNK):
            p = close[s : s + _EXACT_CHUNK]
            diff = x64.index_select(0, rows[p]).sub_(self.reference.index_select(0, refs[p]))
            a[p] = torch.linalg.vecdot(diff, diff)
        return a.mul_(self._inv_beta[refs])

    def _searcher(self, is_cuda):
        """``search(x, k) -> (scores, ids)`` on x's device; the index is copied to faiss GPUs once (pml's try_gpu
        rules)."""
        gpu_index = None
        if (is_cuda or self.gpus is not None) and _faiss().get_num_gpus() > 0:
            try:
                gpu_index = convert_to_gpu_index(self.index, self.gpus)
            except (AttributeError, RuntimeError) as err:
                c_f.LOGGER.warning(f"PoincareKNN searches on CPU: this index cannot be moved to GPU ({err}).")

        def search(x, k):
            index = gpu_index if gpu_index is not None and k <= _GPU_MAX_K else self.index
            x64 = x.to(torch.float64)
            if _is_exact(index):
                u = x64.pow(2).sum(1, keepdim=True)
                vectors = torch.cat([-u, 2 * x64, -torch.ones_like(u)], 1)
            else:
                vectors = poincare.logmap0(x64, self.c)
            scores, ids = index.search(vectors.float().cpu().contiguous(), k)
            return scores.to(x.device), ids.to(x.device)

        return search

    def _index_vectors(self, y):
        r"""What the index holds for references y, in float32 (computed in float64): the exact index's
        :math:`r_y = [b_y - b_0,\ b_y y,\ b_y\|y\|^2 - w_0]`, or the tangent vectors :math:`\log_0(y)`."""
        y = y.to(torch.float64)
        if not _is_exact(self.index):
            return poincare.logmap0(y, self.c).float()
        v = y.pow(2).sum(1, keepdim=True)
        b = 1 / (1 - self.c * v)
        b0, w0 = self._offsets
        return torch.cat([b - b0, b * y, b * v - w0], 1).float()

    def train(self, embeddings):
        """Build a new index over ``embeddings`` (ball points); untrained indexes (IVF, PQ) are trained on them."""
        check_embeddings(embeddings, "reference")
        check_in_ball(embeddings, self.c, "reference")
        dim = embeddings.shape[1]
        if self.index_init_fn is None:
            index = _faiss().IndexFlatIP(dim + 2)
        else:
            index = self.index_init_fn(dim)
            if index.metric_type != _faiss().METRIC_L2 or index.d != dim:
                raise ValueError(
                    f"index_init_fn(dim) must return a faiss index of width dim = {dim} (the tangent vectors) with "
                    "the L2 metric, e.g. faiss.IndexHNSWFlat(dim, 32) or faiss.index_factory(dim, 'IVF1024,Flat')."
                )
        self.reset()
        v = embeddings.detach().to(torch.float64).pow(2).sum(1)
        b = 1 / (1 - self.c * v)
        self._offsets = (float(b.mean()), float((b * v).mean()))
        self.index = index
        if not index.is_trained:
            index.train(self._index_vectors(embeddings.detach().cpu()))
        self.add(embeddings)

    def add(self, embeddings):
        """Add ``embeddings`` (ball points) to the index built by :meth:`train`."""
        if self.index is None:
            raise ValueError("PoincareKNN.add needs an index: call train(embeddings) first.")
        check_embeddings(embeddings, "reference", self.reference.shape[1] if self.reference is not None else None)
        check_in_ball(embeddings, self.c, "reference")
        embeddings = embeddings.detach()
        step = max(1, _CHUNK_ELEMENTS // embeddings.shape[1])
        for s in range(0, embeddings.shape[0], step):
            self.index.add(self._index_vectors(embeddings[s : s + step].cpu()))
        if self.reference is not None:
            embeddings = torch.cat([self.reference, embeddings.to(self.reference.device)])
        self._set_reference(embeddings)

    def _set_reference(self, embeddings):
        """Keep the references (in float64: 8 bytes per coordinate) and, per reference, ||y||^2, b = 1/(1-c||y||^2)
        and the error terms [|b - b0|, 2 ||y|| b, |b ||y||^2 - w0|]."""
        self.reference = embeddings.to(torch.float64)
        v = self._sq_norms = self.reference.pow(2).sum(1)
        b0, w0 = self._offsets
        b = self._inv_beta = 1 / (1 - self.c * v)
        self._error_terms = torch.stack([(b - b0).abs(), 2 * v.sqrt() * b, (b * v - w0).abs()], 1).float()

    def save(self, filename):
        """Write the faiss index to ``filename``, and the references, c and offsets to ``filename + '.ref.pt'``."""
        index = _faiss().index_gpu_to_cpu(self.index) if "Gpu" in type(self.index).__name__ else self.index
        _faiss().write_index(index, filename)
        torch.save({"reference": self.reference.cpu(), "c": self.c, "offsets": self._offsets}, filename + ".ref.pt")

    def load(self, filename):
        """Read an index written by :meth:`save` (with the same curvature c)."""
        saved = torch.load(filename + ".ref.pt")
        if saved["c"] != self.c:
            raise ValueError(f"{filename} was built with c = {saved['c']}, but this PoincareKNN has c = {self.c}.")
        self.reset()
        self.index = _faiss().read_index(filename)
        self._offsets = saved["offsets"]
        self._set_reference(saved["reference"])

    def reset(self):
        """Drop the index and the references."""
        self.index = None
        self.reference = None
        self._offsets = None
        self._sq_norms = self._inv_beta = self._error_terms = None


class TangentKMeans:
    r"""``kmeans_func`` for pml's ``AccuracyCalculator`` (NMI / AMI): faiss k-means on :math:`\log_0(x)` of ball points.

    ``faiss_kwargs`` go to pml's ``FaissKMeans`` (e.g. ``niter=20, seed=0``).
    """

    def __init__(self, c=0.1, **faiss_kwargs):
        check_curvature(c)
        self.c = float(c)
        self.kmeans = FaissKMeans(**faiss_kwargs)

    def __call__(self, x, n_clusters):
        check_embeddings(x, "embeddings")
        check_in_ball(x, self.c, "embeddings")
        return self.kmeans(poincare.logmap0(x, self.c), n_clusters)


def _check_layout(x, c):
    """Catch the two ways a tester silently evaluates the wrong geometry: embeddings whose first columns have unit
    norm in every row (``[sphere | ball]``, e.g. ``EuclideanHyperbolicHead``: rank the parts with its ``knn_func()``)
    raise; embeddings whose rows all have unit norm (pml's testers L2-normalise by default) warn."""
    if len(x) < 2 or x.shape[1] < 3:
        return
    with torch.no_grad():
        prefix = x.detach().double().square().cumsum(1)
        unit = ((prefix - 1).abs() < 1e-4).all(0)
        whole = bool(unit[-1])
        split = unit[1:-1].nonzero()  # a unit-norm block of >= 2 columns, then more columns
    if whole and c < 1:
        warnings.warn(
            "Every embedding has unit norm: pml's testers L2-normalise embeddings by default, which moves ball points. "
            "Pass normalize_embeddings=False to GlobalEmbeddingSpaceTester for Poincaré embeddings.",
            UserWarning,
            stacklevel=3,
        )
    elif len(split):
        k = int(split[0]) + 2
        raise ValueError(
            f"The first {k} columns of every embedding have unit norm: these look like [sphere | ball] embeddings "
            "(EuclideanHyperbolicHead, CHESTLoss layout (b)), which PoincareKNN would rank as whole ball points. "
            f"Use the head's knn_func() (or CHESTLoss.knn_func()), or SliceKNN(PoincareKNN(c), start={k}) for the "
            "ball part."
        )


class SliceKNN:
    """A pml ``knn_func`` ranking with ``knn_func`` on the columns ``[start:stop]`` of the embeddings, optionally
    L2-normalised first (the Euclidean part of a two-space embedding, searched as cosine with faiss's L2 search).

    Example: ``SliceKNN(PoincareKNN(c=0.1), start=64)`` ranks the ball part of CHEST's layout (b) embeddings."""

    def __init__(self, knn_func, start=0, stop=None, normalize=False):
        self.knn_func, self.columns, self.normalize = knn_func, slice(start, stop), normalize

    def _part(self, x):
        x = x[:, self.columns]
        return torch.nn.functional.normalize(x, dim=1) if self.normalize else x

    def __call__(self, query, k, reference=None, ref_includes_query=False):
        reference = None if reference is None else self._part(reference)
        return self.knn_func(self._part(query), k, reference, ref_includes_query)
