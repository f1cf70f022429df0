import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pml_hyperbolic.datasets import Digits, SyntheticTree


def test_digits_zero_shot_split():
    _, y = load_digits(return_X_y=True)
    train, test = Digits("train"), Digits("test")
    assert len(train) == int((y < 5).sum()) == 901 and len(test) == int((y >= 5).sum()) == 896
    assert set(train.labels.tolist()) == {0, 1, 2, 3, 4} and set(test.labels.tolist()) == {5, 6, 7, 8, 9}
    x, label = test[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert len(Digits("train+test")) == len(y)
    with pytest.raises(ValueError, match="Supported splits"):
        Digits("val")


def test_tree_split_over_leaves_and_sizes():
    kw = dict(branching=4, depth=3, dim=8, samples_per_class=5)
    train, test = SyntheticTree("train", **kw), SyntheticTree("test", **kw)
    assert len(train) == len(test) == 32 * 5
    train_classes, test_classes = set(train.labels.tolist()), set(test.labels.tolist())
    assert not train_classes & test_classes and len(train_classes | test_classes) == 64
    for parent in range(16):  # every parent has seen and unseen children
        children = set(range(4 * parent, 4 * parent + 4))
        assert children & train_classes and children & test_classes


def test_tree_is_deterministic_and_independent_of_global_rng():
    torch.manual_seed(0)
    np.random.seed(0)
    a = SyntheticTree("test", seed=3)
    torch.manual_seed(1)
    np.random.seed(1)
    b = SyntheticTree("test", seed=3)
    assert torch.equal(a.data, b.data)
    assert not torch.equal(a.data, SyntheticTree("test", seed=4).data)


def test_tree_ancestry_and_geometry():
    ds = SyntheticTree("train+test", branching=3, depth=3, dim=64, samples_per_class=40, noise=0.1)
    tree = ds.class_tree
    leaves = torch.arange(27)
    # reference: leaves i and j meet (depth - number of shared leading base-3 digits) levels up
    digits = torch.stack([leaves // 9, (leaves // 3) % 3, leaves % 3], 1)
    shared = (digits[:, None] == digits[None]).long().cumprod(-1).sum(-1)
    assert torch.equal(tree.height(leaves[:, None], leaves[None]), 3 - shared)
    # class means: classes that meet lower in the tree are closer on average
    means = torch.stack([ds.data[torch.from_numpy(ds.labels == k)].mean(0) for k in range(27)])
    dist = torch.cdist(means, means)
    height = tree.height(leaves[:, None], leaves[None])
    by_height = [dist[height == h].mean() for h in (1, 2, 3)]
    assert by_height[0] < by_height[1] < by_height[2]


def test_tree_rejects_bad_parameters():
    with pytest.raises(ValueError, match="branching >= 2"):
        SyntheticTree(branching=1)
    with pytest.raises(ValueError, match="noise"):
        SyntheticTree(noise=-1)
