"""The runner's input pipeline against the reference transforms (torchvision on PIL images, float32 batches)."""

import math

import numpy as np
import pytest
import torch
from benchmark_folders import write_cub
from PIL import Image
from pml_hyperbolic_examples import augment
from pml_hyperbolic_examples import images as store
from pml_hyperbolic_examples.augment import crop, draw_crop, reference_transforms
from pml_hyperbolic_examples.images import ImageSet, Reference
from pml_hyperbolic_examples.pipeline import Pipeline, RankLabels, SeededSampler
from pytorch_metric_learning.samplers import MPerClassSampler
from scipy import stats
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from pml_hyperbolic.datasets import CUB

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
CPU = torch.device("cpu")


def smooth_image(width, height, seed):
    """A photograph-like test image: a smooth colour field, a disc, noise."""
    rng = np.random.default_rng(seed)
    field = np.asarray(Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((width, height), 3))
    yy, xx = np.mgrid[0:height, 0:width]
    disc = ((xx - width / 3) ** 2 + (yy - height / 2) ** 2 < (height / 4) ** 2)[..., None] * 80.0
    return Image.fromarray(np.clip(field + disc + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8))


def grey_levels(a, b):
    """|a - b| of two normalised (N, 3, H, W) batches, in grey levels of the uint8 image."""
    return (a - b).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255


def assert_same_within_interpolation(diff):
    """torch's antialiased bicubic kernel against PIL's, in grey levels: a mean below 0.3, 99.9 % of the values
    within one level, a few levels at most at sharp edges."""
    assert diff.mean() <= 0.3 and (diff > 1.01).float().mean() <= 1e-3 and diff.max() <= 8


@pytest.mark.parametrize(
    "box, size",
    [
        ((0, 0, 375, 500, False), 224),  # the whole image, downscaled
        ((50, 60, 300, 200, True), 224),  # downscaled in one direction, upscaled in the other
        ((100, 100, 30, 40, True), 224),  # a small crop, upscaled
        ((10, 20, 100, 80, False), 64),
    ],
)
def test_a_fixed_crop_box_gives_torchvisions_image(box, size):
    img = smooth_image(500, 375, seed=1)
    ours = crop(torch.from_numpy(np.array(img)), box, size)
    ref = F.resized_crop(img, *box[:4], [size, size], InterpolationMode.BICUBIC)
    ref = torch.from_numpy(np.array(F.hflip(ref) if box[4] else ref)).permute(2, 0, 1)
    assert ours.dtype == torch.uint8 and ours.shape == (3, size, size)
    assert_same_within_interpolation((ours.int() - ref.int()).abs().float())


def test_crop_draws_follow_the_configured_distribution():
    torch.manual_seed(0)
    height = width = 1000
    scale, ratio = (0.08, 0.5), (3 / 4, 4 / 3)  # every draw fits: no retries, no fallback
    boxes = np.array([draw_crop(height, width, scale, ratio) for _ in range(3000)])
    top, left, h, w, flip = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    log_ratio = np.log(w / h)
    # reference distributions: area ~ U(scale) of the image, log aspect ratio ~ U(log ratio) (up to pixel rounding)
    assert stats.kstest(area, stats.uniform(scale[0], scale[1] - scale[0]).cdf).pvalue > 1e-3
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    assert stats.kstest(log_ratio, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    assert stats.binomtest(int(flip.sum()), len(flip), 0.5).pvalue > 1e-3
    # the fallback (a draw that does not fit 10 times) is torchvision's central crop
    torch.manual_seed(1)
    assert draw_crop(10, 1000, (0.9, 1.0), ratio)[:4] == (0, 493, 10, 13)


def cub_images(tmp_path, size=(80, 60)):  # shorter side within 2 × the 32 px crops: cached as is
    folder, _ = write_cub(str(tmp_path), per_class=6, size=size)
    reader = CUB(folder, "train")
    return ImageSet(reader, key=("test", str(tmp_path), "train"))


def run_loader(loader, seed=0):
    np.random.seed(seed)
    return [(x.clone(), y.clone()) for x, y in loader]


def sampler_of(images):
    """pml's sampler, new each time (it shuffles its class list in place)."""
    return MPerClassSampler(images.labels, m=2, batch_size=8, length_before_new_iter=24)


def test_cached_uint8_batches_are_the_reference_batches(tmp_path):
    images = cub_images(tmp_path)
    train_tf, _ = reference_transforms(32, MEAN, STD, 0.08)
    reference = Reference(images, train_tf, labels=RankLabels(images).targets)
    loader = torch.utils.data.DataLoader(reference, 8, sampler=SeededSampler(sampler_of(images)), drop_last=True)
    expected = run_loader(loader)

    first = None
    for workers, cache_bytes, augment_on in ((0, 10**9, "workers"), (2, 0, "workers"), (2, 10**9, "device")):
        pipe = Pipeline(CPU, workers, 32, 0.08, MEAN, STD, augment_on, cache_bytes=cache_bytes)
        dataset = pipe.train_dataset(images)
        assert isinstance(dataset.source, store.ImageCache if cache_bytes else store.Prepared)
        batches = run_loader(pipe.train_batches(dataset, sampler_of(images), 8))
        assert len(batches) == len(expected) == 3
        for (x, y), (x_ref, y_ref) in zip(batches, expected):
            assert torch.equal(y, y_ref)
            assert x.dtype == torch.float32 and x.shape == x_ref.shape == (8, 3, 32, 32)
            assert_same_within_interpolation(grey_levels(x, x_ref))
        if first is None:
            first = batches
        else:  # the cache, the number of workers and where crops run change nothing
            assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, first))


def test_evaluation_batches_are_the_reference_transform_bitwise(tmp_path):
    images = cub_images(tmp_path)
    _, eval_tf = reference_transforms(32, MEAN, STD, 0.08)
    expected = torch.stack([eval_tf(images.image(k)) for k in range(len(images))])
    pipe = Pipeline(CPU, 0, 32, 0.08, MEAN, STD, cache_bytes=10**9)
    batches = list(pipe.eval_batches(images, 10))
    assert torch.equal(torch.cat([x for x, _ in batches]), expected)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.from_numpy(images.labels))
    assert pipe.eval_batches(images, 10) is pipe.eval_batches(images, 10)  # one loader (persistent workers)


def test_cache_holds_the_decoded_images_and_respects_its_budget(tmp_path, capsys):
    images = cub_images(tmp_path, size=(150, 100))
    prepare = store.train_prepare(32)  # shorter side above 64 px: stored at 64 px
    cache = store.ImageCache.build(store.Prepared(images, prepare), num_workers=2, budget_bytes=10**9)
    for k in range(len(images)):
        stored, original = cache[k]
        assert original == (100, 150) and stored.shape == (64, 96, 3)
        expected = images.image(k).resize((96, 64), Image.BICUBIC)
        assert torch.equal(stored, torch.from_numpy(np.array(expected)))
    assert store.ImageCache.build(store.Prepared(images, prepare), 0, budget_bytes=10**4) is None
    small = ImageSet(images.reader, key=("test", str(tmp_path), "budget"))
    assert isinstance(store.cached(small, prepare, "x", 0, 10**4), store.Prepared)
    assert "Decoding 24 x images on every read" in capsys.readouterr().out


def test_boxes_drawn_on_the_original_follow_a_downscaled_image():
    img = smooth_image(400, 300, seed=2)
    stored = torch.from_numpy(np.array(img.resize((200, 150), Image.BICUBIC)))
    box = (40, 100, 200, 180, False)
    moved = augment.fit_box(box, (300, 400), (150, 200))
    assert moved == (20, 50, 100, 90, False)
    ref = torch.from_numpy(np.array(F.resized_crop(img, *box[:4], [32, 32], InterpolationMode.BICUBIC))).permute(
        2, 0, 1
    )
    assert (crop(stored, moved, 32).int() - ref.int()).abs().float().mean() < 3  # the same region, resampled


def test_seeded_sampler_seeds_positions_from_numpys_stream():
    np.random.seed(3)
    rank0 = list(SeededSampler(range(5), rank=0, world_size=2))
    np.random.seed(3)
    rank1 = list(SeededSampler(range(5), rank=1, world_size=2))
    assert [i for i, _ in rank1] == list(range(5))
    base = rank0[0][1]
    assert [s for _, s in rank0] == [base + 2 * p for p in range(5)]
    assert [s for _, s in rank1] == [base + 2 * p + 1 for p in range(5)]  # ranks never share a seed
    assert list(SeededSampler(range(5), rank=1, world_size=2)) != rank1  # a new seed each epoch


def test_seeded_draws_leave_the_global_random_state_alone():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = augment.seeded(7, draw_crop, 100, 100, (0.08, 1.0))
    assert torch.equal(torch.get_rng_state(), before)
    assert augment.seeded(7, draw_crop, 100, 100, (0.08, 1.0)) == a
