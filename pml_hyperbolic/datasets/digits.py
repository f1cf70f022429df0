import numpy as np
import torch
from torch.utils.data import Dataset


class Digits(Dataset):
    """scikit-learn's handwritten digits (1,797 real 8×8 images, bundled with scikit-learn) with a zero-shot split:
    digits 0-4 train (901 images), 5-9 test (896 images).

    Items are ``(image, label)``: a (1, 8, 8) float tensor in [0, 1] (before ``transform``) and the digit.
    """

    recall_at = (1, 2, 4, 8)

    def __init__(self, split="train+test", transform=None, target_transform=None):
        if split not in self.get_available_splits():
            raise ValueError(f"Supported splits are: {', '.join(self.get_available_splits())}")
        from sklearn.datasets import load_digits  # imported when the dataset is read

        x, y = load_digits(return_X_y=True)
        keep = {"train": y < 5, "test": y >= 5, "train+test": np.ones_like(y, dtype=bool)}[split]
        self.split = split
        self.data = torch.tensor(x[keep] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
        self.labels = y[keep].astype(np.int64)
        self.transform = transform
        self.target_transform = target_transform

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
