"""What the runner trains and evaluates on: the readers of :mod:`pml_hyperbolic.datasets` with each dataset's
zero-shot protocol, an optional validation split carved from the training classes, and generated images. How the
images reach the device is :mod:`.pipeline`'s job."""

import dataclasses
import math
import os

import numpy as np
import torch
from PIL import Image

from pml_hyperbolic import datasets

from .errors import UsageError
from .images import ImageSet

IMAGE_DATASETS = {
    "cub": datasets.CUB,
    "cars": datasets.Cars196,
    "sop": datasets.StanfordOnlineProducts,
    "inshop": datasets.InShop,
}
DATASETS = ("digits", "fashion-mnist", "tree", *IMAGE_DATASETS, "synthetic-images")
RECALL_AT = {name: reader.recall_at for name, reader in IMAGE_DATASETS.items()}
SMALL_DATASETS = ("digits", "fashion-mnist", "tree")  # in-memory tensors, small trunks


@dataclasses.dataclass
class Data:
    """What the runner trains and evaluates on (pml's ``dataset_dict`` / ``splits_to_eval`` conventions). Image
    datasets are :class:`~.pipeline.ImageSet` objects, the others in-memory datasets; all have ``labels``."""

    train: torch.utils.data.Dataset
    eval_sets: dict  # split name -> dataset
    splits_to_eval: list  # [(query split, [reference splits])], the validation split first when there is one
    recall_at: tuple
    class_tree: object = None  # ClassTree of the evaluation classes, if the dataset has a hierarchy

    @property
    def query_split(self):
        """The test split whose metrics are reported."""
        return self.splits_to_eval[-1][0]

    @property
    def val_split(self):
        return "val" if "val" in self.eval_sets else None


class SyntheticImages(torch.utils.data.Dataset):
    """Generated RGB images, ``(PIL image, label)`` items like the readers': each class a random smooth colour
    pattern, each image that pattern plus noise, stored as uint8 (size, size, 3). Deterministic for a seed; for
    throughput measurements and smoke tests (the decoded cache holds them, so training is what gets measured)."""

    recall_at = (1, 2, 4, 8)

    def __init__(self, num_classes=100, images_per_class=10, size=224, seed=0):
        g = torch.Generator().manual_seed(seed)
        patterns = torch.rand(num_classes, 3, 4, 4, generator=g)
        self.labels = np.repeat(np.arange(num_classes), images_per_class).astype(np.int64)
        self.images = torch.empty(len(self.labels), size, size, 3, dtype=torch.uint8)
        for c in range(num_classes):
            smooth = torch.nn.functional.interpolate(patterns[c : c + 1], size=size, mode="bilinear")
            noisy = smooth + 0.15 * torch.randn(images_per_class, 3, size, size, generator=g)
            rows = slice(c * images_per_class, (c + 1) * images_per_class)
            self.images[rows] = (noisy.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        return Image.fromarray(self.images[idx].numpy()), self.labels[idx]


class LabelledSubset(torch.utils.data.Subset):
    """``torch.utils.data.Subset`` that keeps ``labels``."""

    def __init__(self, dataset, indices):
        super().__init__(dataset, indices)
        self.labels = np.asarray(dataset.labels)[indices]
        self.class_tree = getattr(dataset, "class_tree", None)


def load_data(cfg):
    """The train set and evaluation protocol of ``cfg.dataset`` (test classes unseen in training); with
    ``cfg.val_fraction`` a validation split of held-out training classes comes first in ``splits_to_eval``. A
    missing dataset raises :class:`~.errors.UsageError` with the reader's message (what to get, where to put it)."""
    try:
        return _with_validation(cfg, _load(cfg))
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e


def _load(cfg):
    if cfg.dataset == "digits":
        train, test = datasets.Digits("train"), datasets.Digits("test")
    elif cfg.dataset == "fashion-mnist":
        train = datasets.FashionMNIST(cfg.data_root, "train")
        test = datasets.FashionMNIST(cfg.data_root, "test")
    elif cfg.dataset == "tree":
        kw = dict(
            branching=cfg.tree_branching,
            depth=cfg.tree_depth,
            dim=cfg.tree_dim,
            samples_per_class=cfg.tree_samples_per_class,
            noise=cfg.tree_noise,
            level_decay=cfg.tree_level_decay,
            seed=cfg.tree_seed,
        )
        train, test = datasets.SyntheticTree("train", **kw), datasets.SyntheticTree("test", **kw)
    elif cfg.dataset == "synthetic-images":
        sizes = (cfg.synthetic_classes, cfg.synthetic_images_per_class, cfg.image_size)
        train = ImageSet(SyntheticImages(*sizes, seed=0), key=("synthetic", *sizes, 0))
        test = ImageSet(SyntheticImages(*sizes, seed=1), key=("synthetic", *sizes, 1))
    elif cfg.dataset in IMAGE_DATASETS:
        reader = IMAGE_DATASETS[cfg.dataset]
        root = cfg.data_root or os.path.join("data", reader.folder_name)

        def split(name):
            ds = reader(root, name)
            return ImageSet(ds, key=(cfg.dataset, os.path.abspath(ds.root), name))

        train = split("train")
        if cfg.dataset == "inshop":
            query, gallery = split("query"), split("gallery")
            eval_sets, splits = {"query": query, "gallery": gallery}, [("query", ["gallery"])]
            return Data(train, eval_sets, splits, reader.recall_at, query.reader.class_tree)
        test = split("test")
    else:
        raise ValueError(f"Unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}.")
    tree = getattr(getattr(test, "reader", test), "class_tree", None)
    recall_at = getattr(getattr(test, "reader", test), "recall_at", (1, 2, 4, 8))
    return Data(train, {"test": test}, [("test", ["test"])], recall_at, tree)


def _with_validation(cfg, data):
    """Move the last ``cfg.val_fraction`` of the training classes (in label order) to a ``val`` split."""
    fraction = getattr(cfg, "val_fraction", 0) or 0
    if not fraction:
        return data
    labels = np.asarray(data.train.labels)
    classes = np.unique(labels)
    n_val = max(1, math.ceil(fraction * len(classes)))
    if len(classes) - n_val < 2:
        raise UsageError(
            f"--val-fraction {fraction} leaves {len(classes) - n_val} of the {len(classes)} training classes for "
            "training; use a smaller fraction."
        )
    in_val = np.isin(labels, classes[-n_val:])
    train, val = _subset(data.train, ~in_val, "train"), _subset(data.train, in_val, "val")
    return Data(
        train, {"val": val, **data.eval_sets}, [("val", ["val"])] + data.splits_to_eval, data.recall_at, data.class_tree
    )


def _subset(dataset, mask, name):
    indices = np.flatnonzero(mask)
    if isinstance(dataset, ImageSet):
        key = None if dataset.key is None else (*dataset.key, name)
        return ImageSet(dataset.reader, dataset.indices[indices], key=key)
    return LabelledSubset(dataset, indices)


def input_shape(cfg):
    """Shape of one input item of ``cfg.dataset`` (to size the small trunks)."""
    if cfg.dataset == "digits":
        return (1, 8, 8)
    if cfg.dataset == "fashion-mnist":
        return (1, 28, 28)
    if cfg.dataset == "tree":
        return (cfg.tree_dim,)
    return (3, cfg.image_size, cfg.image_size)
