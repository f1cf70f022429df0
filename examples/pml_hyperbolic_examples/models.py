"""Trunks (small networks for digits, the tree and tests; timm backbones for images) and embedding heads."""

import os

import timm
import torch

from pml_hyperbolic.layers import ToPoincare

SMALL_TRUNKS = ("mlp", "cnn", "tiny_cnn")


class MLP(torch.nn.Sequential):
    """Flatten, then two Linear-BatchNorm-ReLU layers."""

    def __init__(self, in_features, hidden=256):
        super().__init__(
            torch.nn.Flatten(),
            torch.nn.Linear(in_features, hidden),
            torch.nn.BatchNorm1d(hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.BatchNorm1d(hidden),
            torch.nn.ReLU(),
        )
        self.num_features = hidden


class SmallCNN(torch.nn.Sequential):
    """Three 3×3 conv-BatchNorm-ReLU blocks (stride 2 after the first two when ``downsample``) and global average
    pooling: ``cnn`` for 8×8 digits (no downsampling), ``tiny_cnn`` for small RGB images in tests and smoke runs."""

    def __init__(self, in_channels, widths=(32, 64, 128), downsample=False):
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            stride = 2 if downsample and i < 2 else 1
            layers += [torch.nn.Conv2d(c, w, 3, stride, 1, bias=False), torch.nn.BatchNorm2d(w), torch.nn.ReLU()]
            c = w
        super().__init__(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.num_features = c


def build_trunk(name, input_shape, pretrained=True, pretrained_path=None, global_pool=None):
    """The trunk ``name`` for inputs of ``input_shape`` (C, H, W) or (D,); it has a ``num_features`` attribute.

    ``mlp``, ``cnn`` and ``tiny_cnn`` are small networks trained from scratch; any other name is a timm model built
    without its classifier (``num_classes=0``), with pretrained weights unless ``pretrained`` is False, read from
    ``pretrained_path`` when given (a state dict file), else from timm's Hugging Face cache or download.
    """
    numel = int(torch.Size(input_shape).numel())
    if name == "mlp":
        return MLP(numel)
    if name == "cnn":
        return SmallCNN(input_shape[0])
    if name == "tiny_cnn":
        return SmallCNN(input_shape[0], widths=(16, 32, 64), downsample=True)
    return timm_trunk(name, pretrained, pretrained_path, global_pool, image_size=input_shape[-1])


def timm_trunk(name, pretrained=True, pretrained_path=None, global_pool=None, image_size=None):
    """A timm backbone without classifier; clear errors for unknown names, missing files and offline downloads.
    Models with a fixed input size (ViTs) are built for ``image_size`` (timm adapts pretrained position
    embeddings)."""
    if not timm.is_model(name):
        raise ValueError(
            f"Unknown backbone {name!r}: use one of {', '.join(SMALL_TRUNKS)} or a timm model name "
            "(e.g. resnet50, vit_small_patch16_224, deit_small_distilled_patch16_224, vit_small_patch16_224.dino)."
        )
    kwargs = {"num_classes": 0}
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
    default_cfg = timm.models.get_pretrained_cfg(name)
    if image_size is not None and default_cfg is not None and default_cfg.fixed_input_size:
        if image_size != default_cfg.input_size[-1]:
            kwargs["img_size"] = image_size
    if pretrained_path is not None:
        if not os.path.isfile(pretrained_path):
            raise FileNotFoundError(
                f"--pretrained-path {pretrained_path!r} is not a file. Pass a state dict of {name!r} saved with "
                "torch.save or as .safetensors (e.g. the file timm downloads from huggingface.co/timm)."
            )
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": pretrained_path}, **kwargs)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    print(f"Loading pretrained weights of {name!r} with timm (from its Hugging Face cache, or downloaded into it).")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except OSError as e:
        raise RuntimeError(
            f"Could not get the pretrained weights of {name!r} ({type(e).__name__}: {e}). This machine seems to be "
            "offline, and the weights are not in the Hugging Face cache (~/.cache/huggingface). Either copy the "
            "weights file here and pass it with --pretrained-path FILE, or fill the cache on a connected machine "
            f"(python -c \"import timm; timm.create_model('{name}', pretrained=True)\") and copy it, or train from "
            "scratch with --no-pretrained."
        ) from e


class EmbeddingHead(torch.nn.Module):
    """The embedding head: [LayerNorm without affine (HIER)] → Linear (orthogonal init, zero bias) → the space.

    ``space`` is ``"ball"`` (:class:`~pml_hyperbolic.layers.ToPoincare` with ``c``, ``clip_r``, ``riemannian``),
    ``"sphere"`` (L2-normalised) or ``"euclidean"`` (the Linear output).
    """

    def __init__(
        self, in_features, embedding_size, space="ball", c=0.1, clip_r=2.3, riemannian=False, layer_norm=False
    ):
        super().__init__()
        if space not in ("ball", "sphere", "euclidean"):
            raise ValueError(f"space must be 'ball', 'sphere' or 'euclidean', got {space!r}.")
        self.space = space
        self.norm = torch.nn.LayerNorm(in_features, elementwise_affine=False) if layer_norm else torch.nn.Identity()
        self.linear = torch.nn.Linear(in_features, embedding_size)
        torch.nn.init.orthogonal_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)
        self.to_ball = ToPoincare(c=c, clip_r=clip_r, riemannian=riemannian) if space == "ball" else None

    def forward(self, x):
        x = self.linear(self.norm(x))
        if self.space == "ball":
            return self.to_ball(x)
        if self.space == "sphere":
            return torch.nn.functional.normalize(x, dim=1)
        return x
