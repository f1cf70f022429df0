"""Hierarchy-aware retrieval metrics: a class tree, mistake severity, and how embeddings or hierarchical proxies
group the classes that share a parent.

A :class:`ClassTree` knows, for every class (a leaf), the path of its ancestors. The metrics compare what a model
retrieves or groups with that tree:

- :func:`mistake_severity`: how far up the tree the wrongly retrieved neighbours' classes meet the query's class
  (1 = a sibling class, larger = a more distant class);
- :func:`hierarchical_distance_at_k`: the same height averaged over all top-k neighbours (0 for correct ones);
- :func:`sibling_precision` and :func:`tree_rank_correlation`: given any class-to-class dissimilarity (distances
  between class means, or :func:`lca_proxy_distances` through HIER's hierarchical proxies), whether each class's
  closest other class is a sibling, and how well the dissimilarity ranks class pairs like the tree does.
"""

import torch
from scipy.stats import spearmanr

from .. import poincare


class ClassTree:
    """A class hierarchy given by the ancestors of every class.

    Args:
        paths: ``{class label: sequence of ancestor ids}``, from the top level down to the class's parent (the root
            is implicit and shared, so ``()`` means a child of the root). Ancestors are identified by their whole
            path, so ids only need to be unique among siblings. Labels are integers.

    Example: SOP's two levels are ``ClassTree({class_id: (super_class_id,) for ...})``.
    """

    def __init__(self, paths):
        if len(paths) == 0:
            raise ValueError("A ClassTree needs at least one class.")
        labels = sorted(int(label) for label in paths)
        self.labels = torch.tensor(labels, dtype=torch.long)
        max_len = max(len(p) for p in paths.values())
        node_ids, rows = {}, []
        for i, label in enumerate(labels):
            path = tuple(paths[label])
            ids = [node_ids.setdefault(path[: level + 1], len(node_ids)) for level in range(len(path))]
            rows.append(ids + [-(i + 1)] * (max_len - len(path)))  # padding never matches another class
        self._prefix = torch.tensor(rows, dtype=torch.long).reshape(len(labels), max_len)
        self._path_len = torch.tensor([len(paths[label]) for label in labels], dtype=torch.long)

    def __len__(self):
        return len(self.labels)

    def index(self, labels):
        """Row of each label (any shape, integer or float tensor) in the tree; ValueError for unknown labels."""
        labels = torch.as_tensor(labels).round().long().cpu()
        idx = torch.searchsorted(self.labels, labels).clamp_max(len(self.labels) - 1)
        missing = self.labels[idx] != labels
        if bool(missing.any()):
            raise ValueError(f"Labels {labels[missing].unique()[:10].tolist()} are not classes of this ClassTree.")
        return idx

    def depth(self, labels):
        """Depth of each class: the number of edges from the root (1 for a child of the root)."""
        return self._path_len[self.index(labels)] + 1

    def lca_depth(self, a, b):
        """Depth of the lowest common ancestor of classes ``a`` and ``b`` (broadcast): 0 = the root; a class with
        itself gives its own depth."""
        ia, ib = torch.broadcast_tensors(self.index(a), self.index(b))
        shared = (self._prefix[ia] == self._prefix[ib]).long().cumprod(-1).sum(-1)
        return torch.where(ia == ib, self._path_len[ia] + 1, torch.minimum(shared, self._path_len[ia]))

    def height(self, a, b):
        """How many levels above class ``a`` it meets class ``b``: 0 for the same class, 1 for siblings, ..."""
        return self.depth(a) - self.lca_depth(a, b)

    def tree_distance(self, a, b):
        """Number of edges between classes ``a`` and ``b`` in the tree."""
        return self.depth(a) + self.depth(b) - 2 * self.lca_depth(a, b)

    def siblings(self, a, b):
        """True where ``a`` and ``b`` are different classes with the same parent."""
        ia, ib = torch.broadcast_tensors(self.index(a), self.index(b))
        same_path = (self._prefix[ia] == self._prefix[ib]) | (self._prefix[ia] < 0)
        return (ia != ib) & (self._path_len[ia] == self._path_len[ib]) & same_path.all(-1)


def mistake_severity(knn_labels, query_labels, tree, k=1):
    """Mean height (:meth:`ClassTree.height`) of the wrong classes among each query's ``k`` nearest neighbours.

    ``knn_labels`` is (Q, ≥k) neighbour labels, best first, ``query_labels`` is (Q,). This is the "average mistake
    severity" of Bertinetto et al. (CVPR 2020) for k = 1. Returns 0.0 when there are no mistakes.
    """
    heights = tree.height(query_labels[:, None].cpu(), knn_labels[:, :k].cpu())
    wrong = heights > 0
    return float(heights[wrong].double().mean()) if bool(wrong.any()) else 0.0


def hierarchical_distance_at_k(knn_labels, query_labels, tree, k):
    """Mean height over all top-``k`` neighbours, correct ones counting 0 (Bertinetto et al.'s "hierarchical
    distance@k"); 0 is perfect."""
    return float(tree.height(query_labels[:, None].cpu(), knn_labels[:, :k].cpu()).double().mean())


def class_means(embeddings, labels, c=None):
    """(sorted unique labels, one mean point per class). With a curvature ``c`` the embeddings are ball points and
    the mean is taken in the tangent space at the origin (``expmap0(mean(logmap0(x)))``); otherwise Euclidean."""
    classes, inverse = torch.unique(labels, return_inverse=True)
    x = embeddings if c is None else poincare.logmap0(embeddings, c)
    sums = torch.zeros(len(classes), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    counts = torch.bincount(inverse, minlength=len(classes)).to(x.dtype)
    means = sums / counts[:, None]
    return classes, (means if c is None else poincare.expmap0(means, c))


def lca_proxy_distances(points, proxies, c, chunk=64):
    """(C, C) matrix ``min_p max(d(x_a, p), d(x_b, p))``: how far the two points must go to reach a shared
    hierarchical proxy (HIER's rule for the proxy that plays the pair's lowest common ancestor)."""
    d = poincare.cdist(points, proxies, c)
    rows = [torch.maximum(d[s : s + chunk, None, :], d[None, :, :]).amin(-1) for s in range(0, len(d), chunk)]
    return torch.cat(rows)


def sibling_precision(dissimilarity, labels, tree):
    """Fraction of the classes whose closest other class (by the (C, C) ``dissimilarity`` between the classes
    ``labels``) is a sibling in ``tree``. Only classes with at least one sibling among ``labels`` count."""
    labels = torch.as_tensor(labels).cpu()
    dis = dissimilarity.detach().double().cpu().clone()
    dis.fill_diagonal_(float("inf"))
    sib = tree.siblings(labels[:, None], labels[None, :])
    has_sibling = sib.any(1)
    if not bool(has_sibling.any()):
        raise ValueError("No class has a sibling among the given classes; sibling precision is undefined.")
    nearest = dis.argmin(1)
    hit = sib[torch.arange(len(labels)), nearest]
    return float(hit[has_sibling].double().mean())


def tree_rank_correlation(dissimilarity, labels, tree):
    """Spearman correlation, over all class pairs, between ``dissimilarity`` and the tree distance (1 = the same
    ranking of pairs as the tree)."""
    labels = torch.as_tensor(labels).cpu()
    iu = torch.triu_indices(len(labels), len(labels), offset=1)
    tree_d = tree.tree_distance(labels[iu[0]], labels[iu[1]])
    dis = dissimilarity.detach().double().cpu()[iu[0], iu[1]]
    if tree_d.unique().numel() < 2:
        raise ValueError("All class pairs are equally far apart in the tree; the rank correlation is undefined.")
    return float(spearmanr(dis.numpy(), tree_d.numpy()).statistic)
