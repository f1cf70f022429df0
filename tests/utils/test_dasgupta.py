"""pml_hyperbolic.utils.dasgupta against brute-force references written plainly here: Dasgupta's cost by walking
every pair's ancestors, single linkage by repeated closest-pair merges, and the class tree's LCAs from its paths."""

import itertools

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import is_valid_linkage

from pml_hyperbolic.utils import dasgupta
from pml_hyperbolic.utils.hierarchy import ClassTree


# ------------------------------------------------------------------------------------------------------- references
def linkage_parents(z, n):
    """{node: parent} of a scipy linkage matrix (leaves 0..n-1, merge s creates node n + s)."""
    return {int(child): n + s for s, row in enumerate(z) for child in row[:2]}


def brute_cost(parent, n, w):
    """Σ_{i<j} w_ij |leaves(lca(i, j))| by walking each pair's ancestors."""

    def ancestors(i):
        out = [i]
        while out[-1] in parent:
            out.append(parent[out[-1]])
        return out

    under = {}
    for i in range(n):
        for a in ancestors(i):
            under[a] = under.get(a, 0) + 1
    total = 0.0
    for i, j in itertools.combinations(range(n), 2):
        aj = set(ancestors(j))
        total += w[i, j] * under[next(a for a in ancestors(i) if a in aj)]
    return total


def class_tree_parents(paths, labels):
    """{node: parent} of the tree spanned by ``labels``: leaf i's parent is the node of its whole path, a path node's
    parent is the node of its prefix (the root is the empty path)."""
    nodes = {}

    def node(path):
        return nodes.setdefault(path, len(labels) + len(nodes))

    parent = {}
    for i, label in enumerate(labels):
        path = tuple(paths[label])
        parent[i] = node(path)
        for cut in range(len(path), 0, -1):
            parent[node(path[:cut])] = node(path[: cut - 1])
    return parent


def brute_single_linkage_clusters(x):
    """Clusters made by single linkage on the cosine distance: merge the two clusters with the closest pair of
    members, n - 1 times."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = 1 - x @ x.T
    clusters = [frozenset([i]) for i in range(len(x))]
    made = set()
    while len(clusters) > 1:
        a, b = min(itertools.combinations(range(len(clusters)), 2),
                   key=lambda p: min(d[i, j] for i in clusters[p[0]] for j in clusters[p[1]]))  # fmt: skip
        merged = clusters[a] | clusters[b]
        made.add(merged)
        clusters = [c for k, c in enumerate(clusters) if k not in (a, b)] + [merged]
    return made


def linkage_clusters(z, n):
    members = {i: frozenset([i]) for i in range(n)}
    for s, row in enumerate(z):
        members[n + s] = members[int(row[0])] | members[int(row[1])]
    return {members[n + s] for s in range(len(z))}


def random_similarity(n, seed):
    rng = np.random.default_rng(seed)
    w = rng.random((n, n))
    return (w + w.T) / 2


UNEVEN_PATHS = {0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0,), 4: (1, 2), 5: (1, 2), 6: (1, 2), 7: (), 8: (1, 3)}


# ------------------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("n", [2, 3, 5, 9, 17])
def test_linkage_cost_matches_brute_force(n):
    w = random_similarity(n, seed=n)
    x = np.random.default_rng(n).standard_normal((n, 4))
    for z in [dasgupta.decode_tree(x)] + dasgupta.random_trees(n, 3, seed=n):
        expected = brute_cost(linkage_parents(z, n), n, w)
        assert abs(dasgupta.dasgupta_cost(z, w) - expected) < 1e-10 * expected
        assert abs(dasgupta.dasgupta_cost(z, torch.tensor(w)) - expected) < 1e-10 * expected


def test_every_binary_tree_costs_the_same_on_the_clique():
    """Dasgupta: with all similarities 1, any binary tree over n leaves costs (n³ - n)/3."""
    for n in (2, 7, 40):
        for z in dasgupta.random_trees(n, 4, seed=1):
            assert dasgupta.dasgupta_cost(z, np.ones((n, n))) == pytest.approx((n**3 - n) / 3, rel=1e-12)


@pytest.mark.parametrize("labels", [list(range(9)), [8, 0, 5, 3, 1], [4, 5, 6]])
def test_class_tree_cost_matches_brute_force(labels):
    tree = ClassTree(UNEVEN_PATHS)
    w = random_similarity(len(labels), seed=len(labels))
    expected = brute_cost(class_tree_parents(UNEVEN_PATHS, labels), len(labels), w)
    assert abs(dasgupta.dasgupta_cost(tree, w, labels=labels) - expected) < 1e-10 * expected


def test_decode_tree_is_single_linkage_on_cosine():
    x = np.random.default_rng(0).standard_normal((12, 3))
    z = dasgupta.decode_tree(x)
    assert is_valid_linkage(z) and z.shape == (11, 4)
    assert linkage_clusters(z, 12) == brute_single_linkage_clusters(x)
    # scale does not matter (directions only), nor does the point type
    assert linkage_clusters(dasgupta.decode_tree(torch.tensor(x * 3.0)), 12) == linkage_clusters(z, 12)
    d = 1 - (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    np.fill_diagonal(d, 0)
    assert linkage_clusters(dasgupta.decode_tree(d, "precomputed"), 12) == linkage_clusters(z, 12)


def test_random_trees_are_valid_reproducible_and_varied():
    trees = dasgupta.random_trees(10, 5, seed=3)
    assert all(is_valid_linkage(z) for z in trees)
    again = dasgupta.random_trees(10, 5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(trees, again))
    assert len({frozenset(linkage_clusters(z, 10)) for z in trees}) > 1


def test_tree_similarity_is_the_lca_depth_over_the_largest_depth():
    tree = ClassTree(UNEVEN_PATHS)
    labels = [0, 2, 3, 4, 7]
    w = dasgupta.tree_similarity(tree, labels)
    for (a, la), (b, lb) in itertools.product(enumerate(labels), repeat=2):
        pa, pb = UNEVEN_PATHS[la], UNEVEN_PATHS[lb]
        shared = len(pa) + 1 if la == lb else next(
            (k for k in range(min(len(pa), len(pb))) if pa[k] != pb[k]), min(len(pa), len(pb)))  # fmt: skip
        assert w[a, b] == pytest.approx(shared / 3)  # the deepest class (0, 0) has depth 3


def test_hierarchy_quality_of_exact_random_and_noisy_points():
    """Points whose cosines follow the tree decode to a binary refinement of it (the "best" figure); random points
    score like random trees; every figure is relative to the true tree's cost."""
    paths = {leaf: (leaf // 9, leaf // 3) for leaf in range(27)}  # branching 3, depth 3
    tree = ClassTree(paths)
    labels = list(range(27))
    w = dasgupta.tree_similarity(tree, labels)
    exact = np.linalg.cholesky(0.1 * np.eye(27) + 0.9 * w)
    out = dasgupta.hierarchy_quality(exact, tree, labels, num_random_trees=10, seed=0)
    true_cost = brute_cost(class_tree_parents(paths, labels), 27, w)
    z_best = dasgupta.decode_tree(1 - w + np.eye(27) * (w.diagonal() - 1), "precomputed")
    assert out["decoded"] == pytest.approx(out["best"], rel=1e-12)
    assert out["best"] == pytest.approx(brute_cost(linkage_parents(z_best, 27), 27, w) / true_cost, rel=1e-12)
    assert out["best"] < 1  # nodes with 3 children: a binary refinement costs less than the true tree
    assert out["random"] > 1.2 * out["best"] and out["random_std"] > 0
    noise = np.random.default_rng(1).standard_normal((27, 27))
    random_points = dasgupta.hierarchy_quality(noise, tree, labels, num_random_trees=10)
    assert random_points["decoded"] > out["decoded"]
    assert random_points["decoded"] == pytest.approx(out["random"], rel=0.15)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: dasgupta.decode_tree(np.ones(3)), "2-D"),
        (lambda: dasgupta.decode_tree(np.ones((1, 3))), "at least 2 rows"),
        (lambda: dasgupta.decode_tree(np.array([[1.0, 0], [0, 0]])), "zero row"),
        (lambda: dasgupta.decode_tree(np.array([[1.0, np.nan], [0, 1]])), "NaN"),
        (lambda: dasgupta.decode_tree(np.ones((3, 2)), "precomputed"), "square"),
        (lambda: dasgupta.decode_tree(np.ones((3, 3)), "precomputed"), "zero diagonal"),
        (lambda: dasgupta.dasgupta_cost(dasgupta.random_trees(3, 1)[0], np.ones((3, 2))), "square"),
        (lambda: dasgupta.dasgupta_cost(dasgupta.random_trees(3, 1)[0], -np.ones((3, 3))), ">= 0"),
        (lambda: dasgupta.dasgupta_cost(dasgupta.random_trees(3, 1)[0], np.triu(np.ones((3, 3)))), "symmetric"),
        (lambda: dasgupta.dasgupta_cost(dasgupta.random_trees(4, 1)[0], np.ones((3, 3))), "linkage matrix"),
        (lambda: dasgupta.dasgupta_cost(np.zeros((2, 4)), np.ones((3, 3))), "linkage matrix"),
        (lambda: dasgupta.dasgupta_cost(ClassTree(UNEVEN_PATHS), np.ones((3, 3))), "needs labels"),
        (lambda: dasgupta.dasgupta_cost(ClassTree(UNEVEN_PATHS), np.ones((3, 3)), labels=[0, 0, 1]), "distinct"),
        (lambda: dasgupta.dasgupta_cost(ClassTree(UNEVEN_PATHS), np.ones((3, 3)), labels=[0, 1]), "one class per row"),
        (lambda: dasgupta.dasgupta_cost(ClassTree(UNEVEN_PATHS), np.ones((2, 2)), labels=[0, 99]), "not classes"),
        (lambda: dasgupta.dasgupta_cost(dasgupta.random_trees(3, 1)[0], np.ones((3, 3)), labels=[0, 1, 2]), "only"),
        (lambda: dasgupta.random_trees(1, 1), "n must be"),
        (lambda: dasgupta.random_trees(3, 0), "num_trees"),
        (lambda: dasgupta.hierarchy_quality(np.ones((3, 2)), "tree", [0, 1, 2]), "ClassTree"),
        (lambda: dasgupta.hierarchy_quality(np.ones((2, 2)), ClassTree(UNEVEN_PATHS), [0, 1]), "at least 3"),
        (lambda: dasgupta.hierarchy_quality(np.ones((4, 2)), ClassTree(UNEVEN_PATHS), [0, 1, 2]), "one row per"),
        (lambda: dasgupta.hierarchy_quality(np.eye(3), ClassTree({0: (), 1: (), 2: ()}), [0, 1, 2]), "root"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
