"""Trunks (small networks for digits, Fashion-MNIST, the tree and tests; timm backbones for images) and embedding
heads."""

import os
import socket
import urllib.parse

import timm
import torch

from pml_hyperbolic.layers import ToPoincare

from .errors import UsageError

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
    """Three 3×3 conv-BatchNorm-ReLU blocks (stride 2 in the first two when ``downsample``) and global average
    pooling: ``cnn`` for 8×8 digits (no downsampling) and 28×28 Fashion-MNIST (downsampling), ``tiny_cnn`` for small
    RGB images in tests and smoke runs."""

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
        return SmallCNN(input_shape[0], downsample=input_shape[-1] > 16)
    if name == "tiny_cnn":
        return SmallCNN(input_shape[0], widths=(16, 32, 64), downsample=True)
    return timm_trunk(name, pretrained, pretrained_path, global_pool, image_size=input_shape[-1])


def timm_model_exists(name):
    return timm.is_model(name)


def timm_trunk(name, pretrained=True, pretrained_path=None, global_pool=None, image_size=None):
    """A timm backbone without classifier. Pretrained weights come from ``pretrained_path``, else from timm's caches
    (Hugging Face or torch hub), else are downloaded; without a network the error says so at once (no retries).
    Models with a fixed input size (ViTs) are built for ``image_size`` (timm adapts pretrained position
    embeddings)."""
    if not timm_model_exists(name):
        raise UsageError(
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
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    if pretrained_path is None:
        pretrained_path = cached_weights(default_cfg)
    if pretrained_path is not None:
        if not os.path.isfile(pretrained_path):
            raise UsageError(
                f"--pretrained-path {pretrained_path!r} is not a file. Pass a state dict of {name!r} saved with "
                "torch.save or as .safetensors (e.g. the file timm downloads from huggingface.co/timm)."
            )
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": pretrained_path}, **kwargs)
    offline = UsageError(
        f"The pretrained weights of {name!r} are not in timm's caches (~/.cache/huggingface, ~/.cache/torch) and "
        f"{weights_host(default_cfg)} cannot be reached. Copy the weights file here and pass it with "
        f'--pretrained-path FILE, or fill the cache on a connected machine (python -c "import timm; '
        f"timm.create_model('{name}', pretrained=True)\") and copy it, or train from scratch with --no-pretrained."
    )
    if not host_reachable(weights_host(default_cfg)):
        raise offline
    print(f"Downloading the pretrained weights of {name!r} with timm.")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except OSError as e:
        raise offline from e


def cached_weights(pretrained_cfg):
    """The local file of a timm model's pretrained weights in the Hugging Face or torch hub cache, or None."""
    if pretrained_cfg is None:
        return None
    if pretrained_cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache  # a dependency of timm

        repo, _, revision = pretrained_cfg.hf_hub_id.partition("@")
        for filename in filter(None, (pretrained_cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
            path = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(path, str):
                return path
    if pretrained_cfg.url:
        name = os.path.basename(urllib.parse.urlparse(pretrained_cfg.url).path)
        path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
        if os.path.isfile(path):
            return path
    return None


def weights_host(pretrained_cfg):
    """The host timm downloads a model's weights from."""
    if pretrained_cfg is not None and not pretrained_cfg.hf_hub_id and pretrained_cfg.url:
        return urllib.parse.urlparse(pretrained_cfg.url).hostname
    return urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname


def host_reachable(host, timeout=3.0):
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` seconds (False in Hugging Face's offline
    mode)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


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
