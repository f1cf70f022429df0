"""The input pipeline of the image datasets: uint8 images (:mod:`.images`, decoded once into a cache when it fits)
to normalised batches on the device, with the recipes' augmentations (:mod:`.augment`). Design and measurements:
``docs/runner.md``.

The reference, the HIER / Hyp-ViT transforms on PIL images (:func:`.augment.reference_transforms`), runs everything in
the workers and ships float32 images. This pipeline keeps their semantics and moves the work:

- training crops and flips: torchvision's draws, seeded per item (:class:`SeededSampler`), executed on uint8 tensors
  in the workers (``augment_on="workers"``) or on the device for the whole batch (``"device"``);
- evaluation images: the reference transform up to the uint8 tensor (bitwise the same), cached;
- batches travel as uint8 through pinned memory, are copied without blocking (on CUDA on a side stream, one batch
  ahead) and normalised on the device with the reference's arithmetic (``x / 255``, ``- mean``, ``/ std``), in
  channels-last layout when asked.
"""

import numpy as np
import torch

from .augment import crop, draw_crop, fit_box, seeded
from .images import ImageSet, cached, eval_prepare, train_prepare

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SeededSampler(torch.utils.data.Sampler):
    """``(index, seed)`` for every index of ``sampler``: one seed per epoch from NumPy's global random stream (the
    stream pml's samplers use and the runner's checkpoints restore), plus the position (``rank`` / ``world_size``
    keep the ranks of a data-parallel run apart). An item's random crop then depends on the run's seed, the epoch and
    its position only: not on the number of workers, on which worker reads it, or on whether the run was resumed."""

    def __init__(self, sampler, rank=0, world_size=1):
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        seed = int(np.random.randint(2**62, dtype=np.int64))
        for position, index in enumerate(self.sampler):
            yield int(index), seed + position * self.world_size + self.rank


class TrainImages(torch.utils.data.Dataset):
    """Training items for keys ``(k, seed)`` (:class:`SeededSampler`): ``(uint8 (3, size, size) crop, label)`` with
    ``crop_in_workers``, else ``((uint8 (H, W, 3) image, box), label)`` for :class:`DeviceBatches` to crop. Boxes are
    drawn on the original image size (:func:`draw_crop`, seeded with ``seed``) and moved to the stored resolution.
    Labels are the rank of each class (0, 1, ...)."""

    def __init__(self, source, labels, size, crop_min_scale, crop_in_workers=True):
        self.source, self.size, self.crop_in_workers = source, size, crop_in_workers
        self.scale = (crop_min_scale, 1.0)
        self.labels = np.asarray(labels)
        self.targets = torch.from_numpy(np.searchsorted(np.unique(self.labels), self.labels))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, key):
        k, seed = key
        image, original = self.source[k]
        box = fit_box(seeded(seed, draw_crop, *original, self.scale), original, image.shape[:2])
        if self.crop_in_workers:
            return crop(image, box, self.size), self.targets[k]
        return (image, torch.tensor(box)), self.targets[k]


class EvalImages(torch.utils.data.Dataset):
    """Evaluation items: ``(uint8 (3, size, size) image, label)``, the reference transform before ``ToTensor``."""

    def __init__(self, source, labels):
        self.source, self.labels = source, np.asarray(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, k):
        return self.source[k][0].permute(2, 0, 1), self.labels[k]


class RankLabels(torch.utils.data.Dataset):
    """A dataset of ``(x, label)`` with each label replaced by its rank among the dataset's classes (what pml's
    ``set_min_label_to_zero`` does in the trainer, done here so that labels travel with the batch)."""

    def __init__(self, dataset):
        self.dataset, self.labels = dataset, np.asarray(dataset.labels)
        self.targets = torch.from_numpy(np.searchsorted(np.unique(self.labels), self.labels))

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, k):
        return self.dataset[k][0], self.targets[k]


def collate_sources(batch):
    """Collate ``((image, box), label)`` items of varying image sizes: ``((flat uint8, shapes, boxes), labels)``."""
    images = [item[0][0] for item in batch]
    flat = torch.cat([im.reshape(-1) for im in images])
    shapes = torch.tensor([im.shape[:2] for im in images])
    boxes = torch.stack([item[0][1] for item in batch])
    return (flat, shapes, boxes), torch.stack([torch.as_tensor(item[1]) for item in batch])


def data_loader(dataset, device, num_workers, batch_size, sampler=None, drop_last=False, collate_fn=None):
    """A DataLoader of an image dataset: pinned batches on CUDA, persistent workers, and its own random generator
    (loading never touches the run's random stream; items are seeded by their keys)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator(),
    )


class DeviceBatches:
    """The batches of ``loader`` on ``device``: tensors copied without blocking; uint8 images (``normalize=(mean,
    std)``) cropped there when the loader hands over images and boxes (:func:`collate_sources`), then
    ``(x / 255 - mean) / std`` in float32, channels-last with ``channels_last``. On CUDA the next batch is prepared on
    a side stream while the current one is used (``record_stream`` keeps its memory until that use is done)."""

    def __init__(self, loader, device, normalize=None, size=None, channels_last=False):
        self.loader, self.device, self.size, self.channels_last = loader, device, size, channels_last
        self.normalize = None
        if normalize is not None:
            self.normalize = [torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in normalize]
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __len__(self):
        return len(self.loader)

    @property
    def dataset(self):
        return self.loader.dataset

    def __iter__(self):
        if self.stream is None:
            for batch in self.loader:
                yield self.prepare(batch)
            return
        consumer = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(consumer)  # the normalisation constants
        ready = None
        for batch in self.loader:
            with torch.cuda.stream(self.stream):
                batch = self.prepare(batch)
            if ready is not None:
                yield self._hand_over(ready, consumer)
            ready = batch
        if ready is not None:
            yield self._hand_over(ready, consumer)

    def _hand_over(self, batch, consumer):
        consumer.wait_stream(self.stream)
        for t in batch:
            t.record_stream(consumer)
        return batch

    def prepare(self, batch):
        x, labels = batch
        labels = labels.to(self.device, non_blocking=True)
        if isinstance(x, (list, tuple)):  # images and crop boxes
            flat, shapes, boxes = x
            flat = flat.to(self.device, non_blocking=True)
            parts = flat.split((shapes[:, 0] * shapes[:, 1] * 3).tolist())
            x = torch.stack(
                [
                    crop(p.view(h, w, 3), box, self.size)
                    for p, (h, w), box in zip(parts, shapes.tolist(), boxes.tolist())
                ]
            )
        else:
            x = x.to(self.device, non_blocking=True)
        if self.normalize is not None:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            mean, std = self.normalize
            x = x.float().div_(255).sub_(mean).div_(std)
        return x, labels


class Pipeline:
    """How one run's datasets reach ``device``. Image sets (:class:`ImageSet`): decoded caches, seeded crops
    (:class:`SeededSampler`, distinct per ``rank``), persistent workers, :class:`DeviceBatches` normalisation with
    ``mean`` / ``std``; ``augment_on`` is ``"workers"`` or ``"device"``. In-memory datasets: pml's plain loaders
    (training labels ranked), batches copied to the device."""

    def __init__(self, device, num_workers, image_size, crop_min_scale, mean, std, augment_on="workers",
                 channels_last=False, cache_bytes=0, rank=0, world_size=1):  # fmt: skip
        self.device, self.num_workers, self.size, self.crop_min_scale = device, num_workers, image_size, crop_min_scale
        self.normalize, self.on_device, self.channels_last = (mean, std), augment_on == "device", channels_last
        self.cache_bytes, self.rank, self.world_size = cache_bytes, rank, world_size
        self._eval = {}

    def train_dataset(self, train):
        """The training dataset of a :class:`~.data.Data`'s ``train``: items with ranked labels."""
        if not isinstance(train, ImageSet):
            return RankLabels(train)
        kind = f"{self.size} px training"
        source = cached(train, train_prepare(self.size), kind, self.num_workers, self.cache_bytes)
        return TrainImages(source, train.labels, self.size, self.crop_min_scale, crop_in_workers=not self.on_device)

    def train_batches(self, dataset, sampler, batch_size):
        """Training batches (one epoch per iteration) of ``train_dataset``'s result on the device."""
        if not isinstance(dataset, TrainImages):
            loader = torch.utils.data.DataLoader(
                dataset, batch_size, sampler=sampler, drop_last=True, num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
            )  # fmt: skip
            return DeviceBatches(loader, self.device)
        sampler = SeededSampler(sampler, self.rank, self.world_size)
        collate = collate_sources if self.on_device else None
        loader = data_loader(dataset, self.device, self.num_workers, batch_size, sampler, True, collate)
        return DeviceBatches(loader, self.device, self.normalize, self.size, self.channels_last)

    def eval_batches(self, eval_set, batch_size):
        """Evaluation batches of one of a :class:`~.data.Data`'s ``eval_sets`` on the device (one loader per set,
        kept: its workers persist from one evaluation to the next)."""
        if not isinstance(eval_set, ImageSet):
            loader = torch.utils.data.DataLoader(eval_set, batch_size, num_workers=self.num_workers)
            return DeviceBatches(loader, self.device)
        if (id(eval_set), batch_size) not in self._eval:
            kind = f"{self.size} px evaluation"
            source = cached(eval_set, eval_prepare(self.size), kind, self.num_workers, self.cache_bytes)
            loader = data_loader(EvalImages(source, eval_set.labels), self.device, self.num_workers, batch_size)
            batches = DeviceBatches(loader, self.device, self.normalize, self.size, self.channels_last)
            self._eval[id(eval_set), batch_size] = (eval_set, batches)
        return self._eval[id(eval_set), batch_size][1]

    def close(self):
        """Drop the evaluation loaders (and with them their workers)."""
        self._eval.clear()
