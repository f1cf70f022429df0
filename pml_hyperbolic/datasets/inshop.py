import os

import numpy as np

from ..utils.hierarchy import ClassTree
from .base_dataset import LocalDataset


class InShop(LocalDataset):
    """DeepFashion In-Shop Clothes Retrieval (Liu et al., 2016) from ``list_eval_partition.txt``: splits ``train``
    (3,997 items, 25,882 images), ``query`` (14,218 images) and ``gallery`` (12,612 images) of the same 3,985 test
    items; evaluation retrieves each query among the gallery. Labels are the item numbers (``id_00000002`` -> 2);
    ``class_tree`` holds the gender / category hierarchy read from the image paths."""

    folder_name = "Inshop_Clothes"
    required_files = ()
    url = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
    layout = (
        "  Inshop_Clothes/\n"
        "    list_eval_partition.txt   (or Eval/list_eval_partition.txt: a count line, a header line, then\n"
        "                               'img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 query')\n"
        "    img/WOMEN/Dresses/id_00000002/02_1_front.jpg ...   (or Img/img/...)"
    )
    recall_at = (1, 10, 20, 30)

    @classmethod
    def missing_files(cls, folder):
        missing = []
        if _first_existing(folder, ["list_eval_partition.txt", "Eval/list_eval_partition.txt"]) is None:
            missing.append("list_eval_partition.txt")
        if _first_existing(folder, ["img", "Img/img"]) is None:
            missing.append("img/")
        return missing

    def get_available_splits(self):
        return ["train", "query", "gallery"]

    def generate_split(self):
        partition = _first_existing(self.root, ["list_eval_partition.txt", "Eval/list_eval_partition.txt"])
        image_base = os.path.dirname(_first_existing(self.root, ["img", "Img/img"]))
        with open(partition) as f:
            rows = [line.split() for line in f.read().splitlines()[2:] if line.strip()]
        rows = [r for r in rows if r[2] == self.split]
        self.paths = [os.path.join(image_base, r[0]) for r in rows]
        self.labels = np.array([int(r[1].split("_")[-1]) for r in rows], dtype=np.int64)
        tree = {}
        for r in rows:
            parts = r[0].split("/")  # img/<gender>/<category>/id_xxxxxxxx/<file>
            tree.setdefault(int(r[1].split("_")[-1]), tuple(parts[1:3]))
        self.class_tree = ClassTree(tree)


def _first_existing(folder, candidates):
    for c in candidates:
        path = os.path.join(folder, c)
        if os.path.exists(path):
            return path
    return None
