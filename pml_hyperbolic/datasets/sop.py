import os

import numpy as np

from ..utils.hierarchy import ClassTree
from .base_dataset import LocalDataset


class StanfordOnlineProducts(LocalDataset):
    """Stanford Online Products (Oh Song et al., 2016) with its standard split: ``Ebay_train.txt`` (11,318 classes,
    59,551 images) and ``Ebay_test.txt`` (11,316 classes, 60,502 images). Labels are the ``class_id`` column;
    ``super_labels`` holds ``super_class_id`` and ``class_tree`` the two-level hierarchy (12 super classes)."""

    folder_name = "Stanford_Online_Products"
    required_files = ("Ebay_train.txt", "Ebay_test.txt")
    url = "https://cvgl.stanford.edu/projects/lifted_struct/"
    layout = (
        "  Stanford_Online_Products/\n"
        "    Ebay_train.txt, Ebay_test.txt  (header 'image_id class_id super_class_id path', one image per line)\n"
        "    bicycle_final/111085122871_0.JPG ..."
    )
    recall_at = (1, 10, 100, 1000)

    def generate_split(self):
        files = {
            "train": ["Ebay_train.txt"],
            "test": ["Ebay_test.txt"],
            "train+test": ["Ebay_train.txt", "Ebay_test.txt"],
        }
        rows = []
        for name in files[self.split]:
            with open(os.path.join(self.root, name)) as f:
                rows += [line.split() for line in f.read().splitlines()[1:] if line.strip()]
        self.paths = [os.path.join(self.root, r[3]) for r in rows]
        self.labels = np.array([int(r[1]) for r in rows], dtype=np.int64)
        self.super_labels = np.array([int(r[2]) for r in rows], dtype=np.int64)
        self.class_tree = ClassTree({int(r[1]): (int(r[2]),) for r in rows})
