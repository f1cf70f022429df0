"""Train and evaluate one loss with pml's trainer, tester and hooks (:func:`run`), compare several
(:func:`compare`), or measure training throughput (:func:`benchmark_throughput`)."""

import copy
import csv
import dataclasses
import json
import os
import random
import statistics
import time

import numpy as np
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from pytorch_metric_learning.utils import logging_presets
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyperbolic import poincare
from pml_hyperbolic.utils import hierarchy
from pml_hyperbolic.utils.accuracy_calculator import RetrievalAccuracyCalculator
from pml_hyperbolic.utils.distributed import DistributedLossWrapper
from pml_hyperbolic.utils.inference import PoincareKNN, SliceKNN
from pml_hyperbolic.utils.optim import param_groups

from . import distributed, plots
from .data import input_shape, load_data
from .losses import LOSSES
from .models import EmbeddingHead, build_trunk
from .trainer import CheckpointHooks, RecipeTrainer, RunState, lr_factor

MAX_CLASSES_FOR_GROUPING = 2000  # class-grouping metrics need (classes × classes) matrices


@dataclasses.dataclass
class Run:
    """Everything :func:`run` builds (also used by the tests and the throughput benchmark)."""

    cfg: object
    data: object
    setup: object
    trainer: RecipeTrainer
    testers: dict
    hooks: CheckpointHooks
    record_keeper: object
    model_folder: str
    device: torch.device
    history: "History"


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} was requested but CUDA is not available; use --device cpu.")
    return device


def amp_dtype(cfg, device):
    if not cfg.amp:
        return None
    if cfg.amp_dtype is not None:
        return getattr(torch, cfg.amp_dtype)
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def default_output(cfg):
    return os.path.join("runs", f"{cfg.dataset}_{cfg.loss}_{cfg.backbone}".replace("/", "-"))


def build_run(cfg):
    """Build the data, model, loss, optimizers, schedulers, tester and trainer of one run (``cfg.loss`` is one
    registry name). Nothing is trained yet; with ``cfg.resume`` the last checkpoint is not loaded yet either."""
    device = resolve_device(cfg.device)
    rank, world_size = distributed.world()
    if world_size > 1:
        device = distributed.init(device)
        if cfg.patience:
            raise ValueError("--patience is not supported under torchrun (only rank 0 evaluates).")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)
    trunk = build_trunk(cfg.backbone, input_shape(cfg), cfg.pretrained, cfg.pretrained_path, cfg.global_pool)
    if cfg.freeze_patch_embed:
        if not hasattr(trunk, "patch_embed"):
            raise ValueError(f"--freeze-patch-embed: backbone {cfg.backbone!r} has no patch_embed.")
        trunk.patch_embed.requires_grad_(False)
    data = load_data(cfg, getattr(trunk, "pretrained_cfg", None))
    train_labels = np.asarray(data.train.labels)
    num_classes = len(np.unique(train_labels))
    setup = LOSSES[cfg.loss](cfg, num_classes)
    if setup.head is not None:
        embedder = setup.head(trunk.num_features)
    else:
        embedder = EmbeddingHead(
            trunk.num_features,
            cfg.embedding_size,
            setup.space,
            cfg.curvature,
            cfg.clip_r,
            setup.riemannian,
            setup.head_layer_norm,
        )
    models = {"trunk": trunk.to(device), "embedder": embedder.to(device)}
    loss = setup.loss.to(device)
    train_models, train_loss = models, loss
    if world_size > 1:
        train_models = {name: distributed.wrap_model(m, device) for name, m in models.items()}
        train_loss = DistributedLossWrapper(loss)

    def adamw(groups):
        return torch.optim.AdamW(groups, eps=cfg.adam_eps)

    wd = cfg.weight_decay
    optimizers = {
        "trunk_optimizer": adamw(param_groups(trunk, lr=cfg.lr, weight_decay=wd)),
        "embedder_optimizer": adamw(param_groups(embedder, lr=cfg.lr * cfg.head_lr_scale, weight_decay=wd)),
    }
    if setup.lr_scales:
        modules, scales = zip(*setup.lr_scales)
        groups = param_groups(None, *modules, lr=cfg.lr, proxy_lr_mult=list(scales), weight_decay=wd)
        optimizers["metric_loss_optimizer"] = adamw(groups)
    schedulers = {}
    for key, optimizer in optimizers.items():
        name = key[: -len("_optimizer")]
        factor = lr_factor(
            cfg.lr_schedule, cfg.epochs, cfg.lr_step_epochs, cfg.lr_gamma, cfg.warmup_epochs, name == "trunk"
        )
        schedulers[f"{name}_scheduler_by_epoch"] = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    clippers = {}
    parameters = {"trunk": trunk.parameters, "embedder": embedder.parameters, "metric_loss": loss.parameters}
    for name, params in parameters.items():
        if not any(p.requires_grad for p in params()):
            continue
        if cfg.grad_clip_norm:
            clippers[f"{name}_grad_clipper"] = _clipper(torch.nn.utils.clip_grad_norm_, params, cfg.grad_clip_norm)
        elif cfg.grad_clip_value:
            clippers[f"{name}_grad_clipper"] = _clipper(torch.nn.utils.clip_grad_value_, params, cfg.grad_clip_value)

    output = cfg.output or default_output(cfg)
    model_folder = os.path.join(output, "saved_models")
    if rank > 0:  # logs of the training-only ranks; checkpoints are rank 0's
        output = os.path.join(output, f"rank{rank}")
    if rank == 0 and not cfg.resume and os.path.isdir(model_folder) and os.listdir(model_folder):
        raise FileExistsError(
            f"{output} already holds a run: pass --resume to continue it, or choose another --output."
        )
    record_keeper, _, _ = logging_presets.get_record_keeper(
        os.path.join(output, "logs"), os.path.join(output, "tensorboard")
    )
    hooks = CheckpointHooks(
        record_keeper, primary_metric=cfg.primary_metric, validation_split_name=data.query_split, log_freq=cfg.log_freq
    )
    history = History(output, cfg, data, setup)
    testers = {}
    for i, (space_name, space) in enumerate(setup.eval_spaces.items()):
        space_hooks = (
            hooks if i == 0 else logging_presets.HookContainer(record_keeper, record_group_name_prefix=space_name)
        )
        testers[space_name] = make_tester(cfg, data, space, space_hooks, history if i == 0 else None, device)
    primary_tester = next(iter(testers.values()))
    if cfg.primary_metric not in primary_tester.accuracy_calculator.get_curr_metrics():
        raise ValueError(f"--primary-metric must be one of {primary_tester.accuracy_calculator.get_curr_metrics()}.")

    samples = len(train_labels) if cfg.samples_per_epoch is None else cfg.samples_per_epoch
    if samples == "classes":
        samples = num_classes * cfg.m_per_class
    check_sampler(cfg, num_classes, samples)
    sampler = MPerClassSampler(
        train_labels, m=cfg.m_per_class, batch_size=cfg.batch_size, length_before_new_iter=samples
    )
    if world_size > 1:
        sampler = distributed.RankShardSampler(sampler, cfg.batch_size, rank, world_size)
    trainer = RecipeTrainer(
        models=train_models,
        optimizers=optimizers,
        batch_size=cfg.batch_size // world_size,
        loss_funcs={"metric_loss": train_loss},
        mining_funcs={"tuple_miner": setup.miner} if setup.miner is not None else {},
        dataset=data.train,
        sampler=sampler,
        dataloader_num_workers=cfg.num_workers,
        lr_schedulers=schedulers,
        gradient_clippers=clippers,
        freeze_trunk_batchnorm=cfg.freeze_bn,
        data_device=device,
        set_min_label_to_zero=True,
        dataset_labels=train_labels,
        end_of_iteration_hook=history.wrap_iteration_hook(hooks.end_of_iteration_hook),
        amp_dtype=amp_dtype(cfg, device),
    )
    trainer.run_state = {"run_state": RunState(trainer)}

    def after_epoch(trainer):
        evaluated = trainer.epoch % cfg.eval_interval == 0
        accuracies = {}
        if evaluated:
            for i, (name, tester) in enumerate(testers.items()):
                if i > 0:
                    tester.test(data.eval_sets, trainer.epoch, models["trunk"], models["embedder"], data.splits_to_eval)
                accuracies[name] = tester.all_accuracies[data.query_split]
            record_keeper.save_records()
        history.end_epoch(trainer.epoch, accuracies)

    if rank > 0:
        trainer.end_of_epoch_hook = lambda trainer: True  # only rank 0 evaluates and saves
        return Run(cfg, data, setup, trainer, testers, hooks, record_keeper, model_folder, device, history)
    trainer.end_of_epoch_hook = hooks.end_of_epoch_hook(
        primary_tester,
        data.eval_sets,
        model_folder,
        test_interval=cfg.eval_interval,
        patience=cfg.patience,
        splits_to_eval=data.splits_to_eval,
        after_epoch=after_epoch,
    )
    return Run(cfg, data, setup, trainer, testers, hooks, record_keeper, model_folder, device, history)


def _clipper(fn, params, value):
    return lambda: fn(params(), value)


def check_sampler(cfg, num_classes, samples):
    """Clear errors for batch settings that pml's MPerClassSampler would reject with a bare assertion."""
    if cfg.m_per_class * num_classes < cfg.batch_size:
        raise ValueError(
            f"--batch-size {cfg.batch_size} needs at least {cfg.batch_size // cfg.m_per_class} training classes with "
            f"--m-per-class {cfg.m_per_class}, but the training set has {num_classes}."
        )
    if samples < cfg.batch_size:
        raise ValueError(f"An epoch of {samples} samples is shorter than one batch ({cfg.batch_size}).")


def make_tester(cfg, data, space, hooks, history, device):
    """pml's ``GlobalEmbeddingSpaceTester`` (no L2 normalisation: ball points stay ball points) with Recall@K,
    MAP@R and, for datasets with a class tree, the hierarchy metrics."""
    knn = PoincareKNN(c=cfg.curvature) if space.knn == "poincare" else CustomKNN(CosineSimilarity(), batch_size=4096)
    if space.columns is not None:
        knn = SliceKNN(knn, space.columns.start or 0, space.columns.stop)
    include = [f"recall_at_{k}" for k in data.recall_at] + ["mean_average_precision_at_r"]
    if data.class_tree is not None:
        include += ["mistake_severity", f"hierarchical_distance_at_{max(data.recall_at)}"]
    calculator = RetrievalAccuracyCalculator(
        recall_at=data.recall_at, class_tree=data.class_tree, include=include, knn_func=knn, device=device
    )
    end_of_testing = (
        hooks.end_of_testing_hook if history is None else history.wrap_testing_hook(hooks.end_of_testing_hook)
    )
    return GlobalEmbeddingSpaceTester(
        normalize_embeddings=False,
        batch_size=cfg.eval_batch_size,
        dataloader_num_workers=cfg.num_workers,
        data_device=device,
        accuracy_calculator=calculator,
        end_of_testing_hook=end_of_testing,
    )


class History:
    """Per-epoch metrics of a run, written to ``results.json`` and ``results.csv`` after every epoch; also keeps the
    last evaluated query embeddings for the plots."""

    def __init__(self, output, cfg, data, setup):
        self.output, self.cfg, self.data, self.setup = output, cfg, data, setup
        self.epochs = []
        self.embeddings = None  # (epoch, embeddings, labels) of the query split at the last evaluation
        self._losses, self._t0 = [], time.perf_counter()

    def start(self):
        """Start timing the first epoch."""
        self._losses, self._t0 = [], time.perf_counter()

    def wrap_iteration_hook(self, hook):
        def wrapped(trainer):
            hook(trainer)
            loss = trainer.losses["total_loss"]
            self._losses.append(loss.item() if torch.is_tensor(loss) else float(loss))

        return wrapped

    def wrap_testing_hook(self, hook):
        def wrapped(tester):
            hook(tester)
            emb, labels = tester.embeddings_and_labels[self.data.query_split]
            self.embeddings = (tester.all_accuracies[self.data.query_split]["epoch"], emb.cpu(), labels[:, 0].cpu())

        return wrapped

    def end_epoch(self, epoch, accuracies):
        row = {"epoch": epoch, "loss": statistics.fmean(self._losses) if self._losses else None}
        row["time_s"] = time.perf_counter() - self._t0
        for space, acc in accuracies.items():
            metrics = {k.removesuffix("_level0"): float(v) for k, v in acc.items() if k != "epoch"}
            row[space] = {k: metrics[k] for k in sorted(metrics, key=metric_sort_key)}
        self.epochs = [r for r in self.epochs if r["epoch"] < epoch] + [row]
        self._losses, self._t0 = [], time.perf_counter()
        self.write()
        loss = "" if row["loss"] is None else f"loss {row['loss']:.4f}  "
        print(f"[{self.cfg.loss}] epoch {epoch}/{self.cfg.epochs}  {loss}{format_metrics(row)}", flush=True)

    def load(self):
        """Read the history of an interrupted run (to continue it)."""
        path = os.path.join(self.output, "results.json")
        if os.path.exists(path):
            with open(path) as f:
                self.epochs = json.load(f).get("history", [])

    def evaluated(self):
        return [r for r in self.epochs if self.primary in r]

    @property
    def primary(self):
        return next(iter(self.setup.eval_spaces))

    def summary(self, extra=None):
        evaluated = self.evaluated()
        best = max(evaluated, key=lambda r: r[self.primary][self.cfg.primary_metric], default=None)
        return {
            "config": dict(vars(self.cfg)),
            "dataset": self.dataset_info(),
            "eval_spaces": {
                k: dataclasses.asdict(v) | {"columns": str(v.columns)} for k, v in self.setup.eval_spaces.items()
            },
            "history": self.epochs,
            "last": evaluated[-1] if evaluated else None,
            "best": best,
            **(extra or {}),
        }

    def dataset_info(self):
        def info(ds):
            labels = np.asarray(ds.labels)
            return {"images": int(len(labels)), "classes": int(len(np.unique(labels)))}

        return {
            "name": self.cfg.dataset,
            "train": info(self.data.train),
            **{k: info(v) for k, v in self.data.eval_sets.items()},
        }

    def write(self, extra=None):
        os.makedirs(self.output, exist_ok=True)
        with open(os.path.join(self.output, "results.json"), "w") as f:
            json.dump(self.summary(extra), f, indent=2, default=str)
        rows = [_flatten(r) for r in self.epochs]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(os.path.join(self.output, "results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def _flatten(row):
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update({f"{k}/{m}": x for m, x in v.items()})
        else:
            out[k] = v
    return out


METRIC_LABELS = {
    "mean_average_precision_at_r": "MAP@R",
    "mistake_severity": "severity",
    "class_means/sibling_precision": "siblings (means, %)",
    "class_means/tree_rank_correlation": "tree corr. (means)",
    "lca_proxies/sibling_precision": "siblings (LCA proxies, %)",
    "lca_proxies/tree_rank_correlation": "tree corr. (LCA proxies)",
}


def metric_sort_key(name):
    """Recall@K by K, then MAP@R, then the hierarchy metrics, then anything else."""
    if name.startswith("recall_at_"):
        return (0, int(name[len("recall_at_") :]), name)
    order = ["mean_average_precision_at_r", "mistake_severity"]
    return (1, order.index(name) if name in order else len(order), name)


def metric_label(name):
    if name.startswith("recall_at_"):
        return "R@" + name[len("recall_at_") :]
    if name.startswith("hierarchical_distance_at_"):
        return "hdist@" + name[len("hierarchical_distance_at_") :]
    return METRIC_LABELS.get(name, name)


def format_metrics(row):
    parts = []
    for space, metrics in row.items():
        if isinstance(metrics, dict):
            vals = " ".join(f"{metric_label(k)} {_pct(k, v)}" for k, v in metrics.items())
            parts.append(f"[{space}] {vals}")
    return "  ".join(parts) + f"  ({row['time_s']:.1f} s)"


def _pct(name, value):
    """Recall and MAP in percent; hierarchy heights as they are."""
    if name.startswith(("recall_at_", "mean_average_precision", "precision_at")):
        return f"{100 * value:.2f}"
    return f"{value:.3f}"


def hierarchy_metrics(run):
    """Class-grouping metrics on the last evaluated query embeddings: do the classes closest to each class (by
    distance between class means, and through the LCA proxies of HIER) share its parent in the class tree?"""
    tree, (epoch, emb, labels) = run.data.class_tree, run.history.embeddings
    classes = torch.unique(labels)
    if len(classes) > MAX_CLASSES_FOR_GROUPING:
        return {"skipped": f"{len(classes)} classes (> {MAX_CLASSES_FOR_GROUPING})"}
    emb, c = primary_embeddings(run, emb)
    classes, means = hierarchy.class_means(emb.double(), labels.long(), c)
    if c is not None:
        dis = poincare.cdist(means, means, c)
    else:
        means = torch.nn.functional.normalize(means, dim=1)
        dis = 1 - means @ means.T
    out = {"epoch": epoch, "class_means": _grouping(dis, classes, tree)}
    if run.setup.lca_proxies is not None:
        with torch.no_grad():
            proxies = run.setup.lca_proxies(run.setup.loss).detach().cpu().double()
        out["lca_proxies"] = _grouping(hierarchy.lca_proxy_distances(means, proxies, c), classes, tree)
    return out


def _grouping(dissimilarity, classes, tree):
    """Sibling precision and tree rank correlation; a metric the test classes leave undefined (no siblings, or all
    pairs equally far in the tree) is reported as None."""
    out = {}
    for name, fn in (
        ("sibling_precision", hierarchy.sibling_precision),
        ("tree_rank_correlation", hierarchy.tree_rank_correlation),
    ):
        try:
            out[name] = fn(dissimilarity, classes, tree)
        except ValueError:
            out[name] = None
    return out


def run(cfg):
    """Train ``cfg.loss`` (one registry name) and evaluate it every ``cfg.eval_interval`` epochs; write
    ``results.json``, ``results.csv``, the plots, record-keeper logs, tensorboard events and checkpoints to the
    output folder. Returns the results dict (as in ``results.json``, plus ``"map"``: the 2-D embedding map)."""
    t0 = time.perf_counter()
    r = build_run(cfg)
    start_epoch = 1
    if cfg.resume:
        r.history.load()
        ddp_models = r.trainer.models  # checkpoints hold the plain modules' state dicts
        r.trainer.models = {name: getattr(m, "module", m) for name, m in ddp_models.items()}
        start_epoch = r.hooks.load_latest_saved_models(r.trainer, r.model_folder, r.device)
        r.trainer.models = ddp_models
        for optimizer in r.trainer.optimizers.values():
            cpu_steps(optimizer)
        print(f"[{cfg.loss}] resuming at epoch {start_epoch} from {r.model_folder}")
    if start_epoch <= cfg.epochs:
        r.history.start()
        r.trainer.train(start_epoch, cfg.epochs)
    if distributed.world()[0] > 0:
        return {}
    return finish(r, time.perf_counter() - t0)


def cpu_steps(optimizer):
    """pml loads checkpoints with ``map_location=device``, which puts the optimizers' ``step`` counters on the GPU;
    torch keeps them on the CPU unless the optimizer is capturable or fused. Put them back (an exact resume saves the
    same state as an uninterrupted run, and no step pays a device sync to read its counter)."""
    if optimizer.defaults.get("capturable") or optimizer.defaults.get("fused"):
        return
    for state in optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].cpu()


def finish(r, wall_time):
    """Hierarchy metrics, plots and the final ``results.json`` of a trained run."""
    if r.history.embeddings is None:  # nothing evaluated in this process (e.g. resuming a finished run)
        tester = next(iter(r.testers.values()))
        trunk, embedder = r.trainer.models["trunk"], r.trainer.models["embedder"]
        emb, labels = tester.get_all_embeddings(r.data.eval_sets[r.data.query_split], trunk, embedder)
        epoch = r.history.epochs[-1]["epoch"] if r.history.epochs else 0
        r.history.embeddings = (epoch, emb.cpu(), labels[:, 0].cpu())
    extra = {"wall_time_s": wall_time}
    if r.data.class_tree is not None:
        extra["hierarchy"] = hierarchy_metrics(r)
    output = r.history.output
    plots.plot_history(r.history.epochs, os.path.join(output, "recall.png"), title=f"{r.cfg.dataset}: {r.cfg.loss}")
    emb, c = primary_embeddings(r, r.history.embeddings[1])
    embedding_map = plots.embedding_map(
        emb, r.history.embeddings[2], c, proxies=_proxies_to_draw(r.setup) if c is not None else None
    )
    plots.save_map(embedding_map, os.path.join(output, "embeddings.png"), title=f"{r.cfg.dataset}: {r.cfg.loss}")
    r.history.write(extra)
    r.record_keeper.save_records()
    return r.history.summary(extra) | {"map": embedding_map}


def primary_embeddings(run, embeddings):
    """The part of ``embeddings`` that the first evaluation space ranks, and its curvature (None: not a ball)."""
    space = next(iter(run.setup.eval_spaces.values()))
    if space.columns is not None:
        embeddings = embeddings[:, space.columns]
    return embeddings, (run.cfg.curvature if space.knn == "poincare" else None)


def _proxies_to_draw(setup):
    with torch.no_grad():
        out = {}
        if setup.lca_proxies is not None:
            out["hierarchical proxies"] = setup.lca_proxies(setup.loss).detach().cpu()
        if setup.proxies is not None:
            out.update({k: v.detach().cpu() for k, v in setup.proxies(setup.loss).items()})
    return out


def benchmark_throughput(cfg, steps, warmup=3):
    """Training images per second of ``cfg`` over ``steps`` iterations (after ``warmup`` ones); writes
    ``throughput.json`` to the output folder."""
    r = build_run(cfg)
    trainer = r.trainer
    trainer.initialize_dataloader()
    trainer.set_to_train()
    trainer.epoch, trainer.iteration = 1, 0

    def sync():
        if r.device.type == "cuda":
            torch.cuda.synchronize(r.device)

    for _ in range(warmup):
        trainer.forward_and_backward()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.forward_and_backward()
    sync()
    seconds = time.perf_counter() - t0
    result = {
        "backbone": cfg.backbone,
        "device": torch.cuda.get_device_name(r.device) if r.device.type == "cuda" else "cpu",
        "amp_dtype": str(trainer.amp_dtype),
        "batch_size": cfg.batch_size,
        "image_size": cfg.image_size,
        "loss": cfg.loss,
        "steps": steps,
        "seconds": seconds,
        "images_per_s": steps * cfg.batch_size / seconds,
    }
    os.makedirs(r.history.output, exist_ok=True)
    with open(os.path.join(r.history.output, "throughput.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"{cfg.backbone} ({result['device']}, amp {result['amp_dtype']}, batch {cfg.batch_size}, "
        f"{cfg.image_size}px, {cfg.loss}): {result['images_per_s']:.1f} images/s over {steps} steps"
    )
    return result


def compare(cfg):
    """Run every loss of ``cfg.losses`` for every seed of ``cfg.seeds`` (each in ``<output>/<loss>[/seed<s>]``),
    print a table of the last epoch's metrics (mean ± std over seeds) and write ``comparison.{json,csv,md}``,
    ``comparison.png`` (metrics per epoch) and ``comparison_maps.png`` (the embedding maps)."""
    output = cfg.output or os.path.join("runs", f"{cfg.dataset}_compare")
    results = {}
    for name in cfg.losses:
        for seed in cfg.seeds:
            sub = copy.copy(cfg)
            sub.loss, sub.seed = name, seed
            sub.output = os.path.join(output, name, f"seed{seed}") if len(cfg.seeds) > 1 else os.path.join(output, name)
            results.setdefault(name, []).append(run(sub))
    table = comparison_table(results)
    os.makedirs(output, exist_ok=True)
    markdown = table_markdown(table, cfg)
    print("\n" + markdown)
    with open(os.path.join(output, "comparison.md"), "w") as f:
        f.write(markdown + "\n")
    with open(os.path.join(output, "comparison.json"), "w") as f:
        json.dump({"config": vars(cfg), "table": table}, f, indent=2, default=str)
    with open(os.path.join(output, "comparison.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        columns = list(next(iter(table.values()))["metrics"])
        writer.writerow(["loss", "space", "epoch", *[f"{c}_mean" for c in columns], *[f"{c}_std" for c in columns]])
        for name, row in table.items():
            means = [row["metrics"][c][0] for c in columns]
            stds = [row["metrics"][c][1] for c in columns]
            writer.writerow([name, row["space"], row["epoch"], *means, *stds])
    plots.plot_comparison({k: v[0]["history"] for k, v in results.items()}, os.path.join(output, "comparison.png"))
    plots.save_map_grid({k: v[0]["map"] for k, v in results.items()}, os.path.join(output, "comparison_maps.png"))
    print(f"\nResults, plots, logs and checkpoints: {output}/ (comparison.md, comparison.png, comparison_maps.png)")
    return table


def comparison_table(results):
    """{loss: {"space", "epoch", "metrics": {metric: (mean, std)}, "time_s"}} from the runs' last evaluations."""
    table = {}
    for name, runs in results.items():
        space = next(iter(runs[0]["eval_spaces"]))
        lasts = [r["last"] for r in runs]
        metrics = {m: [last[space][m] for last in lasts] for m in lasts[0][space]}
        for part in ("class_means", "lca_proxies"):
            for metric in ("sibling_precision", "tree_rank_correlation"):
                values = [r.get("hierarchy", {}).get(part, {}).get(metric) for r in runs]
                if all(v is not None for v in values):
                    metrics[f"{part}/{metric}"] = values
        table[name] = {
            "space": space,
            "epoch": lasts[0]["epoch"],
            "metrics": {m: (statistics.fmean(v), statistics.pstdev(v)) for m, v in metrics.items()},
            "time_s": statistics.fmean(r["wall_time_s"] for r in runs),
        }
    return table


def table_markdown(table, cfg):
    columns = list(dict.fromkeys(m for row in table.values() for m in row["metrics"]))
    seeds = f"{len(cfg.seeds)} seeds, mean ± std" if len(cfg.seeds) > 1 else f"seed {cfg.seeds[0]}"
    lines = [
        f"{cfg.dataset}: test classes unseen in training; epoch {cfg.epochs} ({seeds}); Recall@K and MAP@R in %"
        + (
            "; severity and hdist: tree levels (lower is better)"
            if any("mistake_severity" in c for c in columns)
            else ""
        ),
        "",
        "| loss | evaluated in | " + " | ".join(metric_label(c) for c in columns) + " | time (s) |",
        "|---|---|" + "---|" * len(columns) + "---|",
    ]
    for name, row in table.items():
        cells = []
        for c in columns:
            if c not in row["metrics"]:
                cells.append("")
                continue
            mean, std = row["metrics"][c]
            scale = (
                100 if c.startswith(("recall_at_", "mean_average_precision")) or c.endswith("sibling_precision") else 1
            )
            digits = 2 if scale == 100 else 3
            cells.append(f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if len(cfg.seeds) > 1 else ""))
        lines.append(f"| {name} | {row['space']} | " + " | ".join(cells) + f" | {row['time_s']:.0f} |")
    return "\n".join(lines)
