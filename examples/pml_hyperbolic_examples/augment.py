"""The recipes' augmentations (HIER, Hyp-ViT): the reference on PIL images, and the runner's version on uint8
tensors of any device, which draws the same crops and flips and resizes with torch's antialiased bicubic kernel."""

import torch
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

BICUBIC = T.InterpolationMode.BICUBIC
RATIO = (3 / 4, 4 / 3)


def eval_resize(size):
    """The recipes' evaluation resize: the shorter side to size · 256 / 224."""
    return round(size * 256 / 224)


def reference_transforms(size, mean, std, crop_min_scale):
    """(train, eval) transforms of the HIER / Hyp-ViT recipes on PIL images: ``RandomResizedCrop(size,
    scale=(crop_min_scale, 1), ratio=(3/4, 4/3))`` + horizontal flip; ``Resize(size · 256 / 224)`` +
    ``CenterCrop(size)``; bicubic; ``ToTensor`` + ``Normalize(mean, std)``."""
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose(
        [T.RandomResizedCrop(size, scale=(crop_min_scale, 1.0), interpolation=BICUBIC), T.RandomHorizontalFlip()]
        + normalize
    )
    return train, T.Compose([T.Resize(eval_resize(size), interpolation=BICUBIC), T.CenterCrop(size)] + normalize)


def draw_crop(height, width, scale, ratio=RATIO):
    """``(top, left, h, w, flip)`` of a random-resized crop and flip of a ``height`` × ``width`` image, drawn by
    torchvision (``RandomResizedCrop.get_params``, then ``torch.rand(1) < 0.5``) from torch's random stream, in the
    order the reference ``Compose`` draws them. Areas are uniform in ``scale`` × the image area and log aspect ratios
    uniform in ``log(ratio)``, as long as the crop fits (10 tries, then a central crop)."""
    shape_only = torch.empty(1, 1, 1).expand(1, height, width)
    top, left, h, w = T.RandomResizedCrop.get_params(shape_only, list(scale), list(ratio))
    return top, left, h, w, bool(torch.rand(1) < 0.5)


def crop(image, box, size):
    """Execute a drawn ``box = (top, left, h, w, flip)`` on a uint8 (H, W, 3) image: ``resized_crop`` to
    (3, ``size``, ``size``), bicubic with antialiasing, then the flip. Any device."""
    top, left, h, w, flip = (int(v) for v in box)
    out = TF.resized_crop(image.permute(2, 0, 1), top, left, h, w, [size, size], BICUBIC, antialias=True)
    return TF.horizontal_flip(out) if flip else out


def fit_box(box, original, stored):
    """A box drawn on the ``original`` (H, W) moved to an image ``stored`` at another resolution."""
    if tuple(original) == tuple(stored):
        return box
    sy, sx = stored[0] / original[0], stored[1] / original[1]
    top, left, h, w, flip = box
    top, left = min(round(top * sy), stored[0] - 1), min(round(left * sx), stored[1] - 1)
    h, w = max(1, min(round(h * sy), stored[0] - top)), max(1, min(round(w * sx), stored[1] - left))
    return top, left, h, w, flip


def seeded(seed, draw, *args):
    """``draw(*args)`` with torch's CPU random stream seeded with ``seed``, then put back as it was (CUDA's stream is
    not touched)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return draw(*args)
