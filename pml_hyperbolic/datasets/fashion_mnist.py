import functools
import os
import shutil
import tempfile

import numpy as np
import torch

from ..utils.hierarchy import ClassTree
from .base_dataset import InMemoryDataset

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Searched in this order when no root is given: the runner's data folder, then where Debian's package puts the files.
DEFAULT_ROOTS = ("data/fashion-mnist", "/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
GROUPS = {"tops": (0, 2, 3, 4, 6), "footwear": (5, 7, 9), "trouser": (1,), "bag": (8,)}


class FashionMNIST(InMemoryDataset):
    """Zalando's Fashion-MNIST (Xiao et al., 2017): 28×28 grayscale product photos of 10 classes, from the four idx
    files of the dataset's repository (``.gz`` or extracted), read by torchvision's ``FashionMNIST``.

    Zero-shot split: ``train`` is classes 0-4 (T-shirt/top, trouser, pullover, dress, coat) of the official training
    file (30,000 images); ``test`` is classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) of the official test file
    (5,000 images), so that MAP@R's neighbour lists stay small (R = 1,000). ``class_tree`` is the dataset's known
    grouping: tops (T-shirt/top, pullover, dress, coat, shirt), footwear (sandal, sneaker, ankle boot), trouser, bag.

    Items are ``(image, label)``: a (1, 28, 28) float tensor in [0, 1] (before ``transform``) and the class (0-9).

    Args:
        root: the folder holding the four files (also accepted: ``root/fashion-mnist`` and torchvision's layout
            ``root/FashionMNIST/raw``). Default: ``data/fashion-mnist``, then Debian's
            ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``). Nothing is downloaded.
        split: ``"train"``, ``"test"`` or ``"train+test"`` (classes 0-4 of the training file and 5-9 of the test
            file).
    """

    class_names = CLASS_NAMES

    def __init__(self, root=None, split="train", transform=None, target_transform=None):
        super().__init__(split, transform, target_transform)
        folder = find_folder(root)
        parts = {"train": [("train", range(0, 5))], "test": [("t10k", range(5, 10))]}
        parts["train+test"] = parts["train"] + parts["test"]
        data, labels = [], []
        for file, classes in parts[split]:
            images, targets = _read(folder, file)
            keep = torch.isin(targets, torch.tensor(list(classes)))
            data.append(images[keep])
            labels.append(targets[keep])
        self.data = (torch.cat(data).float() / 255).unsqueeze(1)
        self.labels = torch.cat(labels).numpy().astype(np.int64)
        self.class_tree = ClassTree({c: (group,) for group, classes in GROUPS.items() for c in classes})


def find_folder(root=None):
    """The folder holding the four idx files (each as ``name`` or ``name.gz``); FileNotFoundError naming the files
    and the Debian package otherwise."""
    roots = DEFAULT_ROOTS if root is None else (os.path.expanduser(str(root)),)
    for r in roots:
        for folder in (r, os.path.join(r, "fashion-mnist"), os.path.join(r, "FashionMNIST", "raw")):
            if all(_locate(folder, f) for f in FILES):
                return folder
    where = " or ".join(repr(r) for r in roots)
    raise FileNotFoundError(
        f"FashionMNIST: no dataset found at {where}. It needs the four idx files {', '.join(f + '.gz' for f in FILES)} "
        "(or extracted, without .gz) from https://github.com/zalandoresearch/fashion-mnist; on Debian/Ubuntu "
        "`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist. Pass their folder as "
        "root (--data-root for examples/train.py). pml_hyperbolic never downloads data."
    )


def _locate(folder, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


@functools.lru_cache(maxsize=2)
def _read_folder(folder):
    """{"train"/"t10k": (uint8 images (N, 28, 28), int64 labels)} through torchvision's ``FashionMNIST``, which reads
    the extracted files from ``<root>/FashionMNIST/raw``: ``.gz`` files are extracted into a temporary copy of that
    layout (with torchvision's ``extract_archive``), read, and removed."""
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST
    from torchvision.datasets.utils import extract_archive

    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "FashionMNIST", "raw")
        os.makedirs(raw)
        for name in FILES:
            path = _locate(folder, name)
            if path.endswith(".gz"):
                extract_archive(path, raw)
            else:
                shutil.copyfile(path, os.path.join(raw, name))
        out = {}
        for part, train in (("train", True), ("t10k", False)):
            ds = TorchvisionFashionMNIST(tmp, train=train)
            out[part] = (ds.data, ds.targets.long())
        return out


def _read(folder, part):
    return _read_folder(os.path.abspath(folder))[part]
