import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyperbolic.utils.accuracy_calculator import RetrievalAccuracyCalculator
from pml_hyperbolic.utils.hierarchy import ClassTree


def data(seed, n=60, classes=6, dim=5):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, dim, generator=g) + 0.8 * torch.randn(classes, dim, generator=g)[labels]
    return x, labels


def reference_recall(query, q_labels, ref, r_labels, k, same_set):
    d = torch.cdist(query.double(), ref.double())
    if same_set:
        d.fill_diagonal_(float("inf"))
    nn = d.argsort(dim=1, stable=True)[:, :k]
    return (r_labels[nn] == q_labels[:, None]).any(1).double().mean().item()


def calculator(**kwargs):
    return RetrievalAccuracyCalculator(
        knn_func=CustomKNN(LpDistance(normalize_embeddings=False)), device=torch.device("cpu"), **kwargs
    )


@pytest.mark.parametrize("seed", range(3))
def test_recall_at_k_against_brute_force(seed):
    x, y = data(seed)
    got = calculator(recall_at=(1, 3, 10, 50)).get_accuracy(x, y)
    for k in (1, 3, 10, 50):
        assert got[f"recall_at_{k}"] == pytest.approx(reference_recall(x, y, x, y, k, same_set=True))
    xq, yq = data(seed + 10, n=20)
    got = calculator(recall_at=(1, 5)).get_accuracy(xq, yq, x, y)
    for k in (1, 5):
        assert got[f"recall_at_{k}"] == pytest.approx(reference_recall(xq, yq, x, y, k, same_set=False))


def test_recall_at_1_is_precision_at_1_and_map_at_r_is_pmls():
    x, y = data(5)
    knn = CustomKNN(LpDistance(normalize_embeddings=False))
    ours = calculator(recall_at=(1, 2, 4, 8)).get_accuracy(x, y)
    pml = AccuracyCalculator(k="max_bin_count", knn_func=knn, device=torch.device("cpu")).get_accuracy(x, y)
    assert ours["recall_at_1"] == pytest.approx(pml["precision_at_1"])
    assert ours["mean_average_precision_at_r"] == pytest.approx(pml["mean_average_precision_at_r"])
    assert ours["r_precision"] == pytest.approx(pml["r_precision"])


def test_k_larger_than_the_reference_set_is_capped():
    x, y = data(6, n=12, classes=3)
    got = calculator(recall_at=(1, 1000), include=("recall_at_1000",)).get_accuracy(x, y)
    assert got == {"recall_at_1000": 1.0}  # every class has another member somewhere


def test_lone_queries_are_left_out():
    x, y = data(7, n=30, classes=3)
    xq = torch.cat([x[:5], torch.randn(3, 5)])
    yq = torch.cat([y[:5], torch.tensor([99, 99, 99])])  # label absent from the references
    got = calculator(recall_at=(2,), include=("recall_at_2",)).get_accuracy(xq, yq, x, y)
    assert got["recall_at_2"] == pytest.approx(reference_recall(xq[:5], yq[:5], x, y, 2, same_set=False))


def test_hierarchy_metrics():
    tree = ClassTree({0: ("a",), 1: ("a",), 2: ("b",), 3: ("b",)})
    ref = torch.tensor([[0.0], [0.1], [1.0], [1.1], [5.0], [5.1], [6.0], [6.1]])
    ref_labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    query = torch.tensor([[0.96], [5.45]])
    query_labels = torch.tensor([0, 3])
    got = calculator(recall_at=(1, 2), class_tree=tree).get_accuracy(query, query_labels, ref, ref_labels)
    # query 0 (class 0): neighbours 1.0 (class 1, height 1), 1.1 (class 1, height 1)
    # query 1 (class 3): neighbours 5.1 (class 2, sibling: height 1), 5.0 (class 2, height 1)
    assert got["mistake_severity"] == pytest.approx(1.0)
    assert got["hierarchical_distance_at_2"] == pytest.approx(1.0)
    far = torch.tensor([[5.05]])
    got = calculator(recall_at=(1, 2), class_tree=tree).get_accuracy(far, torch.tensor([0]), ref, ref_labels)
    assert got["mistake_severity"] == pytest.approx(2.0)  # class 2 meets class 0 at the root


def test_argument_errors():
    with pytest.raises(ValueError, match="chooses k"):
        calculator(k=5)
    with pytest.raises(ValueError, match="recall_at"):
        calculator(recall_at=(0,))
