import pytest
import timm
import torch
from pml_hyperbolic_examples import models
from pml_hyperbolic_examples.errors import UsageError
from pml_hyperbolic_examples.models import EmbeddingHead, build_trunk

from pml_hyperbolic import poincare


def test_small_trunks_shapes():
    assert build_trunk("mlp", (1, 8, 8))(torch.rand(3, 1, 8, 8)).shape == (3, 256)
    assert build_trunk("cnn", (1, 8, 8))(torch.rand(3, 1, 8, 8)).shape == (3, 128)
    fashion = build_trunk("cnn", (1, 28, 28))  # downsamples 28 -> 14 -> 7
    assert fashion(torch.rand(3, 1, 28, 28)).shape == (3, 128)
    assert [m.stride for m in fashion if isinstance(m, torch.nn.Conv2d)] == [(2, 2), (2, 2), (1, 1)]
    trunk = build_trunk("tiny_cnn", (3, 32, 32))
    assert trunk(torch.rand(3, 3, 32, 32)).shape == (3, trunk.num_features)


def test_timm_weights_from_a_local_file(tmp_path):
    reference = timm.create_model("test_vit", pretrained=False, num_classes=0)
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    trunk = build_trunk("test_vit", (3, 160, 160), pretrained_path=str(path))
    for (name, p), q in zip(reference.state_dict().items(), trunk.state_dict().values()):
        assert torch.equal(p, q), name
    with pytest.raises(UsageError, match="not a file"):
        build_trunk("test_vit", (3, 160, 160), pretrained_path=str(tmp_path / "missing.pth"))


def test_cached_weights_are_used_without_the_network(tmp_path, monkeypatch):
    reference = timm.create_model("test_vit", pretrained=False, num_classes=0)
    path = tmp_path / "model.pth"
    torch.save(reference.state_dict(), path)
    monkeypatch.setattr(models, "cached_weights", lambda cfg: str(path))
    monkeypatch.setattr(models, "host_reachable", lambda host: pytest.fail("the network was tried"))
    trunk = build_trunk("test_vit", (3, 160, 160))
    for (name, p), q in zip(reference.state_dict().items(), trunk.state_dict().values()):
        assert torch.equal(p, q), name


def test_the_caches_timm_reads_are_searched(tmp_path, monkeypatch):
    import huggingface_hub

    cfg = timm.models.get_pretrained_cfg("resnet50")  # weights on the Hugging Face hub, and a URL
    asked = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, revision: asked.append(name))
    monkeypatch.setattr(models.torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    assert models.cached_weights(cfg) is None
    assert asked == ["model.safetensors", "pytorch_model.bin"]
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, revision: f"/hf/{repo}/{name}")
    assert models.cached_weights(cfg) == "/hf/timm/resnet50.a1_in1k/model.safetensors"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, revision: None)
    url_file = tmp_path / "torch" / "checkpoints" / cfg.url.rsplit("/", 1)[1]
    url_file.parent.mkdir(parents=True)
    url_file.write_bytes(b"x")
    assert models.cached_weights(cfg) == str(url_file)
    assert models.weights_host(cfg) == "huggingface.co"


def test_offline_download_failure_is_explained(monkeypatch):
    create_model = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr(models.timm, "create_model", offline)
    monkeypatch.setattr(models, "cached_weights", lambda cfg: None)
    monkeypatch.setattr(models, "host_reachable", lambda host: True)  # reachable, yet the download fails
    with pytest.raises(UsageError, match="--pretrained-path FILE") as err:
        build_trunk("test_vit", (3, 160, 160))
    assert "--no-pretrained" in str(err.value)
    assert build_trunk("test_vit", (3, 160, 160), pretrained=False).num_features == 64


def test_offline_mode_means_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not models.host_reachable("huggingface.co")


def test_unknown_backbone():
    with pytest.raises(UsageError, match="timm model name"):
        build_trunk("resnet_does_not_exist", (3, 32, 32))


def test_heads():
    x = 10 * torch.randn(5, 12)
    ball = EmbeddingHead(12, 4, "ball", c=0.1, clip_r=2.3)(x)
    assert torch.all(poincare.dist0(ball, 0.1) <= 4.6 + 1e-4)  # clipped: at most 2 r from the origin
    sphere = EmbeddingHead(12, 4, "sphere", layer_norm=True)(x)
    torch.testing.assert_close(sphere.norm(dim=1), torch.ones(5))
    head = EmbeddingHead(12, 4, "euclidean")
    torch.testing.assert_close(head(x), x @ head.linear.weight.T)  # zero bias
    torch.testing.assert_close(head.linear.weight @ head.linear.weight.T, torch.eye(4))  # orthogonal rows
    with pytest.raises(ValueError, match="space"):
        EmbeddingHead(12, 4, "hyperboloid")
