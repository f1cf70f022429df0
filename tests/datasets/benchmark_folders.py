"""Tiny copies of the four DML benchmarks in their published folder formats, with generated images.

Each writer returns the folder it created and the expected (image count, class set) of every split, computed here
from the written metadata, independently of the readers.
"""

import os

import numpy as np
import scipy.io
from PIL import Image


def write_image(path, seed, size=40, mode="RGB"):
    """A JPEG of ``size`` (an int, or (width, height)): a smooth random colour field plus noise."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = (size, size) if isinstance(size, int) else size
    field = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.clip(np.asarray(field) + rng.normal(0, 12, (height, width, 1)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    (img.convert("L") if mode == "L" else img).save(path)


def write_cub(root, train_classes=(1, 2, 3, 4), test_classes=(101, 102, 103, 200), per_class=4, size=40):
    """CUB_200_2011/{images.txt, image_class_labels.txt, images/<class folder>/<file>.jpg}; one grayscale JPEG;
    images of ``size`` (an int, or (width, height))."""
    folder = os.path.join(root, "CUB_200_2011")
    images, labels, image_id = [], [], 1
    for cls in (*train_classes, *test_classes):
        for j in range(per_class):
            rel = f"{cls:03d}.Bird_{cls}/Bird_{cls}_{j:04d}.jpg"
            write_image(os.path.join(folder, "images", rel), image_id, size, mode="L" if image_id == 1 else "RGB")
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cls}")
            image_id += 1
    with open(os.path.join(folder, "images.txt"), "w") as f:
        f.write("\n".join(images) + "\n")
    with open(os.path.join(folder, "image_class_labels.txt"), "w") as f:
        f.write("\n".join(labels) + "\n")
    expected = {
        "train": (len(train_classes) * per_class, set(train_classes)),
        "test": (len(test_classes) * per_class, set(test_classes)),
    }
    return folder, expected


def write_cars(root, train_classes=(1, 2, 3, 98), test_classes=(99, 100, 101, 196), per_class=4):
    """cars196/{cars_annos.mat, car_ims/NNNNNN.jpg}: the .mat has the original 1×N struct array 'annotations'
    (relative_im_path, bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, test) and 'class_names'."""
    folder = os.path.join(root, "cars196")
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    classes = [c for c in (*train_classes, *test_classes) for _ in range(per_class)]
    annotations = np.zeros((1, len(classes)), dtype=[(f, "O") for f in fields])
    for i, cls in enumerate(classes):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_image(os.path.join(folder, rel), i)
        # the file's own train/test flag alternates: the DML split must ignore it
        annotations[0, i] = (
            rel,
            np.uint8(1),
            np.uint8(2),
            np.uint16(30),
            np.uint16(35),
            np.uint8(cls),
            np.uint8(i % 2),
        )
    class_names = np.array([f"Car model {k}" for k in range(1, 197)], dtype=object).reshape(1, -1)
    scipy.io.savemat(os.path.join(folder, "cars_annos.mat"), {"annotations": annotations, "class_names": class_names})
    expected = {
        "train": (len(train_classes) * per_class, set(train_classes)),
        "test": (len(test_classes) * per_class, set(test_classes)),
    }
    return folder, expected


def write_sop(root, train=((1, 1), (2, 1), (3, 2), (4, 2)), test=((5, 3), (6, 3), (7, 4), (8, 4)), per_class=4):
    """Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <super>_final/<file>.JPG}; (class, super class)."""
    folder = os.path.join(root, "Stanford_Online_Products")
    image_id = 1
    expected = {}
    for name, classes in (("train", train), ("test", test)):
        lines = ["image_id class_id super_class_id path"]
        for cls, sup in classes:
            for j in range(per_class):
                rel = f"super{sup}_final/{cls}_{j}.JPG"
                write_image(os.path.join(folder, rel), image_id)
                lines.append(f"{image_id} {cls} {sup} {rel}")
                image_id += 1
        with open(os.path.join(folder, f"Ebay_{name}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        expected[name] = (len(classes) * per_class, {c for c, _ in classes})
    return folder, expected


def write_inshop(
    root, train_items=(1, 2, 3, 4), test_items=(5, 6, 7, 8), query_per_item=2, gallery_per_item=2, eval_subfolder=False
):
    """Inshop_Clothes/list_eval_partition.txt (count line, header line, rows) and img/<GENDER>/<Category>/id_N/...;
    with ``eval_subfolder`` the DeepFashion download layout Eval/list_eval_partition.txt + Img/img/ instead."""
    folder = os.path.join(root, "Inshop_Clothes")
    image_base = os.path.join(folder, "Img") if eval_subfolder else folder
    rows, seed = [], 0
    category = {
        item: ("WOMEN" if item % 2 else "MEN", "Dresses" if item < 7 else "Tees")
        for item in (*train_items, *test_items)
    }
    plan = [(item, "train", 2) for item in train_items]
    plan += [(item, "query", query_per_item) for item in test_items] + [
        (item, "gallery", gallery_per_item) for item in test_items
    ]
    for item, status, count in plan:
        gender, cat = category[item]
        for j in range(count):
            rel = f"img/{gender}/{cat}/id_{item:08d}/{j:02d}_{status}.jpg"
            write_image(os.path.join(image_base, rel), seed)
            rows.append(f"{rel} id_{item:08d} {status}")
            seed += 1
    partition = (
        os.path.join(folder, "Eval", "list_eval_partition.txt")
        if eval_subfolder
        else os.path.join(folder, "list_eval_partition.txt")
    )
    os.makedirs(os.path.dirname(partition), exist_ok=True)
    with open(partition, "w") as f:
        f.write(f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    expected = {
        "train": (2 * len(train_items), set(train_items)),
        "query": (query_per_item * len(test_items), set(test_items)),
        "gallery": (gallery_per_item * len(test_items), set(test_items)),
    }
    return folder, expected, category


def write_fashion_mnist(root, train_per_class=3, test_per_class=2, compressed=True):
    """The four Fashion-MNIST idx files (big-endian header: magic 2051 / 2049, count, rows, cols; then bytes) with
    ``train_per_class`` / ``test_per_class`` images of each of the 10 classes; pixel (r, c) of image i is
    ``(7 * i + r + 3 * c) % 256``. Returns the folder and {part: (images uint8 (N, 28, 28), labels)}."""
    import gzip
    import struct

    os.makedirs(root, exist_ok=True)
    written = {}
    for part, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
        i, r, c = np.meshgrid(np.arange(len(labels)), np.arange(28), np.arange(28), indexing="ij")
        images = ((7 * i + r + 3 * c + (part == "t10k")) % 256).astype(np.uint8)
        files = {
            f"{part}-images-idx3-ubyte": struct.pack(">iiii", 2051, len(labels), 28, 28) + images.tobytes(),
            f"{part}-labels-idx1-ubyte": struct.pack(">ii", 2049, len(labels)) + labels.tobytes(),
        }
        for name, data in files.items():
            if compressed:
                with gzip.open(os.path.join(root, name + ".gz"), "wb") as f:
                    f.write(data)
            else:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(data)
        written[part] = (images, labels.astype(np.int64))
    return root, written
