import glob
import json
import os

import pytest
import torch
from benchmark_folders import write_cars, write_cub, write_inshop, write_sop
from pml_hyperbolic_examples import losses as registry
from pml_hyperbolic_examples.config import parse_args
from pml_hyperbolic_examples.losses import EvalSpace, LossSetup
from pml_hyperbolic_examples.train import main
from pml_hyperbolic_examples.trainer import RecipeTrainer, lr_factor
from pytorch_metric_learning.losses import SupConLoss

from pml_hyperbolic.distances import EuclideanHyperbolicDistance
from pml_hyperbolic.layers import EuclideanHyperbolicHead

TINY_IMAGES = [
    "--backbone", "tiny_cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--m-per-class", "2",
    "--num-workers", "0", "--eval-batch-size", "16", "--embedding-size", "16", "--threads", "1",
    "--hier-proxies", "32", "--hier-topk", "4",
]  # fmt: skip
FAST_DIGITS = ["--samples-per-epoch", "100", "--hier-proxies", "32", "--hier-topk", "10"]


def check_outputs(out, epoch=1, loss_has_parameters=True):
    for name in ("results.json", "results.csv", "recall.png", "embeddings.png", "logs/logs.db"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert glob.glob(os.path.join(out, "tensorboard", "events.out.tfevents.*"))
    saved = {os.path.basename(p) for p in glob.glob(os.path.join(out, "saved_models", "*.pth"))}
    keys = ["trunk", "embedder", "trunk_optimizer", "embedder_optimizer", "trunk_scheduler_by_epoch", "run_state"]
    if loss_has_parameters:
        keys += ["metric_loss", "metric_loss_optimizer", "metric_loss_scheduler_by_epoch"]
    for key in keys:
        assert f"{key}_{epoch}.pth" in saved and f"{key}_best{epoch}.pth" in saved, key


@pytest.mark.parametrize(
    "dataset, writer, loss, space",
    [
        ("cub", write_cub, "proxy_anchor+hier", "poincare"),
        ("cars", write_cars, "hyperbolic_softtriple", "poincare"),
        ("sop", write_sop, "softtriple", "cosine"),
        ("inshop", write_inshop, "hyperbolic_contrastive", "poincare"),
    ],
)
def test_benchmark_formats_end_to_end(tmp_path, dataset, writer, loss, space):
    folder, expected, *_ = writer(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    results = main(["--dataset", dataset, "--data-root", folder, "--loss", loss, "--output", out, *TINY_IMAGES])

    info = results["dataset"]
    eval_splits = ("query", "gallery") if dataset == "inshop" else ("test",)
    for split in ("train", *eval_splits):
        assert info[split] == {"images": expected[split][0], "classes": len(expected[split][1])}
    recall_at = {"cub": (1, 2, 4, 8), "cars": (1, 2, 4, 8), "sop": (1, 10, 100, 1000), "inshop": (1, 10, 20, 30)}
    keys = {f"recall_at_{k}" for k in recall_at[dataset]} | {"mean_average_precision_at_r"}
    if dataset in ("sop", "inshop"):  # datasets with a class hierarchy
        keys |= {"mistake_severity", f"hierarchical_distance_at_{max(recall_at[dataset])}"}
    metrics = results["last"][space]
    assert set(metrics) == keys
    assert all(0 <= metrics[k] <= 1 for k in keys if k.startswith(("recall", "mean")))
    if dataset in ("sop", "inshop"):  # the largest K covers every reference, among which is the query's class
        assert metrics[f"recall_at_{max(recall_at[dataset])}"] == 1.0
    check_outputs(out, loss_has_parameters=loss != "hyperbolic_contrastive")
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["last"][space] == metrics


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    common = ["--loss", "proxy_anchor+hier", "--deterministic", "--epochs", "2", *FAST_DIGITS]
    full = main(common + ["--output", str(tmp_path / "full")])

    forward_and_backward = RecipeTrainer.forward_and_backward

    def crash_in_epoch_2(self):
        if self.epoch == 2 and self.iteration == 1:
            raise KeyboardInterrupt
        forward_and_backward(self)

    monkeypatch.setattr(RecipeTrainer, "forward_and_backward", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        main(common + ["--output", str(tmp_path / "resumed")])
    monkeypatch.setattr(RecipeTrainer, "forward_and_backward", forward_and_backward)
    resumed = main(common + ["--output", str(tmp_path / "resumed"), "--resume"])

    files = sorted(glob.glob(str(tmp_path / "full" / "saved_models" / "*_2.pth")))
    assert len(files) == 10  # trunk, embedder, metric_loss, run_state + optimizers and schedulers
    for path in files:
        a = torch.load(path, weights_only=False)
        b = torch.load(str(tmp_path / "resumed" / "saved_models" / os.path.basename(path)), weights_only=False)
        assert_same(a, b, os.path.basename(path))
    metrics = lambda r: [(row["epoch"], row.get("poincare")) for row in r["history"]]  # noqa: E731
    assert metrics(resumed) == metrics(full)
    assert resumed["best"]["epoch"] == full["best"]["epoch"]

    again = main(common + ["--output", str(tmp_path / "resumed"), "--resume"])  # finished: nothing to train
    assert metrics(again) == metrics(full)


def assert_same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_an_existing_run_is_not_overwritten(tmp_path):
    args = ["--loss", "contrastive", "--epochs", "1", "--output", str(tmp_path), *FAST_DIGITS]
    main(args)
    with pytest.raises(FileExistsError, match="--resume"):
        main(args)


def test_tree_reports_hierarchy_metrics(tmp_path):
    args = ["--dataset", "tree", "--tree-depth", "2", "--tree-samples-per-class", "12", "--loss", "proxy_anchor+hier"]
    results = main(args + ["--epochs", "1", "--hier-proxies", "32", "--hier-topk", "10", "--output", str(tmp_path)])
    assert results["dataset"]["train"] == results["dataset"]["test"] == {"images": 8 * 12, "classes": 8}
    metrics = results["last"]["poincare"]
    assert 1 <= metrics["mistake_severity"] <= 2  # depth 2: a wrong class is a sibling (1) or a cousin (2)
    assert 0 <= metrics["hierarchical_distance_at_8"] <= 2
    grouping = results["hierarchy"]
    for part in ("class_means", "lca_proxies"):
        assert 0 <= grouping[part]["sibling_precision"] <= 1
        assert -1 <= grouping[part]["tree_rank_correlation"] <= 1


def test_compare_prints_a_table_and_writes_the_comparison(tmp_path, capsys):
    table = main(
        [
            "--loss",
            "proxy_anchor,hyperbolic_contrastive",
            "--seeds",
            "0,1",
            "--epochs",
            "1",
            *FAST_DIGITS,
            "--output",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    assert "| loss | evaluated in | R@1 | R@2 | R@4 | R@8 | MAP@R |" in printed
    assert "| proxy_anchor | cosine |" in printed and "| hyperbolic_contrastive | poincare |" in printed
    assert set(table) == {"proxy_anchor", "hyperbolic_contrastive"}
    for name in table:
        runs = [json.load(open(tmp_path / name / f"seed{s}" / "results.json")) for s in (0, 1)]
        space = table[name]["space"]
        values = [r["last"][space]["mean_average_precision_at_r"] for r in runs]
        assert table[name]["metrics"]["mean_average_precision_at_r"][0] == pytest.approx(sum(values) / 2)
    for name in ("comparison.md", "comparison.json", "comparison.csv", "comparison.png", "comparison_maps.png"):
        assert os.path.getsize(tmp_path / name) > 0


@pytest.mark.parametrize("loss", ["two_space", "chest"])
def test_a_registered_loss_with_a_two_space_head(tmp_path, monkeypatch, loss):
    """The CHEST layout: a head with a Euclidean and a ball part side by side, each evaluated on its columns."""

    def two_space_contrastive(cfg, num_classes):
        d_e = cfg.embedding_size // 2
        distance = EuclideanHyperbolicDistance(d_e, c=cfg.curvature, space="both")
        spaces = {
            "hyperbolic": EvalSpace("poincare", columns=slice(d_e, None)),
            "euclidean": EvalSpace("cosine", columns=slice(0, d_e)),
        }
        head = lambda in_features: EuclideanHyperbolicHead(in_features, d_e, d_e, c=cfg.curvature)  # noqa: E731
        return LossSetup(SupConLoss(temperature=0.2, distance=distance), "sphere|ball", spaces, head=head)

    monkeypatch.setitem(registry.LOSSES, "two_space", two_space_contrastive)
    results = main(["--loss", loss, "--epochs", "1", *FAST_DIGITS, "--output", str(tmp_path)])
    hyperbolic, euclidean = results["last"]["hyperbolic"], results["last"]["euclidean"]
    assert (
        set(hyperbolic)
        == set(euclidean)
        == {"recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "mean_average_precision_at_r"}
    )
    assert hyperbolic != euclidean
    assert results["map"]["kind"] == "poincare" and results["map"]["points"].shape[1] == 2
    with open(tmp_path / "results.csv") as f:
        header = f.readline()
    assert "hyperbolic/recall_at_1" in header and "euclidean/recall_at_1" in header


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_throughput_benchmark_with_mixed_precision_on_cpu(tmp_path, amp_dtype):
    args = [
        "--dataset", "synthetic-images", "--synthetic-classes", "8", "--synthetic-images-per-class", "4",
        "--image-size", "32", "--batch-size", "8", "--m-per-class", "2", "--loss", "proxy_anchor",
        "--amp", "--amp-dtype", amp_dtype, "--grad-clip-value", "10", "--threads", "1",
        "--benchmark-throughput", "2", "--output", str(tmp_path),
    ]  # fmt: skip
    result = main(args)
    assert result["amp_dtype"] == f"torch.{amp_dtype}" and result["images_per_s"] > 0
    with open(tmp_path / "throughput.json") as f:
        assert json.load(f)["steps"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vit_small_mixed_precision_throughput_on_gpu(tmp_path):
    args = [
        "--dataset", "synthetic-images", "--backbone", "vit_small_patch16_224", "--no-pretrained", "--amp",
        "--batch-size", "64", "--m-per-class", "4", "--loss", "hyperbolic_contrastive",
        "--benchmark-throughput", "5", "--output", str(tmp_path),
    ]  # fmt: skip
    result = main(args)
    assert result["amp_dtype"] == "torch.float16" and result["images_per_s"] > 0


def test_presets_and_options():
    cfg = parse_args(["--preset", "hier_resnet50_cub"])
    assert (cfg.dataset, cfg.loss, cfg.backbone, cfg.embedding_size, cfg.lr) == (
        "cub",
        "proxy_anchor+hier",
        "resnet50",
        512,
        1e-4,
    )
    assert (cfg.batch_size, cfg.m_per_class, cfg.proxy_lr_scale, cfg.hier_lr_scale, cfg.warmup_epochs) == (
        180,
        2,
        1e4,
        50,
        1,
    )
    assert (cfg.lr_schedule, cfg.lr_step_epochs, cfg.lr_gamma, cfg.amp, cfg.freeze_bn) == ("step", 5, 0.5, True, True)
    cfg = parse_args(["--preset", "hier_dino_sop", "--lr", "1e-3"])
    assert (cfg.backbone, cfg.lr, cfg.head_lr_scale, cfg.epochs) == ("vit_small_patch16_224.dino", 1e-3, 100, 150)
    cfg = parse_args(["--preset", "hyp_vit_cub"])
    assert (cfg.loss, cfg.temperature, cfg.batch_size, cfg.m_per_class, cfg.samples_per_epoch) == (
        "hyperbolic_contrastive",
        0.2,
        900,
        9,
        "classes",
    )
    cfg = parse_args([])
    assert cfg.dataset == "digits" and cfg.losses == list(registry.LOSSES) and cfg.seeds == [0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "cub"], "--loss"),
        (["--loss", "nope"], "unknown loss"),
        (["--batch-size", "50", "--m-per-class", "3"], "multiple"),
    ],
)
def test_bad_options_are_explained(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_missing_dataset_message_reaches_the_user(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        main(
            [
                "--dataset",
                "cub",
                "--data-root",
                str(tmp_path),
                "--loss",
                "proxy_anchor",
                *TINY_IMAGES,
                "--output",
                str(tmp_path / "o"),
            ]
        )


def test_lr_factor_schedules():
    warm = lr_factor("step", 10, step_epochs=2, gamma=0.5, warmup_epochs=1, frozen_in_warmup=True)
    assert [warm(e) for e in range(5)] == [0.0, 1.0, 0.5, 0.5, 0.25]
    not_frozen = lr_factor("step", 10, step_epochs=2, gamma=0.5, warmup_epochs=1)
    assert not_frozen(0) == 1.0
    cosine = lr_factor("cosine", 4)
    assert [cosine(e) for e in range(5)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466, 0.0])
    with pytest.raises(ValueError, match="lr-step-epochs"):
        lr_factor("step", 10)
