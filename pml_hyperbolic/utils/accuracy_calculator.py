"""pml's ``AccuracyCalculator`` with the retrieval metrics of the deep-metric-learning benchmarks."""

import functools

from pytorch_metric_learning.utils.accuracy_calculator import (
    AccuracyCalculator,
    maybe_get_avg_of_avgs,
    nan_accuracy,
    try_getting_not_lone_labels,
)

from . import hierarchy


class RetrievalAccuracyCalculator(AccuracyCalculator):
    """``AccuracyCalculator`` plus ``recall_at_<K>`` metrics and, given a class tree, hierarchy-aware metrics.

    Recall@K is the fraction of queries with at least one same-class item among their K nearest references (the
    metric the DML papers report; Recall@1 equals pml's ``precision_at_1``). With ``class_tree``, it adds
    ``mistake_severity`` (how far up the tree the wrong top-1 neighbours' classes meet the query's class, see
    :func:`~pml_hyperbolic.utils.hierarchy.mistake_severity`) and ``hierarchical_distance_at_<K>`` for the largest K
    (plain means over the queries, whatever ``avg_of_avgs``).

    Neighbours are computed once for the largest of: the largest K, and pml's ``max_bin_count`` (so that MAP@R and
    R-precision stay exact), capped by the number of references.

    Args:
        recall_at: the K values, e.g. a dataset's ``recall_at`` (``StanfordOnlineProducts.recall_at``).
        class_tree: a :class:`~pml_hyperbolic.utils.hierarchy.ClassTree` whose leaves are the labels.
        **kwargs: pml's ``AccuracyCalculator`` arguments (``include``, ``exclude``, ``knn_func``, ...). ``k`` is
            set as described above and cannot be passed.
    """

    def __init__(self, recall_at=(1, 2, 4, 8), class_tree=None, **kwargs):
        if "k" in kwargs:
            raise ValueError("RetrievalAccuracyCalculator chooses k itself (max of recall_at and max_bin_count).")
        recall_at = tuple(int(k) for k in recall_at)
        if len(recall_at) == 0 or min(recall_at) < 1:
            raise ValueError(f"recall_at must be a non-empty list of integers >= 1, got {recall_at!r}.")
        self.recall_at = recall_at
        self.class_tree = class_tree
        self._extra_knn_metrics = [f"recall_at_{k}" for k in recall_at]
        for k in recall_at:
            setattr(self, f"calculate_recall_at_{k}", functools.partial(self._recall_at_k, k=k))
        if class_tree is not None:
            k_max = max(recall_at)
            self._extra_knn_metrics += ["mistake_severity", f"hierarchical_distance_at_{k_max}"]
            self.calculate_mistake_severity = functools.partial(self._hierarchy_metric, fn=self._severity)
            setattr(
                self,
                f"calculate_hierarchical_distance_at_{k_max}",
                functools.partial(self._hierarchy_metric, fn=self._hierarchical_distance),
            )
        super().__init__(k="max_bin_count", **kwargs)

    def requires_knn(self):
        return super().requires_knn() + self._extra_knn_metrics

    def determine_k(self, bin_counts, num_reference_embeddings, ref_includes_query):
        k = super().determine_k(bin_counts, num_reference_embeddings, ref_includes_query)
        return min(max(k, max(self.recall_at)), num_reference_embeddings - int(ref_includes_query))

    def _recall_at_k(self, knn_labels, query_labels, not_lone_query_mask, label_counts, k, **kwargs):
        knn_labels, query_labels = try_getting_not_lone_labels(knn_labels, query_labels, not_lone_query_mask)
        if knn_labels is None:
            return nan_accuracy(label_counts[0], self.return_per_class)
        hit = self.label_comparison_fn(query_labels[:, None], knn_labels[:, :k]).any(1)
        return maybe_get_avg_of_avgs(hit.double(), query_labels[:, None], self.avg_of_avgs, self.return_per_class)

    def _hierarchy_metric(self, knn_labels, query_labels, not_lone_query_mask, label_counts, fn, **kwargs):
        knn_labels, query_labels = try_getting_not_lone_labels(knn_labels, query_labels, not_lone_query_mask)
        if knn_labels is None:
            return nan_accuracy(label_counts[0], self.return_per_class)
        return fn(knn_labels, query_labels)

    def _severity(self, knn_labels, query_labels):
        return hierarchy.mistake_severity(knn_labels, query_labels, self.class_tree, k=1)

    def _hierarchical_distance(self, knn_labels, query_labels):
        return hierarchy.hierarchical_distance_at_k(knn_labels, query_labels, self.class_tree, max(self.recall_at))
