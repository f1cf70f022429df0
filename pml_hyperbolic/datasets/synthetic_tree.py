import numpy as np
import torch

from ..utils.hierarchy import ClassTree
from .base_dataset import InMemoryDataset


class SyntheticTree(InMemoryDataset):
    """Points whose classes are the leaves of a known tree: the natural test of hierarchical embeddings.

    A complete tree with ``branching`` children per node and ``depth`` levels below the root has
    ``branching ** depth`` leaves (the classes, labelled 0, 1, ... in depth-first order). Every node is its parent's
    position plus a random offset of norm about ``level_decay ** (level - 1)`` (level 1 = the root's children), and a
    sample is its leaf's position plus Gaussian noise of norm about ``noise``, in ``dim`` dimensions. The zero-shot
    split keeps the first half of every parent's children for ``train`` and the rest for ``test``, so test classes
    are unseen but share all their ancestors (and siblings) with training classes.

    The data depend only on the parameters and ``seed`` (not on global random state); ``class_tree`` is the
    :class:`~pml_hyperbolic.utils.hierarchy.ClassTree` of all leaves.
    """

    def __init__(
        self,
        split="train+test",
        branching=4,
        depth=3,
        dim=32,
        samples_per_class=30,
        noise=0.9,
        level_decay=0.7,
        seed=0,
        transform=None,
    ):
        super().__init__(split, transform)
        if not (int(branching) >= 2 and int(depth) >= 1 and int(dim) >= 1 and int(samples_per_class) >= 1):
            raise ValueError("SyntheticTree needs branching >= 2, depth >= 1, dim >= 1 and samples_per_class >= 1.")
        if not (noise >= 0 and level_decay > 0):
            raise ValueError(f"noise must be >= 0 and level_decay > 0, got {noise!r} and {level_decay!r}.")
        rng = np.random.default_rng(seed)
        positions = np.zeros((1, dim))
        for level in range(1, depth + 1):
            offsets = rng.standard_normal((len(positions) * branching, dim)) * level_decay ** (level - 1) / np.sqrt(dim)
            positions = np.repeat(positions, branching, axis=0) + offsets
        num_classes = branching**depth
        labels = np.repeat(np.arange(num_classes), samples_per_class)
        x = positions[labels] + rng.standard_normal((len(labels), dim)) * noise / np.sqrt(dim)
        train_class = (np.arange(num_classes) % branching) < branching // 2
        keep = {"train": train_class[labels], "test": ~train_class[labels], "train+test": np.ones(len(labels), bool)}
        self.data = torch.tensor(x[keep[split]], dtype=torch.float32)
        self.labels = labels[keep[split]].astype(np.int64)
        self.class_tree = ClassTree(
            {
                leaf: tuple(leaf // branching ** (depth - level) for level in range(1, depth))
                for leaf in range(num_classes)
            }
        )
