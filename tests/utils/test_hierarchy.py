import itertools
import random

import pytest
import torch
from scipy.stats import spearmanr

from pml_hyperbolic import poincare
from pml_hyperbolic.utils import hierarchy
from pml_hyperbolic.utils.hierarchy import ClassTree


def random_tree(seed, num_classes=12, max_depth=4):
    """Classes with random ancestor paths of uneven lengths (ancestor ids reused at different places)."""
    rng = random.Random(seed)
    return {10 * k + 3: tuple(rng.randrange(3) for _ in range(rng.randrange(max_depth))) for k in range(num_classes)}


def reference_lca_depth(paths, a, b):
    if a == b:
        return len(paths[a]) + 1
    shared = 0
    for x, y in zip(paths[a], paths[b]):
        if x != y:
            break
        shared += 1
    return shared


@pytest.mark.parametrize("seed", range(5))
def test_tree_relations_match_a_reference(seed):
    paths = random_tree(seed)
    tree = ClassTree(paths)
    labels = sorted(paths)
    a, b = torch.tensor(labels)[:, None], torch.tensor(labels)[None, :]
    lca = tree.lca_depth(a, b)
    for i, j in itertools.product(range(len(labels)), repeat=2):
        la, lb = labels[i], labels[j]
        ref = reference_lca_depth(paths, la, lb)
        assert int(lca[i, j]) == ref
        assert int(tree.height(a, b)[i, j]) == len(paths[la]) + 1 - ref
        assert int(tree.tree_distance(a, b)[i, j]) == len(paths[la]) + len(paths[lb]) + 2 - 2 * ref
        assert bool(tree.siblings(a, b)[i, j]) == (la != lb and paths[la] == paths[lb])


def test_tree_accepts_float_labels_and_rejects_unknown_ones():
    tree = ClassTree({5: ("x",), 9: ("x",), 2: ("y",)})
    assert tree.height(torch.tensor([5.0]), torch.tensor([9.0])).tolist() == [1]
    assert tree.depth(torch.tensor([2, 5])).tolist() == [2, 2]
    with pytest.raises(ValueError, match=r"\[7\]"):
        tree.height(torch.tensor([7]), torch.tensor([5]))
    with pytest.raises(ValueError, match="at least one class"):
        ClassTree({})


def test_mistake_severity_and_hierarchical_distance_against_loops():
    g = torch.Generator().manual_seed(0)
    paths = random_tree(1, num_classes=8)
    tree = ClassTree(paths)
    labels = torch.tensor(sorted(paths))
    query = labels[torch.randint(len(labels), (40,), generator=g)]
    knn = labels[torch.randint(len(labels), (40, 6), generator=g)]
    knn[:5] = query[:5, None]  # some fully correct rows
    height = lambda a, b: len(paths[a]) + 1 - reference_lca_depth(paths, a, b)  # noqa: E731
    for k in (1, 3, 6):
        values = [height(int(q), int(n)) for q, row in zip(query, knn) for n in row[:k]]
        mistakes = [v for v in values if v > 0]
        assert hierarchy.mistake_severity(knn, query, tree, k) == pytest.approx(sum(mistakes) / len(mistakes))
        assert hierarchy.hierarchical_distance_at_k(knn, query, tree, k) == pytest.approx(sum(values) / len(values))
    assert hierarchy.mistake_severity(query[:, None].repeat(1, 3), query, tree, 3) == 0.0


def test_class_means_euclidean_and_tangent():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(30, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (30,), generator=g) * 3
    classes, euclid = hierarchy.class_means(u, labels)
    assert classes.tolist() == sorted(set(labels.tolist()))
    for c_, m in zip(classes, euclid):
        torch.testing.assert_close(m, u[labels == c_].mean(0))
    x = poincare.expmap0(u, 0.5)
    _, ball = hierarchy.class_means(x, labels, c=0.5)
    for c_, m in zip(classes, ball):
        # tangent mean: artanh form of logmap0 / tanh form of expmap0 written out
        t = (
            torch.atanh(0.5**0.5 * x[labels == c_].norm(dim=1, keepdim=True))
            * x[labels == c_]
            / (0.5**0.5 * x[labels == c_].norm(dim=1, keepdim=True))
        )
        v = t.mean(0)
        ref = torch.tanh(0.5**0.5 * v.norm()) * v / (0.5**0.5 * v.norm())
        torch.testing.assert_close(m, ref)


def test_lca_proxy_distances_against_a_loop():
    g = torch.Generator().manual_seed(2)
    c = 0.1
    points = poincare.expmap0(torch.randn(7, 3, generator=g, dtype=torch.float64), c)
    proxies = poincare.expmap0(torch.randn(11, 3, generator=g, dtype=torch.float64), c)
    got = hierarchy.lca_proxy_distances(points, proxies, c, chunk=3)
    for a in range(7):
        for b in range(7):
            ref = min(
                max(float(poincare.dist(points[a], p, c)), float(poincare.dist(points[b], p, c))) for p in proxies
            )
            assert float(got[a, b]) == pytest.approx(ref, rel=1e-9)


def test_sibling_precision_and_rank_correlation():
    paths = {0: ("a",), 1: ("a",), 2: ("b",), 3: ("b",), 4: ("c",)}
    tree = ClassTree(paths)
    labels = torch.tensor([0, 1, 2, 3, 4])
    tree_d = tree.tree_distance(labels[:, None], labels[None]).double()
    assert hierarchy.sibling_precision(tree_d, labels, tree) == 1.0
    assert hierarchy.tree_rank_correlation(tree_d, labels, tree) == pytest.approx(1.0)
    # class 0's closest is class 2 (not a sibling); the others keep their siblings; class 4 has none and is ignored
    dis = tree_d.clone()
    dis[0, 2] = dis[2, 0] = 0.5
    assert hierarchy.sibling_precision(dis, labels, tree) == pytest.approx(2 / 4)
    iu = torch.triu_indices(5, 5, 1)
    ref = spearmanr(dis[iu[0], iu[1]].numpy(), tree_d[iu[0], iu[1]].numpy()).statistic
    assert hierarchy.tree_rank_correlation(dis, labels, tree) == pytest.approx(ref)
    with pytest.raises(ValueError, match="sibling"):
        hierarchy.sibling_precision(dis[:1, :1], labels[4:], tree)
