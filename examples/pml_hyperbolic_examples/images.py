"""Images of a dataset as uint8 (H, W, 3) tensors: decoded on every read, or once into a cache in memory that forked
DataLoader workers read without copies."""

import os
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from .augment import BICUBIC, eval_resize, seeded

CACHE_OVERSAMPLING = 2  # a cached training image keeps a shorter side of at least 2 × the crop size
_CACHES = {}  # decoded caches of this process, reused by later runs on the same images (compare, benchmarks)


class ImageSet(torch.utils.data.Dataset):
    """Images ``indices`` of a reader (any dataset whose items are ``(PIL image, label)`` without a transform), with
    their labels; ``key`` identifies them for the caches."""

    def __init__(self, reader, indices=None, key=None):
        self.reader = reader
        self.indices = np.arange(len(reader)) if indices is None else np.asarray(indices)
        self.labels = np.asarray(reader.labels)[self.indices]
        self.key = key

    def __len__(self):
        return len(self.indices)

    def image(self, k):
        """The ``k``-th image as an RGB PIL image."""
        return self.reader[int(self.indices[k])][0]

    def __getitem__(self, k):
        return self.image(k), self.labels[k]


class Reference(torch.utils.data.Dataset):
    """An :class:`ImageSet` through a reference transform (the baseline of the tests and the benchmark), with
    ``labels`` instead of the set's. Keys are indices (the transform draws from the worker's random stream, as in
    pml's loaders) or :class:`SeededSampler`'s ``(index, seed)``."""

    def __init__(self, images, transform, labels=None):
        self.images, self.transform = images, transform
        self.labels = images.labels if labels is None else labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            k, seed = key
            return seeded(seed, self.transform, self.images.image(k)), self.labels[k]
        return self.transform(self.images.image(key)), self.labels[key]


def train_prepare(size):
    """PIL image -> (uint8 (H, W, 3) tensor, original (H, W)); a shorter side above ``CACHE_OVERSAMPLING · size`` is
    brought down to it (bicubic)."""
    limit = CACHE_OVERSAMPLING * size

    def prepare(img):
        original = (img.height, img.width)
        short = min(original)
        if short > limit:
            img = img.resize((round(img.width * limit / short), round(img.height * limit / short)), Image.BICUBIC)
        return _tensor(img), original

    return prepare


def eval_prepare(size):
    """PIL image -> (uint8 (size, size, 3) tensor of the reference evaluation transform, original (H, W))."""
    resize = T.Compose([T.Resize(eval_resize(size), interpolation=BICUBIC), T.CenterCrop(size)])

    def prepare(img):
        return _tensor(resize(img)), (img.height, img.width)

    return prepare


def _tensor(img):
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8))


class Prepared(torch.utils.data.Dataset):
    """``prepare`` applied to the images of an :class:`ImageSet` as they are read (no cache)."""

    def __init__(self, images, prepare):
        self.images, self.prepare = images, prepare

    def __len__(self):
        return len(self.images)

    def __getitem__(self, k):
        return self.prepare(self.images.image(k))


class ImageCache(torch.utils.data.Dataset):
    """Prepared uint8 (H, W, 3) images in a few large buffers, with the original size of each: indexing returns
    ``(view, (H, W))`` like :class:`Prepared`. DataLoader workers forked after it is built read it without copies."""

    def __init__(self, chunks, places, originals):
        self.chunks, self.places, self.originals = chunks, places, originals

    def __len__(self):
        return len(self.places)

    @property
    def nbytes(self):
        return sum(c.numel() for c in self.chunks)

    def __getitem__(self, k):
        chunk, start, h, w = self.places[k]
        return self.chunks[chunk][start : start + h * w * 3].view(h, w, 3), self.originals[k]

    @classmethod
    def build(cls, prepared, num_workers, budget_bytes, chunk=64):
        """Read every item of ``prepared`` once, in ``num_workers`` DataLoader workers. Returns None (after reading
        ``chunk`` items) when the whole set would not fit in ``budget_bytes``."""
        loader = torch.utils.data.DataLoader(
            prepared, batch_size=chunk, num_workers=num_workers, collate_fn=_pack, generator=torch.Generator()
        )
        chunks, places, originals = [], [], []
        for flat, shapes, sizes in loader:
            if not chunks and flat.numel() * len(prepared) / len(shapes) > budget_bytes:
                return None
            chunks.append(flat.clone())  # out of the worker's shared-memory segment
            start = 0
            for h, w in shapes.tolist():
                places.append((len(chunks) - 1, start, h, w))
                start += h * w * 3
            originals += [tuple(s) for s in sizes.tolist()]
        return cls(chunks, places, originals)


def _pack(items):
    """Collate prepared images into one flat uint8 tensor with their shapes and original sizes."""
    images = [im for im, _ in items]
    flat = torch.cat([im.reshape(-1) for im in images])
    return flat, torch.tensor([im.shape[:2] for im in images]), torch.tensor([o for _, o in items])


def cached(images, prepare, kind, num_workers, budget_bytes):
    """``prepare`` over ``images``: a decoded :class:`ImageCache` when ``images.key`` is set and it fits in what is
    left of ``budget_bytes`` by this process's other caches (built once per process and reused), else
    :class:`Prepared` (decoding on every read)."""
    prepared = Prepared(images, prepare)
    if images.key is None or len(images) == 0 or budget_bytes <= 0:
        return prepared
    key = (images.key, kind)
    if key not in _CACHES:
        left = budget_bytes - sum(c.nbytes for c in _CACHES.values())
        t0 = time.perf_counter()
        cache = ImageCache.build(prepared, num_workers, left) if left > 0 else None
        if cache is None:
            print(f"Decoding {len(images)} {kind} images on every read: they do not fit in --cache-gb.")
            return prepared
        print(
            f"Decoded {len(images)} {kind} images into memory ({cache.nbytes / 1e9:.2f} GB, "
            f"{time.perf_counter() - t0:.1f} s)."
        )
        _CACHES[key] = cache
    return _CACHES[key]


def memory_budget(gigabytes):
    """Bytes for the decoded caches: ``gigabytes``, or a quarter of the physical memory when None."""
    if gigabytes is not None:
        return int(gigabytes * 1e9)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 0
