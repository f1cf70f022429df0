"""Shared harness for the digits zero-shot comparisons (train on digits 0-4, retrieve among digits 5-9).

Every loss table in the README comes from scripts in this folder that call :func:`compare`: the same data, trunk,
sampler, budget and seeds for every method, MAP@R and precision@1 from pml's ``AccuracyCalculator`` (exact Poincaré
kNN for ball embeddings, cosine for Euclidean ones), reported as mean ± std over seeds.
"""

import dataclasses
import statistics
import time
from typing import Callable, Optional

import numpy as np
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from sklearn.datasets import load_digits

from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.utils.inference import PoincareKNN

METRICS = ("mean_average_precision_at_r", "precision_at_1")


def digits_split():
    """(x_train, y_train, x_test, y_test): digits 0-4 for training, 5-9 (relabelled 0-4) for testing."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    train, test = y < 5, y >= 5
    return x[train], y[train], x[test], y[test] - 5


class Head(torch.nn.Module):
    """Linear projection followed by the embedding space: 'ball' (ToPoincare), 'sphere' (L2) or 'euclidean'."""

    def __init__(self, in_dim, dim, space, c=0.1, clip_r=2.3):
        super().__init__()
        self.linear = torch.nn.Linear(in_dim, dim)
        self.space = space
        self.to_ball = ToPoincare(c=c, clip_r=clip_r) if space == "ball" else None

    def forward(self, x):
        x = self.linear(x)
        if self.space == "ball":
            return self.to_ball(x)
        if self.space == "sphere":
            return torch.nn.functional.normalize(x, dim=1)
        return x


def make_model(head: torch.nn.Module, hidden=256):
    """The digits trunk: a 2-layer MLP on the 64 pixels, then ``head``."""
    trunk = torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.ReLU(),
    )
    return torch.nn.Sequential(trunk, head)


@dataclasses.dataclass
class Setup:
    """What one method trains: the model, the loss (with its parameters), an optional miner, how to evaluate."""

    model: torch.nn.Module
    loss: torch.nn.Module
    miner: Optional[Callable] = None
    # space -> function(embeddings) -> (embeddings to rank, knn_func); default: ball -> PoincareKNN, else cosine
    eval_spaces: dict = dataclasses.field(default_factory=dict)


def ball_eval(c=0.1):
    return lambda e: (e, PoincareKNN(c=c))


def cosine_eval(slice_=slice(None)):
    return lambda e: (e[:, slice_], CustomKNN(CosineSimilarity()))


def evaluate(embeddings, labels, knn_func):
    calc = AccuracyCalculator(include=METRICS, k="max_bin_count", knn_func=knn_func)
    return calc.get_accuracy(embeddings, labels)


def train_and_evaluate(make_setup, seed, epochs=30, batch_size=50, m_per_class=10, lr=1e-3, loss_lr=None, weight_decay=1e-4):
    """Train ``make_setup(seed)`` on digits 0-4, evaluate on 5-9. Returns {space: {metric: value}}."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    x_train, y_train, x_test, y_test = digits_split()
    setup = make_setup()
    params = [{"params": setup.model.parameters(), "lr": lr}]
    loss_params = [p for p in setup.loss.parameters() if p.requires_grad]
    if loss_params:
        params.append({"params": loss_params, "lr": lr if loss_lr is None else loss_lr})
    optimizer = torch.optim.AdamW(params, weight_decay=weight_decay)
    sampler = MPerClassSampler(y_train, m=m_per_class, batch_size=batch_size, length_before_new_iter=len(y_train))
    for _ in range(epochs):
        setup.model.train()
        for idx in torch.utils.data.DataLoader(list(sampler), batch_size=batch_size):
            emb = setup.model(x_train[idx])
            tuples = setup.miner(emb, y_train[idx]) if setup.miner is not None else None
            loss = setup.loss(emb, y_train[idx], tuples)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    setup.model.eval()
    with torch.no_grad():
        emb = setup.model(x_test)
    spaces = setup.eval_spaces or {"default": cosine_eval()}
    out = {}
    for name, fn in spaces.items():
        e, knn = fn(emb)
        out[name] = evaluate(e, y_test, knn)
    return out


def compare(methods, seeds=(0, 1, 2), **train_kwargs):
    """Run every ``methods[name] = (make_setup, extra_train_kwargs)`` over ``seeds``; print and return the table.

    Returns {name: {space: {metric: (mean, std), "per_seed": {metric: [value per seed]}}}}.
    """
    table = {}
    for name, (make_setup, kw) in methods.items():
        t0 = time.time()
        runs = [train_and_evaluate(make_setup, seed, **{**train_kwargs, **kw}) for seed in seeds]
        table[name] = {}
        for space in runs[0]:
            per_seed = {m: [r[space][m] for r in runs] for m in METRICS}
            stats = {m: (statistics.mean(v), statistics.pstdev(v)) for m, v in per_seed.items()}
            table[name][space] = {**stats, "per_seed": per_seed}
        for space, res in table[name].items():
            print(
                f"{name:40s} {space:12s} MAP@R {100 * res[METRICS[0]][0]:5.2f} ± {100 * res[METRICS[0]][1]:4.2f}   "
                f"P@1 {100 * res[METRICS[1]][0]:5.2f} ± {100 * res[METRICS[1]][1]:4.2f}   ({time.time() - t0:.0f} s)",
                flush=True,
            )
    return table


def paired_difference(table, a, b, metric=METRICS[0]):
    """Per-seed differences ``a - b`` of ``metric`` (each method's first space): (mean, standard error, wins of a).

    Both methods see the same seeds (data order, initialisation), so the seed-to-seed spread that both share cancels:
    this is the test that decides "at least as high", not the two means with their stds.
    """
    va, vb = (next(iter(table[name].values()))["per_seed"][metric] for name in (a, b))
    diff = [x - y for x, y in zip(va, vb)]
    se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
    return statistics.mean(diff), se, sum(d > 0 for d in diff)


def markdown(table):
    """The table as markdown rows (method | space | MAP@R | Recall@1), in percent, mean ± std."""
    lines = ["| method | evaluated in | MAP@R (%) | Recall@1 (%) |", "|---|---|---|---|"]
    for name, spaces in table.items():
        for space, res in spaces.items():
            (m, ms), (p, ps) = res[METRICS[0]], res[METRICS[1]]
            lines.append(f"| {name} | {space} | {100 * m:.2f} ± {100 * ms:.2f} | {100 * p:.2f} ± {100 * ps:.2f} |")
    return "\n".join(lines)
