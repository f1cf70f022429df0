"""Datasets for the runner: the readers of :mod:`pml_hyperbolic.datasets` with the benchmark transforms, the
zero-shot evaluation protocol of each dataset, and generated images for throughput runs."""

import dataclasses
import os

import numpy as np
import torch
from torchvision import transforms as T

from pml_hyperbolic import datasets

IMAGE_DATASETS = {
    "cub": datasets.CUB,
    "cars": datasets.Cars196,
    "sop": datasets.StanfordOnlineProducts,
    "inshop": datasets.InShop,
}
DATASETS = ("digits", "tree", *IMAGE_DATASETS, "synthetic-images")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass
class Data:
    """What the runner trains and evaluates on (pml's ``dataset_dict`` / ``splits_to_eval`` conventions)."""

    train: torch.utils.data.Dataset
    eval_sets: dict  # split name -> dataset
    splits_to_eval: list  # [(query split, [reference splits])]
    recall_at: tuple
    class_tree: object = None  # ClassTree of the evaluation classes, if the dataset has a hierarchy

    @property
    def query_split(self):
        return self.splits_to_eval[0][0]


class SyntheticImages(torch.utils.data.Dataset):
    """Generated, already normalised (3, size, size) images: each class a random smooth colour pattern, each image
    that pattern plus noise. Deterministic per index; for throughput measurements and smoke tests."""

    recall_at = (1, 2, 4, 8)

    def __init__(self, num_classes=100, images_per_class=10, size=224, seed=0):
        self.size, self.seed = size, seed
        self.labels = np.repeat(np.arange(num_classes), images_per_class).astype(np.int64)
        g = torch.Generator().manual_seed(seed)
        self.patterns = torch.nn.functional.interpolate(
            torch.randn(num_classes, 3, 4, 4, generator=g), size=size, mode="bilinear"
        )

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(idx))
        label = self.labels[idx]
        return self.patterns[label] + 0.5 * torch.randn(3, self.size, self.size, generator=g), label


def image_transforms(image_size, mean, std, crop_min_scale):
    """(train, eval) transforms of the HIER / Hyp-ViT recipes: RandomResizedCrop + flip; Resize(256/224) + center
    crop; bicubic; normalised with the backbone's mean and std."""
    bicubic = T.InterpolationMode.BICUBIC
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(crop_min_scale, 1.0), interpolation=bicubic),
            T.RandomHorizontalFlip(),
            *normalize,
        ]
    )
    test = T.Compose(
        [T.Resize(round(image_size * 256 / 224), interpolation=bicubic), T.CenterCrop(image_size), *normalize]
    )
    return train, test


def load_data(cfg, backbone_cfg=None):
    """The train set and the evaluation protocol of ``cfg.dataset`` (test classes unseen in training). Images are
    normalised with the mean and std of ``backbone_cfg`` (timm's ``pretrained_cfg``), else ImageNet's."""
    if cfg.dataset == "digits":
        train, test = datasets.Digits("train"), datasets.Digits("test")
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
        train = SyntheticImages(cfg.synthetic_classes, cfg.synthetic_images_per_class, cfg.image_size, seed=0)
        test = SyntheticImages(cfg.synthetic_classes, cfg.synthetic_images_per_class, cfg.image_size, seed=1)
    elif cfg.dataset in IMAGE_DATASETS:
        reader = IMAGE_DATASETS[cfg.dataset]
        root = cfg.data_root or os.path.join("data", reader.folder_name)
        backbone_cfg = backbone_cfg or {}
        mean, std = backbone_cfg.get("mean", IMAGENET_MEAN), backbone_cfg.get("std", IMAGENET_STD)
        train_tf, test_tf = image_transforms(cfg.image_size, mean, std, cfg.crop_min_scale)
        train = reader(root, "train", transform=train_tf)
        if cfg.dataset == "inshop":
            query, gallery = reader(root, "query", transform=test_tf), reader(root, "gallery", transform=test_tf)
            return Data(
                train,
                {"query": query, "gallery": gallery},
                [("query", ["gallery"])],
                reader.recall_at,
                query.class_tree,
            )
        test = reader(root, "test", transform=test_tf)
    else:
        raise ValueError(f"Unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}.")
    return Data(train, {"test": test}, [("test", ["test"])], type(test).recall_at, getattr(test, "class_tree", None))


def input_shape(cfg):
    """Shape of one input item of ``cfg.dataset`` (to size the small trunks)."""
    if cfg.dataset == "digits":
        return (1, 8, 8)
    if cfg.dataset == "tree":
        return (cfg.tree_dim,)
    return (3, cfg.image_size, cfg.image_size)
