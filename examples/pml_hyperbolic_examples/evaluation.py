"""Evaluation: pml's ``GlobalEmbeddingSpaceTester`` fed by the runner's input pipeline, the retrieval metrics of each
evaluation space, and the class-grouping metrics of datasets with a class tree."""

import numpy as np
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyperbolic import poincare
from pml_hyperbolic.utils import dasgupta, hierarchy
from pml_hyperbolic.utils.accuracy_calculator import RetrievalAccuracyCalculator
from pml_hyperbolic.utils.inference import PoincareKNN, SliceKNN

MAX_CLASSES_FOR_GROUPING = 2000  # class-grouping metrics need (classes × classes) matrices


class Tester(GlobalEmbeddingSpaceTester):
    """pml's tester whose batches come from ``batches(dataset, batch_size)`` (an iterable of ``(images, labels)``
    already on the device, e.g. :meth:`.pipeline.Pipeline.eval_batches`) instead of its own DataLoader; labels stay
    on the device (no per-batch host round trip)."""

    def __init__(self, *args, batches, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = batches

    def get_all_embeddings(
        self, dataset, trunk_model, embedder_model=None, collate_fn=None, eval=True, return_as_numpy=False
    ):
        embedder_model = torch.nn.Identity() if embedder_model is None else embedder_model
        if eval:
            trunk_model.eval()
            embedder_model.eval()
        embeddings, labels = [], []
        with torch.no_grad():
            for x, y in self.batches(dataset, self.batch_size):
                embeddings.append(self.get_embeddings_for_eval(trunk_model, embedder_model, x))
                labels.append(y.reshape(len(y), -1))
        embeddings, labels = self.maybe_normalize(torch.cat(embeddings)), torch.cat(labels)
        if return_as_numpy:
            return embeddings.cpu().numpy(), labels.cpu().numpy()
        return embeddings, labels


def make_tester(cfg, data, space, batches, end_of_testing_hook, device):
    """A :class:`Tester` (no L2 normalisation: ball points stay ball points) with Recall@K, MAP@R and, for datasets
    with a class tree, the hierarchy metrics, ranking with ``space`` (a :class:`~.losses.EvalSpace`)."""
    knn = PoincareKNN(c=cfg.curvature) if space.knn == "poincare" else CustomKNN(CosineSimilarity(), batch_size=4096)
    if space.columns is not None:
        knn = SliceKNN(knn, space.columns.start or 0, space.columns.stop)
    include = [f"recall_at_{k}" for k in data.recall_at] + ["mean_average_precision_at_r"]
    if data.class_tree is not None:
        include += ["mistake_severity", f"hierarchical_distance_at_{max(data.recall_at)}"]
    calculator = RetrievalAccuracyCalculator(
        recall_at=data.recall_at, class_tree=data.class_tree, include=include, knn_func=knn, device=device
    )
    return Tester(
        normalize_embeddings=False,
        batch_size=cfg.eval_batch_size,
        data_device=device,
        accuracy_calculator=calculator,
        end_of_testing_hook=end_of_testing_hook,
        batches=batches,
    )


def hierarchy_metrics(run):
    """Class-grouping metrics on the last evaluated test embeddings: do the classes closest to each class (by
    distance between class means, and through the LCA proxies of HIER) share its parent in the class tree? And
    ``dasgupta``: how well the trees decoded by single linkage from the test class means (with the primary space's
    distance) and from the training classes' proxies (cosine of the class directions, HypHC's decoding) match the
    class tree (:func:`dasgupta_figures`)."""
    tree, (epoch, emb, labels) = run.data.class_tree, run.history.embeddings
    classes = torch.unique(labels)
    if len(classes) > MAX_CLASSES_FOR_GROUPING:
        return {"skipped": f"{len(classes)} classes (> {MAX_CLASSES_FOR_GROUPING})"}
    emb, c = primary_embeddings(run, emb)
    classes, means = hierarchy.class_means(emb.double(), labels.long(), c)
    if c is not None:
        dis = poincare.cdist(means, means, c)
    else:
        means = torch.nn.functional.normalize(means, dim=1)
        dis = 1 - means @ means.T
    out = {"epoch": epoch, "class_means": _grouping(dis, classes, tree)}
    if run.setup.lca_proxies is not None:
        with torch.no_grad():
            proxies = run.setup.lca_proxies(run.setup.loss).detach().cpu().double()
        out["lca_proxies"] = _grouping(hierarchy.lca_proxy_distances(means, proxies, c), classes, tree)
    symmetric = ((dis + dis.T) / 2).clamp_min(0).fill_diagonal_(0)
    out["dasgupta"] = {"class_means": dasgupta_figures(symmetric, classes, tree, precomputed=True)}
    if run.setup.class_proxies is not None:
        with torch.no_grad():
            points = run.setup.class_proxies(run.setup.loss).detach().cpu().double()
        out["dasgupta"]["proxies"] = dasgupta_figures(points, np.unique(np.asarray(run.data.train.labels)), tree)
    return out


def dasgupta_figures(points, classes, tree, precomputed=False):
    """:func:`pml_hyperbolic.utils.dasgupta.hierarchy_quality` of ``points`` (one row per class of ``classes``; a
    distance matrix if ``precomputed``): the decoded tree's Dasgupta cost relative to the true tree's, with the best
    binary tree's and random trees' figures (lower is better). None where it is undefined (fewer than 3 classes,
    classes outside the tree, all classes meeting at the root) or too large (O(n²))."""
    classes = np.asarray(classes.cpu() if torch.is_tensor(classes) else classes)
    if len(classes) > MAX_CLASSES_FOR_GROUPING or len(points) != len(classes):
        return None
    try:
        return dasgupta.hierarchy_quality(points, tree, classes, metric="precomputed" if precomputed else "cosine")
    except ValueError:
        return None


def hierarchy_line(metrics):
    """One line for the console: the Dasgupta figures (decoded / best / random) and the sibling precision."""
    if "skipped" in metrics:
        return f"Hierarchy metrics skipped: {metrics['skipped']}."
    parts = []
    for name, q in metrics.get("dasgupta", {}).items():
        if q is not None:
            label = "proxies" if name == "proxies" else "test class means"
            parts.append(f"{label} {q['decoded']:.3f} (best {q['best']:.3f}, random {q['random']:.3f})")
    line = f"Hierarchy (epoch {metrics['epoch']}): Dasgupta cost / true tree's, lower is better: " + "; ".join(parts)
    precision = metrics["class_means"]["sibling_precision"]
    return line + ("" if precision is None else f". Sibling precision of the class means: {100 * precision:.1f} %")


def _grouping(dissimilarity, classes, tree):
    """Sibling precision and tree rank correlation; a metric the test classes leave undefined (no siblings, or all
    pairs equally far in the tree) is reported as None."""
    out = {}
    for name, fn in (
        ("sibling_precision", hierarchy.sibling_precision),
        ("tree_rank_correlation", hierarchy.tree_rank_correlation),
    ):
        try:
            out[name] = fn(dissimilarity, classes, tree)
        except ValueError:
            out[name] = None
    return out


def primary_embeddings(run, embeddings):
    """The part of ``embeddings`` that the first evaluation space ranks, and its curvature (None: not a ball)."""
    space = next(iter(run.setup.eval_spaces.values()))
    if space.columns is not None:
        embeddings = embeddings[:, space.columns]
    return embeddings, (run.cfg.curvature if space.knn == "poincare" else None)
