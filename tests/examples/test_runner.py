import argparse
import csv
import glob
import json
import math
import os
import sqlite3

import pytest
import torch
from benchmark_folders import write_cars, write_cub, write_fashion_mnist, write_inshop, write_sop
from PIL import Image
from pml_hyperbolic_examples import losses as registry
from pml_hyperbolic_examples.losses import EvalSpace, LossSetup
from pml_hyperbolic_examples.train import main
from pml_hyperbolic_examples.trainer import RecipeTrainer, lr_factor
from pytorch_metric_learning.losses import SupConLoss
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pml_hyperbolic.distances import EuclideanHyperbolicDistance
from pml_hyperbolic.layers import EuclideanHyperbolicHead

TINY_IMAGES = [
    "--backbone", "tiny_cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--m-per-class", "2",
    "--num-workers", "0", "--eval-batch-size", "16", "--embedding-size", "16", "--threads", "1",
    "--hier-proxies", "32", "--hier-topk", "4",
]  # fmt: skip
FAST_DIGITS = ["--samples-per-epoch", "100", "--hier-proxies", "32", "--hier-topk", "10"]


def assert_figure(path):
    """A readable image of a plausible figure size with something drawn on it (not one flat colour)."""
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 200, (path, image.size)
        low, high = zip(*image.convert("RGB").getextrema())
        assert max(high) - min(low) > 100, path


def check_outputs(out, epoch=1, loss_has_parameters=True, best_epoch=None):
    """The files of a run; "best" checkpoints only when a validation split selected ``best_epoch``."""
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["last"]["epoch"] == epoch
    with open(os.path.join(out, "results.csv")) as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(1, epoch + 1))
    for name in ("recall.png", "embeddings.png"):
        assert_figure(os.path.join(out, name))
    with sqlite3.connect(os.path.join(out, "logs", "logs.db")) as db:  # record-keeper's tables
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] > 0
    assert glob.glob(os.path.join(out, "tensorboard", "events.out.tfevents.*"))
    saved = {os.path.basename(p) for p in glob.glob(os.path.join(out, "saved_models", "*.pth"))}
    keys = ["trunk", "embedder", "trunk_optimizer", "embedder_optimizer", "trunk_scheduler_by_epoch", "run_state"]
    keys += ["embedder_scheduler_by_epoch", "metric_loss"]
    if loss_has_parameters:
        keys += ["metric_loss_optimizer", "metric_loss_scheduler_by_epoch"]
    expected = {f"{key}_{epoch}.pth" for key in keys}
    if best_epoch is not None:
        expected |= {f"{key}_best{best_epoch}.pth" for key in keys}
    assert saved == expected


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
    assert results["result"] == {"selected_by": "last epoch", **results["last"]}
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["result"][space] == metrics


def interrupted_then_resumed(argv, output, monkeypatch):
    """``main(argv)`` into ``output``, interrupted at the first step of epoch 2, then resumed; returns the result."""
    forward_and_backward = RecipeTrainer.forward_and_backward

    def crash_in_epoch_2(self):
        if self.epoch == 2 and self.iteration == 1:
            raise KeyboardInterrupt
        forward_and_backward(self)

    monkeypatch.setattr(RecipeTrainer, "forward_and_backward", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        main(argv + ["--output", str(output)])
    monkeypatch.setattr(RecipeTrainer, "forward_and_backward", forward_and_backward)
    return main(argv + ["--output", str(output), "--resume"])


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    common = ["--loss", "proxy_anchor+hier", "--deterministic", "--epochs", "2", *FAST_DIGITS]
    full = main(common + ["--output", str(tmp_path / "full")])
    resumed = interrupted_then_resumed(common, tmp_path / "resumed", monkeypatch)

    files = sorted(glob.glob(str(tmp_path / "full" / "saved_models" / "*_2.pth")))
    assert len(files) == 10  # trunk, embedder, metric_loss, run_state + optimizers and schedulers
    for path in files:
        a = torch.load(path, weights_only=False)
        b = torch.load(str(tmp_path / "resumed" / "saved_models" / os.path.basename(path)), weights_only=False)
        assert_same(a, b, os.path.basename(path))
    metrics = lambda r: [(row["epoch"], row.get("poincare")) for row in r["history"]]  # noqa: E731
    assert metrics(resumed) == metrics(full)
    assert (resumed["result"]["epoch"], resumed["result"]["poincare"]) == (
        full["result"]["epoch"],
        full["result"]["poincare"],
    )

    again = main(common + ["--output", str(tmp_path / "resumed"), "--resume"])  # finished: nothing to train
    assert metrics(again) == metrics(full)


def test_image_runs_with_workers_resume_exactly(tmp_path, monkeypatch):
    """Seeded crops and persistent workers: a resumed run draws the crops an uninterrupted one draws."""
    folder, _ = write_cub(str(tmp_path / "data"), per_class=6, size=(80, 60))
    common = ["--dataset", "cub", "--data-root", folder, "--loss", "proxy_anchor", *TINY_IMAGES, "--epochs", "2"]
    common += ["--num-workers", "2", "--deterministic"]
    full = main(common + ["--output", str(tmp_path / "full")])
    resumed = interrupted_then_resumed(common, tmp_path / "resumed", monkeypatch)
    for path in glob.glob(str(tmp_path / "full" / "saved_models" / "*_2.pth")):
        a = torch.load(path, weights_only=False)
        b = torch.load(str(tmp_path / "resumed" / "saved_models" / os.path.basename(path)), weights_only=False)
        assert_same(a, b, os.path.basename(path))
    assert [r["cosine"] for r in resumed["history"]] == [r["cosine"] for r in full["history"]]


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
    for part in ("class_means", "proxies"):  # Proxy-Anchor's class proxies
        figures = grouping["dasgupta"][part]
        assert figures["best"] == pytest.approx(1.0) and figures["decoded"] >= 1.0 and figures["random"] > 1.2


def test_the_comparison_table_reports_the_dasgupta_figures():
    from pml_hyperbolic_examples.compare import comparison_table, table_markdown

    def fake_run(decoded):
        figures = {"decoded": decoded, "best": 0.85, "random": 3.37, "random_std": 0.14}
        reported = {"selected_by": "last epoch", "epoch": 2, "cosine": {"mean_average_precision_at_r": 0.4}}
        return {"eval_spaces": {"cosine": {}}, "result": reported, "wall_time_s": 1.0,
                "hierarchy": {"dasgupta": {"proxies": figures, "class_means": None}}}  # fmt: skip

    table = comparison_table({"softtriple": [fake_run(1.0), fake_run(2.0)]})
    assert table["softtriple"]["metrics"]["dasgupta/proxies"] == (1.5, 0.5)
    assert "dasgupta/class_means" not in table["softtriple"]["metrics"]  # undefined in a run: no column
    cfg = argparse.Namespace(seeds=[0, 1], dataset="tree", epochs=2)
    text = table_markdown(table, cfg)
    assert "| MAP@R | Dasgupta (proxies) | time (s) |" in text and "| 40.00 ± 0.00 | 1.500 ± 0.500 | 1 |" in text
    assert "proxies: best binary tree 0.850, random trees 3.370" in text


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
    markdown = (tmp_path / "comparison.md").read_text()
    assert "| proxy_anchor | cosine |" in markdown and "| hyperbolic_contrastive | poincare |" in markdown
    assert json.load(open(tmp_path / "comparison.json"))["table"].keys() == table.keys()
    with open(tmp_path / "comparison.csv") as f:
        assert {row["loss"] for row in csv.DictReader(f)} == set(table)
    for name in ("comparison.png", "comparison_maps.png"):
        assert_figure(tmp_path / name)


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
        "--image-size", "32", "--batch-size", "8", "--m-per-class", "2", "--loss", "proxy_anchor,softtriple",
        "--amp", "--amp-dtype", amp_dtype, "--grad-clip-value", "10", "--threads", "1", "--num-workers", "0",
        "--benchmark-throughput", "2", "--output", str(tmp_path),
    ]  # fmt: skip
    rows = main(args)
    assert [row["loss"] for row in rows] == ["proxy_anchor", "softtriple"]
    for row in rows:
        assert row["amp_dtype"] == f"torch.{amp_dtype}" and row["steps"] == 2
        for key in ("reference_loader", "loader", "bare", "end_to_end"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert row["ratio"] == pytest.approx(row["end_to_end"] / row["bare"])
    assert rows[0]["loader"] == rows[1]["loader"] and rows[0]["bare"] == rows[1]["bare"]  # measured once
    with open(tmp_path / "throughput.json") as f:
        assert json.load(f) == rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vit_small_mixed_precision_throughput_on_gpu(tmp_path):
    args = [
        "--dataset", "synthetic-images", "--backbone", "vit_small_patch16_224", "--no-pretrained", "--amp",
        "--batch-size", "64", "--m-per-class", "4", "--loss", "hyperbolic_contrastive",
        "--benchmark-throughput", "5", "--output", str(tmp_path),
    ]  # fmt: skip
    (row,) = main(args)
    assert row["amp_dtype"] == "torch.float16" and row["end_to_end"] > 0 and row["loader"] > row["reference_loader"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("loss", ["proxy_anchor+hier", "chest"])
def test_sub_losses_are_logged_each_logged_iteration(tmp_path, loss):
    out = str(tmp_path)
    main(["--loss", loss, "--epochs", "1", "--log-freq", "1", *FAST_DIGITS, "--output", out])
    rows = read_csv(os.path.join(out, "logs", "loss_histories.csv"))
    assert [int(r["~iteration~"]) for r in rows] == [0, 1]  # 100 samples / batch 50
    parts = [c for c in rows[0] if c.startswith("metric_loss/")]
    if loss == "chest":  # CHESTLoss sums its sub-losses
        weights = {c: 1.0 for c in parts}
    else:  # MultipleLosses: Proxy-Anchor's two sub-losses + 0.5 × HIER's
        assert sorted(parts) == [
            "metric_loss/hier/data_loss",
            "metric_loss/hier/proxy_loss",
            "metric_loss/proxy_anchor/neg_loss",
            "metric_loss/proxy_anchor/pos_loss",
        ]
        weights = {c: 0.5 if "/hier/" in c else 1.0 for c in parts}
    assert len(parts) >= 3
    for r in rows:
        total = sum(weights[c] * float(r[c]) for c in parts)
        assert total == pytest.approx(float(r["metric_loss"]), rel=1e-5)
    events = EventAccumulator(glob.glob(os.path.join(out, "tensorboard", "*"))[0]).Reload()
    assert {f"loss_histories/{c}" for c in parts} <= set(events.Tags()["scalars"])


def test_the_reported_epoch_is_selected_on_held_out_training_classes(tmp_path):
    out = str(tmp_path)
    args = [
        "--loss",
        "proxy_anchor",
        "--epochs",
        "3",
        "--val-fraction",
        "0.4",
        "--batch-size",
        "30",
        "--primary-metric",
    ]
    results = main(args + ["mean_average_precision_at_r", *FAST_DIGITS, "--output", out])
    info = results["dataset"]
    assert info["train"]["classes"] == 3 and info["val"]["classes"] == 2 and info["test"]["classes"] == 5
    history = results["history"]
    val = [row["val"]["cosine"]["mean_average_precision_at_r"] for row in history]
    best = history[val.index(max(val))]  # the first of equal values
    assert results["result"] == {"selected_by": "validation MAP@R (cosine)", **best}
    assert results["last"] == history[-1]
    check_outputs(out, epoch=3, best_epoch=best["epoch"])
    with open(os.path.join(out, "results.csv")) as f:
        header = f.readline()
    assert "val/cosine/recall_at_1" in header and "cosine/recall_at_1" in header


def test_fashion_mnist_end_to_end(tmp_path):
    folder, _ = write_fashion_mnist(str(tmp_path / "fm"), train_per_class=8, test_per_class=6)
    args = ["--dataset", "fashion-mnist", "--data-root", folder, "--loss", "hyperbolic_softtriple", "--epochs", "1"]
    results = main(args + ["--batch-size", "16", "--m-per-class", "4", "--output", str(tmp_path / "run")])
    assert results["dataset"]["train"] == {"images": 40, "classes": 5}
    assert results["dataset"]["test"] == {"images": 30, "classes": 5}
    metrics = results["last"]["poincare"]
    assert {"mistake_severity", "hierarchical_distance_at_8", "mean_average_precision_at_r"} <= set(metrics)
    assert 1 <= metrics["mistake_severity"] <= 2  # footwear siblings (1), or across groups (2)
    assert results["hierarchy"]["class_means"]["sibling_precision"] is not None


def test_lr_factor_schedules():
    warm = lr_factor("step", 10, step_epochs=2, gamma=0.5, warmup_epochs=1, frozen_in_warmup=True)
    assert [warm(e) for e in range(5)] == [0.0, 1.0, 0.5, 0.5, 0.25]
    not_frozen = lr_factor("step", 10, step_epochs=2, gamma=0.5, warmup_epochs=1)
    assert not_frozen(0) == 1.0
    cosine = lr_factor("cosine", 4)
    assert [cosine(e) for e in range(5)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466, 0.0])
    with pytest.raises(ValueError, match="lr-step-epochs"):
        lr_factor("step", 10)


def plain_single_linkage_dasgupta(distance, similarity):
    """Dasgupta's cost of the single-linkage tree of ``distance`` under ``similarity``, by the definitions: merge the
    two closest clusters (closest pair of members) until one is left; a pair's LCA is the first cluster holding both."""
    n = len(distance)
    clusters = [{i} for i in range(n)]
    lca_size = [[0] * n for _ in range(n)]
    while len(clusters) > 1:
        pairs = [(a, b) for a in range(len(clusters)) for b in range(a + 1, len(clusters))]
        a, b = min(pairs, key=lambda p: min(distance[i][j] for i in clusters[p[0]] for j in clusters[p[1]]))
        for i in clusters[a]:
            for j in clusters[b]:
                lca_size[i][j] = lca_size[j][i] = len(clusters[a]) + len(clusters[b])
        clusters[a] |= clusters.pop(b)
    return sum(similarity[i][j] * lca_size[i][j] for i in range(n) for j in range(i + 1, n))


def test_dasgupta_figures_against_the_definitions():
    """A tree of 2 groups × 3 classes (similarity 1/2 within a group): the decoded tree's cost over the true tree's."""
    from pml_hyperbolic_examples.evaluation import dasgupta_figures

    from pml_hyperbolic.utils.hierarchy import ClassTree

    tree = ClassTree({10 + i: (i // 3,) for i in range(6)})
    w = [[0.5 if i // 3 == j // 3 else 0.0 for j in range(6)] for i in range(6)]
    true_cost = 2 * 3 * 0.5 * 3  # per group: 3 pairs of similarity 1/2 meeting under the group's 3 leaves
    g = torch.Generator().manual_seed(0)
    for trial in range(4):
        points = torch.randn(6, 5, generator=g, dtype=torch.float64) + 2 * trial * torch.eye(6, 5, dtype=torch.float64)
        u = torch.nn.functional.normalize(points, dim=1)
        cosine = (1 - u @ u.T).tolist()
        expected = plain_single_linkage_dasgupta(cosine, w) / true_cost
        figures = dasgupta_figures(points, torch.arange(10, 16), tree)
        assert figures["decoded"] == pytest.approx(expected, rel=1e-12)
        assert figures["best"] == pytest.approx(2 * (0.5 * 2 + 2 * 0.5 * 3) / true_cost)  # a binary refinement
        matrix = torch.tensor(cosine).clamp_min(0).fill_diagonal_(0)
        from_matrix = dasgupta_figures(matrix, [10, 11, 12, 13, 14, 15], tree, precomputed=True)
        assert from_matrix["decoded"] == figures["decoded"]
    assert dasgupta_figures(torch.randn(2, 5), [10, 11], tree) is None  # fewer than 3 classes: undefined
    assert dasgupta_figures(torch.randn(3, 5), [10, 11, 99], tree) is None  # a class outside the tree


def test_tree_reports_the_dasgupta_figure_of_the_learned_proxies(tmp_path):
    """pml's SoftTriple on the tree: the runner's figure equals the definitions applied to the saved centers (the
    direction of each class's mean center) with the tree's similarities (1/2 for sibling classes, 0 otherwise)."""
    out = str(tmp_path)
    args = ["--dataset", "tree", "--tree-depth", "2", "--tree-samples-per-class", "12", "--loss", "softtriple"]
    results = main(args + ["--epochs", "1", "--output", out])
    figures = results["hierarchy"]["dasgupta"]
    fc = torch.load(os.path.join(out, "saved_models", "metric_loss_1.pth"))["fc"].double()  # (D, C·K), K = 10
    centers = torch.nn.functional.normalize(fc, dim=0).t().reshape(8, 10, -1).sum(1)
    u = torch.nn.functional.normalize(centers, dim=1)
    classes = [0, 1, 4, 5, 8, 9, 12, 13]  # the training classes: the first 2 children of each of the 4 parents
    w = [[0.5 if a // 4 == b // 4 else 0.0 for b in classes] for a in classes]
    expected = plain_single_linkage_dasgupta((1 - u @ u.T).tolist(), w) / (4 * 0.5 * 2)
    assert figures["proxies"]["decoded"] == pytest.approx(expected, rel=1e-9)
    assert figures["proxies"]["best"] == pytest.approx(1.0)  # 2 training children per parent: the tree is binary
    assert figures["proxies"]["random"] > 1.2
    assert figures["class_means"]["best"] <= figures["class_means"]["decoded"] <= 8


def test_chest_regularizer_options_reach_the_loss():
    from pml_hyperbolic_examples.config import CHEST_DEFAULT_REGULARIZER, parse_args

    from pml_hyperbolic.losses.chest_loss import HIER_DEFAULTS, REGULARIZER_WEIGHTS

    setup = registry.chest(parse_args(["--loss", "chest", "--chest-regularizer", "hier"]), 5)
    assert setup.loss.regularizer_name == "hier" and setup.loss.regularizer_weight == REGULARIZER_WEIGHTS["hier"]
    assert setup.loss.euclidean_dim == 8  # D_E = D / 4 of the default 32
    assert setup.lca_proxies(setup.loss).shape == (HIER_DEFAULTS["num_proxies"], 24)  # CHEST's HIER, in D_H = 24
    setup = registry.chest(parse_args(["--loss", "chest", "--chest-regularizer-weight", "0.25"]), 5)
    assert setup.loss.regularizer_name == CHEST_DEFAULT_REGULARIZER and setup.loss.regularizer_weight == 0.25
    assert (setup.lca_proxies is None) == (CHEST_DEFAULT_REGULARIZER != "hier")
    setup = registry.chest(parse_args(["--loss", "chest", "--chest-regularizer", "hyphc"]), 5)
    assert setup.loss.regularizer_name == "hyphc" and setup.lca_proxies is None
    setup = registry.chest(parse_args(["--loss", "chest", "--chest-regularizer", "none"]), 5)
    assert setup.loss.regularizer is None
    directions = setup.class_proxies(setup.loss)
    proxies = setup.loss.hyperbolic_loss.get_proxies().detach().double().reshape(5, 10, 24).sum(1)
    assert torch.allclose(directions.double(), torch.nn.functional.normalize(proxies, dim=1), atol=1e-6)
