import os

import numpy as np
import pytest
import torch
from benchmark_folders import write_fashion_mnist

from pml_hyperbolic.datasets import FashionMNIST, fashion_mnist


@pytest.mark.parametrize("compressed", [True, False])
def test_zero_shot_split_of_generated_idx_files(tmp_path, compressed):
    folder, written = write_fashion_mnist(str(tmp_path / "fm"), compressed=compressed)
    train, test = FashionMNIST(folder, "train"), FashionMNIST(folder, "test")
    images, labels = written["train"]
    keep = labels < 5
    assert len(train) == 15 and set(train.labels.tolist()) == {0, 1, 2, 3, 4}
    assert np.array_equal(train.labels, labels[keep])
    torch.testing.assert_close(train.data, torch.from_numpy(images[keep]).float().unsqueeze(1) / 255)
    images, labels = written["t10k"]  # test classes come from the official test file
    assert len(test) == 10 and np.array_equal(test.labels, labels[labels >= 5])
    torch.testing.assert_close(test.data[:, 0], torch.from_numpy(images[labels >= 5]).float() / 255)
    x, label = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and label == 5
    assert len(FashionMNIST(folder, "train+test")) == 25
    with pytest.raises(ValueError, match="Supported splits"):
        FashionMNIST(folder, "val")


def test_the_parent_folder_and_torchvisions_layout_are_found(tmp_path):
    write_fashion_mnist(str(tmp_path / "fashion-mnist"))
    assert len(FashionMNIST(str(tmp_path), "test")) == 10
    write_fashion_mnist(str(tmp_path / "tv" / "FashionMNIST" / "raw"), compressed=False)
    assert len(FashionMNIST(str(tmp_path / "tv"), "test")) == 10


def test_class_tree_is_the_known_grouping(tmp_path):
    folder, _ = write_fashion_mnist(str(tmp_path))
    tree = FashionMNIST(folder, "test").class_tree
    tops, footwear = [0, 2, 3, 4, 6], [5, 7, 9]
    for group in (tops, footwear):
        for a in group:
            for b in group:
                assert tree.height(torch.tensor(a), torch.tensor(b)) == (0 if a == b else 1)
    for a, b in ((0, 5), (1, 8), (1, 0), (8, 9)):  # across groups, trouser and bag alone
        assert tree.height(torch.tensor(a), torch.tensor(b)) == 2


def test_missing_files_name_the_files_and_the_debian_package(tmp_path):
    folder, _ = write_fashion_mnist(str(tmp_path))
    os.remove(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
    with pytest.raises(FileNotFoundError) as err:
        FashionMNIST(folder, "train")
    message = str(err.value)
    assert "dataset-fashion-mnist" in message and "never downloads" in message
    for name in fashion_mnist.FILES:
        assert name + ".gz" in message


def test_the_real_files_when_installed():
    try:
        folder = fashion_mnist.find_folder()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    train, test = FashionMNIST(folder, "train"), FashionMNIST(folder, "test")
    assert len(train) == 30000 and len(test) == 5000
    assert np.bincount(train.labels).tolist() == [6000] * 5 and np.bincount(test.labels)[5:].tolist() == [1000] * 5
