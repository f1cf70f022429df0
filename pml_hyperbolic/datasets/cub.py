import os

import numpy as np

from .base_dataset import LocalDataset


class CUB(LocalDataset):
    """CUB-200-2011 (Wah et al., 2011) with the zero-shot split of the DML papers: classes 1-100 train, 101-200 test
    (5,864 / 5,924 images). Labels are the class ids of ``image_class_labels.txt`` (1-200)."""

    folder_name = "CUB_200_2011"
    required_files = ("images.txt", "image_class_labels.txt", "images")
    url = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
    layout = (
        "  CUB_200_2011/\n"
        "    images.txt              ('<image id> <relative path>' per line)\n"
        "    image_class_labels.txt  ('<image id> <class id 1-200>' per line)\n"
        "    images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg ..."
    )
    recall_at = (1, 2, 4, 8)

    def generate_split(self):
        paths = dict(_read_pairs(os.path.join(self.root, "images.txt")))
        classes = {k: int(v) for k, v in _read_pairs(os.path.join(self.root, "image_class_labels.txt"))}
        keep = {"train": range(1, 101), "test": range(101, 201), "train+test": range(1, 201)}[self.split]
        keep = set(keep)
        ids = [i for i in sorted(classes, key=int) if classes[i] in keep]
        self.paths = [os.path.join(self.root, "images", paths[i]) for i in ids]
        self.labels = np.array([classes[i] for i in ids], dtype=np.int64)


def _read_pairs(filename):
    with open(filename) as f:
        return [tuple(line.split(maxsplit=1)) for line in f.read().splitlines() if line.strip()]
