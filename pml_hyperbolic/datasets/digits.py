import numpy as np
import torch

from .base_dataset import InMemoryDataset


class Digits(InMemoryDataset):
    """scikit-learn's handwritten digits (1,797 real 8×8 images, bundled with scikit-learn) with a zero-shot split:
    digits 0-4 train (901 images), 5-9 test (896 images).

    Items are ``(image, label)``: a (1, 8, 8) float tensor in [0, 1] (before ``transform``) and the digit.
    """

    def __init__(self, split="train+test", transform=None, target_transform=None):
        super().__init__(split, transform, target_transform)
        from sklearn.datasets import load_digits  # imported when the dataset is read

        x, y = load_digits(return_X_y=True)
        keep = {"train": y < 5, "test": y >= 5, "train+test": np.ones_like(y, dtype=bool)}[split]
        self.data = torch.tensor(x[keep] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
        self.labels = y[keep].astype(np.int64)
