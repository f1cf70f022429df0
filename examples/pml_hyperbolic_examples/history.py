"""A run's per-epoch record (``results.json`` / ``results.csv``), the epoch it reports, and how metrics are named and
printed."""

import csv
import dataclasses
import json
import os
import time

import numpy as np
import torch

METRIC_LABELS = {
    "mean_average_precision_at_r": "MAP@R",
    "mistake_severity": "severity",
    "class_means/sibling_precision": "siblings (means, %)",
    "class_means/tree_rank_correlation": "tree corr. (means)",
    "lca_proxies/sibling_precision": "siblings (LCA proxies, %)",
    "lca_proxies/tree_rank_correlation": "tree corr. (LCA proxies)",
    "dasgupta/proxies": "Dasgupta (proxies)",
    "dasgupta/class_means": "Dasgupta (means)",
}


class History:
    """Per-epoch metrics of a run, written to ``results.json`` and ``results.csv`` after every epoch; also keeps the
    last evaluated test embeddings for the plots.

    A row holds the epoch, the mean training loss, the time, the test metrics of every evaluation space
    (``row[space]``) and, with a validation split, its metrics (``row["val"][space]``). The reported epoch
    (:meth:`result`) is the last evaluated one, or, with a validation split, the one with the best validation
    ``cfg.primary_metric`` in the first space (pml's "A Metric Learning Reality Check": never select on the test set).
    """

    def __init__(self, output, cfg, data, setup):
        self.output, self.cfg, self.data, self.setup = output, cfg, data, setup
        self.epochs = []
        self.embeddings = None  # (epoch, embeddings, labels) of the test query split at the last evaluation
        self.start()

    def start(self):
        """Start timing (and averaging the loss of) an epoch."""
        self._loss_sum, self._steps, self._t0 = 0.0, 0, time.perf_counter()

    def wrap_iteration_hook(self, hook):
        def wrapped(trainer):
            hook(trainer)
            loss = trainer.losses["total_loss"]
            self._loss_sum = self._loss_sum + (loss.detach().double() if torch.is_tensor(loss) else float(loss))
            self._steps += 1

        return wrapped

    def wrap_testing_hook(self, hook):
        def wrapped(tester):
            hook(tester)
            emb, labels = tester.embeddings_and_labels[self.data.query_split]
            self.embeddings = (tester.all_accuracies[self.data.query_split]["epoch"], emb.cpu(), labels[:, 0].cpu())

        return wrapped

    def end_epoch(self, epoch, accuracies, val_accuracies=None):
        """Record ``epoch`` with ``{space: pml accuracies}`` of the test (and validation) split."""
        loss = float(self._loss_sum) / self._steps if self._steps else None
        row = {"epoch": epoch, "loss": loss, "time_s": time.perf_counter() - self._t0}
        row.update({space: _metrics(acc) for space, acc in accuracies.items()})
        if val_accuracies:
            row["val"] = {space: _metrics(acc) for space, acc in val_accuracies.items()}
        self.epochs = [r for r in self.epochs if r["epoch"] < epoch] + [row]
        self.start()
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

    def result(self):
        """The reported row with ``selected_by``; None before the first evaluation."""
        evaluated = self.evaluated()
        if not evaluated:
            return None
        if self.data.val_split is None:
            return {"selected_by": "last epoch", **evaluated[-1]}
        metric = self.cfg.primary_metric
        best = max(evaluated, key=lambda r: r["val"][self.primary][metric])  # the first of equals
        return {"selected_by": f"validation {metric_label(metric)} ({self.primary})", **best}

    def summary(self, extra=None):
        evaluated = self.evaluated()
        return {
            "config": dict(vars(self.cfg)),
            "output": self.output,
            "dataset": self.dataset_info(),
            "eval_spaces": {
                k: dataclasses.asdict(v) | {"columns": str(v.columns)} for k, v in self.setup.eval_spaces.items()
            },
            "history": self.epochs,
            "last": evaluated[-1] if evaluated else None,
            "result": self.result(),
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


def _metrics(accuracies):
    metrics = {k.removesuffix("_level0"): float(v) for k, v in accuracies.items() if k != "epoch"}
    return {k: metrics[k] for k in sorted(metrics, key=metric_sort_key)}


def _flatten(row, prefix=""):
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


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


def spaces(row):
    """The evaluation spaces with test metrics in a history row."""
    return [k for k, v in row.items() if isinstance(v, dict) and k != "val"]


def format_metrics(row):
    parts = []
    for space in spaces(row):
        parts.append(f"[{space}] " + " ".join(f"{metric_label(k)} {pct(k, v)}" for k, v in row[space].items()))
    for space, metrics in row.get("val", {}).items():
        parts.append(f"[val {space}] " + " ".join(f"{metric_label(k)} {pct(k, v)}" for k, v in metrics.items()))
    return "  ".join(parts) + f"  ({row['time_s']:.1f} s)"


def pct(name, value):
    """Recall and MAP in percent; hierarchy heights as they are."""
    if name.startswith(("recall_at_", "mean_average_precision", "precision_at")):
        return f"{100 * value:.2f}"
    return f"{value:.3f}"
