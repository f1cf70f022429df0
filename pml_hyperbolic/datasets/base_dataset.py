import os

from pytorch_metric_learning.datasets import BaseDataset
from torch.utils.data import Dataset


class LocalDataset(BaseDataset):
    """pml's ``BaseDataset`` for a benchmark that is already on disk: nothing is downloaded, and a missing file
    raises ``FileNotFoundError`` with the folder layout the reader expects.

    ``root`` may be the dataset folder itself or its parent (then the folder is ``root/<folder_name>``, the name the
    official archive extracts to). Subclasses set ``folder_name``, ``required_files``, ``layout``, ``url`` and
    ``recall_at`` (the standard Recall@K list of the benchmark), and implement ``generate_split``, which sets
    ``self.paths`` and ``self.labels`` (the class ids of the official files).
    """

    folder_name = ""
    required_files = ()
    layout = ""
    url = ""
    recall_at = (1, 2, 4, 8)

    def __init__(self, root, split="train+test", transform=None, target_transform=None):
        super().__init__(self.find_folder(root), split, transform, target_transform, download=False)

    @classmethod
    def find_folder(cls, root):
        """The folder under ``root`` that holds ``required_files``; FileNotFoundError with the layout otherwise."""
        root = os.path.expanduser(str(root))
        for folder in (root, os.path.join(root, cls.folder_name)):
            if cls.missing_files(folder) == []:
                return folder
        missing = ", ".join(cls.missing_files(root))
        raise FileNotFoundError(
            f"{cls.__name__}: no dataset found at {root!r} (missing: {missing}). pml_hyperbolic never downloads "
            f"data. Get it from {cls.url}, extract it, and pass the folder (or its parent) as root "
            f"(--data-root for examples/train.py). Expected layout:\n{cls.layout}"
        )

    @classmethod
    def missing_files(cls, folder):
        return [f for f in cls.required_files if not os.path.exists(os.path.join(folder, f))]

    def download_and_remove(self):
        raise RuntimeError(f"{type(self).__name__} does not download; see {self.url}.")

    def __getitem__(self, idx):
        from PIL import Image  # an optional dependency: imported when an image is read

        with Image.open(self.paths[idx]) as img:
            img = img.convert("RGB")
        label = self.labels[idx]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return img, label


class InMemoryDataset(Dataset):
    """A small dataset held as tensors, with a zero-shot ``"train"`` / ``"test"`` / ``"train+test"`` split:
    subclasses call ``super().__init__(split, ...)`` first, then set ``self.data`` (images as a float tensor) and
    ``self.labels`` (int64 numpy)."""

    recall_at = (1, 2, 4, 8)

    def __init__(self, split, transform=None, target_transform=None):
        if split not in self.get_available_splits():
            raise ValueError(f"Supported splits are: {', '.join(self.get_available_splits())}")
        self.split, self.transform, self.target_transform = split, transform, target_transform

    def get_available_splits(self):
        return ["train", "test", "train+test"]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        x, label = self.data[idx], self.labels[idx]
        if self.transform is not None:
            x = self.transform(x)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return x, label
