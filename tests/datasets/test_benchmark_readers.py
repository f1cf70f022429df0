import os

import numpy as np
import pytest
import torch
from benchmark_folders import write_cars, write_cub, write_inshop, write_sop
from PIL import Image

from pml_hyperbolic.datasets import CUB, Cars196, InShop, StanfordOnlineProducts


def check_split(dataset, expected):
    count, classes = expected
    assert len(dataset) == count == len(dataset.paths)
    assert set(dataset.labels.tolist()) == classes
    assert all(os.path.isfile(p) for p in dataset.paths)


@pytest.mark.parametrize(
    "reader, writer",
    [(CUB, write_cub), (Cars196, write_cars), (StanfordOnlineProducts, write_sop)],
    ids=["cub", "cars196", "sop"],
)
def test_standard_splits(tmp_path, reader, writer):
    folder, expected = writer(str(tmp_path))
    for split in ("train", "test"):
        check_split(reader(str(tmp_path), split), expected[split])  # the parent folder
        check_split(reader(folder, split), expected[split])  # the dataset folder itself
    both = reader(folder, "train+test")
    assert len(both) == expected["train"][0] + expected["test"][0]
    assert set(both.labels.tolist()) == expected["train"][1] | expected["test"][1]


def test_items_are_rgb_images_with_labels(tmp_path):
    _, expected = write_cub(str(tmp_path))
    ds = CUB(str(tmp_path), "train", transform=lambda img: torch.tensor(np.asarray(img)))
    img, label = ds[0]  # written as a grayscale JPEG
    assert img.shape == (40, 40, 3) and img.dtype == torch.uint8
    assert label in expected["train"][1]
    plain = CUB(str(tmp_path), "test")
    img, _ = plain[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB"


def test_cars_ignores_the_files_test_flag_and_reads_paths(tmp_path):
    folder, _ = write_cars(str(tmp_path))
    train = Cars196(folder, "train")
    assert sorted(set(train.labels.tolist())) == [1, 2, 3, 98]
    assert [os.path.basename(p) for p in train.paths[:2]] == ["000001.jpg", "000002.jpg"]


def test_sop_class_tree_from_super_classes(tmp_path):
    folder, _ = write_sop(str(tmp_path))
    test = StanfordOnlineProducts(folder, "test")
    assert test.super_labels.tolist() == [3] * 8 + [4] * 8
    tree = test.class_tree
    assert tree.height(torch.tensor([5, 5, 5]), torch.tensor([5, 6, 7])).tolist() == [0, 1, 2]


@pytest.mark.parametrize("eval_subfolder", [False, True], ids=["flat", "deepfashion-download"])
def test_inshop_query_gallery_and_tree(tmp_path, eval_subfolder):
    folder, expected, category = write_inshop(str(tmp_path), eval_subfolder=eval_subfolder)
    for split in ("train", "query", "gallery"):
        check_split(InShop(str(tmp_path), split), expected[split])
    query = InShop(folder, "query")
    tree = query.class_tree
    items = sorted(expected["query"][1])
    for a in items:
        for b in items:
            same = category[a] == category[b]
            want = 0 if a == b else (1 if same else (2 if category[a][0] == category[b][0] else 3))
            assert int(tree.height(torch.tensor(a), torch.tensor(b))) == want
    with pytest.raises(ValueError, match="Supported splits"):
        InShop(folder, "test")


@pytest.mark.parametrize("reader", [CUB, Cars196, StanfordOnlineProducts, InShop])
def test_missing_dataset_explains_the_layout(tmp_path, reader):
    with pytest.raises(FileNotFoundError) as err:
        reader(str(tmp_path / "nowhere"), "train")
    message = str(err.value)
    assert "never downloads" in message and reader.folder_name in message and "http" in message


def test_missing_file_is_named(tmp_path):
    folder, _ = write_cub(str(tmp_path))
    os.remove(os.path.join(folder, "image_class_labels.txt"))
    with pytest.raises(FileNotFoundError, match="image_class_labels.txt"):
        CUB(folder, "train")


def test_recall_at_lists():
    assert CUB.recall_at == Cars196.recall_at == (1, 2, 4, 8)
    assert StanfordOnlineProducts.recall_at == (1, 10, 100, 1000)
    assert InShop.recall_at == (1, 10, 20, 30)
