r"""Hierarchy quality by Dasgupta's cost: decode a tree from points, score it, compare with random trees.

Dasgupta's cost (STOC 2016) of a tree :math:`T` over n leaves under a similarity :math:`w` is

.. math:: C(T; w) = \sum_{i<j} w_{ij}\,\bigl|\operatorname{leaves}(T[i \vee j])\bigr|,

the similarity of every pair times the number of leaves under their lowest common ancestor: similar pairs should
merge low in the tree. Lower is better. HypHC (Chami et al., NeurIPS 2020) relaxes this cost; its decoded trees are
single-linkage trees of the leaves' cosine similarities (:func:`decode_tree`). HypHC's own metric counts ordered
pairs, twice this value.

Trees are scipy linkage matrices (binary trees, e.g. from :func:`decode_tree` or :func:`random_trees`) or a
:class:`~pml_hyperbolic.utils.hierarchy.ClassTree` (any branching) together with the labels of its leaves.
:func:`hierarchy_quality` is the figure for a dataset with a known class tree.
"""

import numpy as np
import torch
from scipy.cluster.hierarchy import is_valid_linkage, linkage

from .hierarchy import ClassTree

__all__ = ["dasgupta_cost", "decode_tree", "hierarchy_quality", "random_trees", "tree_similarity"]


def decode_tree(points, metric="cosine"):
    """Single-linkage binary tree over the rows of ``points`` (HypHC's decoding, with ``metric="cosine"``), as a
    scipy linkage matrix of shape (n - 1, 4).

    ``points`` is an (n, D) array or tensor (n >= 2); ``metric`` is any metric of ``scipy.spatial.distance.pdist``,
    or ``"precomputed"`` for a symmetric (n, n) distance matrix. For leaves on one sphere of the Poincaré ball, the
    depth of the hyperbolic lowest common ancestor increases with the cosine, so this merges the deepest pairs first.
    """
    x = _as_numpy(points, "points")
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"points must be a 2-D array with at least 2 rows, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError("points contain NaN or inf values.")
    if metric == "precomputed":
        _check_square(x, "the precomputed distance matrix")
        if not np.allclose(x, x.T) or (np.diag(x) != 0).any():
            raise ValueError("A precomputed distance matrix must be symmetric with a zero diagonal.")
        return linkage(x[np.triu_indices(len(x), 1)], method="single")
    if metric == "cosine" and (np.linalg.norm(x, axis=1) == 0).any():
        raise ValueError("points has a zero row, which has no direction: the cosine metric is undefined for it.")
    return linkage(x, method="single", metric=metric)


def dasgupta_cost(tree, similarity, labels=None):
    r""":math:`\sum_{i<j} w_{ij} |\text{leaves}(i \vee j)|` of ``tree`` under the (n, n) symmetric ``similarity``.

    Args:
        tree: a scipy linkage matrix (n - 1, 4) over the leaves 0..n-1 (the rows of ``similarity``), or a
            ``ClassTree``: its tree restricted to ``labels`` (one class per row of ``similarity``).
        similarity: (n, n) symmetric, finite, >= 0 (array or tensor); its diagonal is not used.
        labels: the classes of the leaves, only (and then required) for a ``ClassTree``.

    Cost: O(n²) time and memory (a few thousand leaves in well under a second).
    """
    w = _check_similarity(similarity)
    if isinstance(tree, ClassTree):
        if labels is None:
            raise ValueError("A ClassTree needs labels: the class of each row of the similarity matrix.")
        return _class_tree_cost(tree, _check_labels(labels, len(w)), w)
    if labels is not None:
        raise ValueError("labels are only used with a ClassTree; a linkage matrix's leaves are the rows 0..n-1.")
    z = _check_linkage(tree, len(w))
    return _linkage_cost(z, w)


def random_trees(n, num_trees, seed=0):
    """``num_trees`` random binary trees over n >= 2 leaves (scipy linkage matrices): each merges two clusters
    drawn uniformly among the current ones, n - 1 times (the coalescent), from ``numpy.random.default_rng(seed)``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}.")
    if isinstance(num_trees, bool) or not isinstance(num_trees, int) or num_trees < 1:
        raise ValueError(f"num_trees must be an int >= 1, got {num_trees!r}.")
    rng = np.random.default_rng(seed)
    trees = []
    for _ in range(num_trees):
        clusters, sizes = list(range(n)), [1] * (2 * n - 1)
        z = np.empty((n - 1, 4))
        for step in range(n - 1):
            a, b = rng.choice(len(clusters), size=2, replace=False)
            ca, cb = clusters[a], clusters[b]
            sizes[n + step] = sizes[ca] + sizes[cb]
            z[step] = (min(ca, cb), max(ca, cb), step + 1, sizes[n + step])
            clusters[a] = n + step  # the merged cluster takes a's slot; b's slot takes the last one
            clusters[b] = clusters[-1]
            clusters.pop()
        trees.append(z)
    return trees


def tree_similarity(tree, labels):
    r"""(n, n) similarity of the classes ``labels`` given by a ``ClassTree``: :math:`w_{ij}` = depth of their lowest
    common ancestor / the largest class depth (0 = they meet at the root; 1 on the diagonal of a tree with all
    classes at one depth)."""
    labels = _check_labels(labels, None)
    depth = _lca_depths(tree, labels)
    return depth / float(tree.depth(labels).max())


def hierarchy_quality(points, tree, labels, num_random_trees=20, seed=0, metric="cosine"):
    r"""How well the tree decoded from ``points`` (one row per class of ``labels``) matches the class ``tree``.

    Every cost is Dasgupta's (:func:`dasgupta_cost`) under the tree's similarities (:func:`tree_similarity`),
    divided by the cost of the true ``tree`` itself (restricted to ``labels``); lower is better:

    * ``"decoded"``: the single-linkage tree of ``points`` (:func:`decode_tree` with ``metric``);
    * ``"best"``: a binary refinement of the true tree (the single-linkage tree of the true similarities), the lowest
      a binary tree can score (every binary refinement scores the same); below 1 where the true tree has nodes with
      more than two children;
    * ``"random"`` and ``"random_std"``: the mean and standard deviation over ``num_random_trees`` random binary trees
      (:func:`random_trees` with ``seed``).

    Args:
        points: (n, D) array or tensor, e.g. the classes' proxy directions.
        tree: a ``ClassTree`` that contains every class of ``labels``.
        labels: the n distinct classes of the rows of ``points`` (n >= 3).
    """
    if not isinstance(tree, ClassTree):
        raise ValueError(f"tree must be a ClassTree, got {type(tree).__name__}.")
    labels = _check_labels(labels, None)
    if len(labels) < 3:
        raise ValueError(f"hierarchy_quality needs at least 3 classes, got {len(labels)}.")
    x = _as_numpy(points, "points")
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"points must have one row per label ({len(labels)}), got shape {x.shape}.")
    w = tree_similarity(tree, labels)
    true_cost = _class_tree_cost(tree, labels, w)
    if not true_cost > 0:
        raise ValueError("All classes meet at the root (every similarity is 0): the Dasgupta cost is 0 for any tree.")
    best = _linkage_cost(decode_tree(_distance_from_similarity(w), "precomputed"), w)
    random = np.array([_linkage_cost(z, w) for z in random_trees(len(labels), num_random_trees, seed)])
    return {
        "decoded": _linkage_cost(decode_tree(x, metric), w) / true_cost,
        "best": best / true_cost,
        "random": float(random.mean()) / true_cost,
        "random_std": float(random.std()) / true_cost,
    }


# ----------------------------------------------------------------------------------------------------- internals
def _distance_from_similarity(w):
    """1 - w off the diagonal, 0 on it (a valid input of ``decode_tree(..., "precomputed")``)."""
    d = 1.0 - w
    np.fill_diagonal(d, 0.0)
    return d


def _linkage_cost(z, w):
    """Dasgupta's cost of a linkage matrix: the leaves in dendrogram order make every subtree a contiguous range
    [lo, hi), so the sum of w over the pairs inside a subtree is a block of the 2-D prefix sums of the reordered
    matrix; the pairs whose LCA is node v are v's pairs minus its two children's."""
    n = len(w)
    children = z[:, :2].astype(np.int64)
    size = np.ones(2 * n - 1, dtype=np.int64)
    size[n:] = z[:, 3].astype(np.int64)
    lo = np.zeros(2 * n - 1, dtype=np.int64)
    for step in range(n - 2, -1, -1):  # top-down: the left child starts where its parent starts
        a, b = children[step]
        lo[a] = lo[n + step]
        lo[b] = lo[n + step] + size[a]
    order = np.argsort(lo[:n])
    inside = _pair_sums(w[np.ix_(order, order)], lo, lo + size)  # sum of w_ij, i < j, inside each node
    internal = inside[n:] - inside[children[:, 0]] - inside[children[:, 1]]
    return float((size[n:] * internal).sum())


def _pair_sums(w, lo, hi):
    """Sum over i < j of w[i, j] for i, j in [lo, hi), per range, from the 2-D prefix sums of w (zero diagonal)."""
    w = w.copy()
    np.fill_diagonal(w, 0.0)
    p = np.zeros((len(w) + 1, len(w) + 1))
    p[1:, 1:] = w.cumsum(0).cumsum(1)
    return (p[hi, hi] - p[lo, hi] - p[hi, lo] + p[lo, lo]) / 2


def _class_tree_cost(tree, labels, w):
    """Dasgupta's cost of a ClassTree restricted to ``labels``: the LCA of i and j is the ancestor of i at depth
    D_ij = lca_depth(i, j), which has as many leaves as there are k with D_ik >= D_ij."""
    depth = _lca_depths(tree, labels)
    count = np.stack([(depth >= level).sum(1) for level in range(int(depth.max()) + 1)], axis=1)  # (n, levels)
    under = np.take_along_axis(count, depth, axis=1)
    iu = np.triu_indices(len(labels), 1)
    return float((w[iu] * under[iu]).sum())


def _lca_depths(tree, labels, chunk=256):
    """(n, n) int64 matrix of ``tree.lca_depth`` between ``labels``, by blocks of rows (bounded memory)."""
    if not isinstance(tree, ClassTree):
        raise ValueError(f"tree must be a ClassTree, got {type(tree).__name__}.")
    t = torch.as_tensor(labels)
    tree.index(t)  # ValueError for classes that are not in the tree
    rows = [tree.lca_depth(t[s : s + chunk, None], t[None, :]).numpy() for s in range(0, len(t), chunk)]
    return np.concatenate(rows).astype(np.int64)


def _as_numpy(x, name):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric array or tensor: {e}") from None


def _check_square(x, name):
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"{name} must be a square (n, n) matrix, got shape {x.shape}.")


def _check_similarity(similarity):
    w = _as_numpy(similarity, "similarity")
    _check_square(w, "similarity")
    if len(w) < 2:
        raise ValueError("similarity needs at least 2 leaves.")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("similarity must be finite and >= 0 (Dasgupta's cost weighs pairs by their similarity).")
    if not np.allclose(w, w.T, rtol=1e-6, atol=1e-12):
        raise ValueError("similarity must be symmetric.")
    return w


def _check_labels(labels, n):
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D sequence of integer classes, got shape {labels.shape}, dtype {labels.dtype}."
        )
    if n is not None and len(labels) != n:
        raise ValueError(f"labels must have one class per row of the similarity matrix ({n}), got {len(labels)}.")
    if len(np.unique(labels)) != len(labels):
        raise ValueError("labels must be distinct: each leaf is one class.")
    return labels.astype(np.int64)


def _check_linkage(z, n):
    z = _as_numpy(z, "tree")
    if z.shape != (n - 1, 4) or not is_valid_linkage(z):
        raise ValueError(
            f"tree must be a scipy linkage matrix of shape ({n - 1}, 4) for the {n} rows of the similarity matrix "
            f"(or a ClassTree with labels), got shape {z.shape}."
        )
    return z
