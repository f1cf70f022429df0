"""Shared harness for the zero-shot comparisons of ``benchmarks/``: scikit-learn's digits, Fashion-MNIST and the
generated class tree.

Every loss table in the docs comes from scripts in this folder that call :func:`train_and_evaluate` (one method,
one seed) or :func:`compare` (methods × seeds): the same data, trunk, sampler, budget and seeds for every method;
MAP@R and precision@1 (= Recall@1) from pml's ``AccuracyCalculator`` (exact Poincaré kNN for ball embeddings,
cosine for sphere ones, the product distance for CHEST's two spaces together) and, for datasets with a class tree,
the hierarchy figures:

- ``mistake_severity`` (per evaluation space): how far up the tree the wrong nearest neighbours' classes meet the
  query's class (1 = a sibling class; lower is better);
- ``dasgupta_means`` (per evaluation space): Dasgupta's cost of the single-linkage tree of the test classes' mean
  embeddings (under the space's own distance), relative to the true tree's cost under the tree's similarities;
- ``dasgupta_proxies`` (per run): the same for the tree decoded from the learned class proxies of the training
  classes, by cosine single linkage of their class directions (HypHC's decoding). Lower is better for both;
  :func:`hierarchy_baselines` gives the best binary tree's and random trees' figures.

Datasets (:func:`load`), each with its zero-shot split (test classes unseen in training):

- ``digits``: scikit-learn's 8×8 digits, 0-4 train (901 images), 5-9 test (896); the runner's MLP trunk
  (64-256-256); 30 epochs, batches of 5 classes × 10.
- ``fashion-mnist``: the first 600 images of classes 0-4 of the training file (3,000) train, the first 400 of
  classes 5-9 of the test file (2,000) test; the runner's ``tiny_cnn`` trunk (SmallCNN 16-32-64, the first two
  convolutions with stride 2); 10 epochs, batches of 5 classes × 10. (The runner's default, all 30,000 training
  images and the 32-64-128 CNN, costs about 25 times more per epoch.)
- ``tree``: ``SyntheticTree()``, a depth-3 tree with branching 4 (64 leaf classes, 32-d points, 30 per class), the
  first two leaves of every parent train (32 classes, 960 points), the other two test; the MLP trunk (32-256-256);
  30 epochs, batches of 8 classes × 8.

AdamW (model lr 1e-3, weight decay 1e-4), each loss's own proxy learning rate; an epoch is the training set's size.
"""

import dataclasses
import functools
import os
import statistics
import sys
import time
from typing import Callable, Optional

import numpy as np
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyperbolic import datasets
from pml_hyperbolic.distances import EuclideanHyperbolicDistance, PoincareDistance
from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.utils import dasgupta, hierarchy
from pml_hyperbolic.utils.accuracy_calculator import RetrievalAccuracyCalculator
from pml_hyperbolic.utils.inference import PoincareKNN

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from pml_hyperbolic_examples.models import MLP, SmallCNN  # noqa: E402  (the runner's small trunks)

METRICS = ("mean_average_precision_at_r", "precision_at_1")
HIERARCHY_METRICS = ("mistake_severity", "dasgupta_means")
DATASETS = ("digits", "fashion-mnist", "tree")
FASHION_TRAIN_PER_CLASS, FASHION_TEST_PER_CLASS = 600, 400


# ---------------------------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class Data:
    """A zero-shot split and its training budget. Training labels are 0..C-1; ``train_classes[i]`` is the dataset's
    class of label i (the row of the class proxies); test labels are the dataset's classes."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_classes: np.ndarray
    class_tree: Optional[hierarchy.ClassTree]
    trunk: Callable[[], torch.nn.Module]  # a new trunk, with ``num_features``
    features: int
    epochs: int
    batch_size: int
    m_per_class: int

    @property
    def num_classes(self):
        return len(self.train_classes)

    def model(self, head):
        """A new trunk followed by ``head`` (built after the head: a seed's draws as in the earlier scripts)."""
        return torch.nn.Sequential(self.trunk(), head)


def _first(labels, per_class):
    """Mask of the first ``per_class`` items of each class (in file order); all items for None."""
    labels = np.asarray(labels)
    if per_class is None:
        return torch.ones(len(labels), dtype=torch.bool)
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    return torch.from_numpy(np.isin(np.arange(len(labels)), keep))


def _split(name, train, test, trunk, features, epochs, batch_size, m_per_class, train_per_class=None,
           test_per_class=None):  # fmt: skip
    keep, keep_test = _first(train.labels, train_per_class), _first(test.labels, test_per_class)
    classes, ranks = np.unique(np.asarray(train.labels)[keep.numpy()], return_inverse=True)
    return Data(
        name, train.data[keep].float(), torch.from_numpy(ranks).long(), test.data[keep_test].float(),
        torch.as_tensor(np.asarray(test.labels)[keep_test.numpy()]).long(), classes,
        getattr(test, "class_tree", None), trunk, features, epochs, batch_size, m_per_class,
    )  # fmt: skip


@functools.lru_cache(maxsize=None)
def load(name, fashion_root=None):
    """The :class:`Data` of ``name`` (one of :data:`DATASETS`); Fashion-MNIST from ``fashion_root`` or its default
    folders (:class:`pml_hyperbolic.datasets.FashionMNIST`)."""
    if name == "digits":
        train, test = datasets.Digits("train"), datasets.Digits("test")
        return _split(name, train, test, lambda: MLP(64), 256, epochs=30, batch_size=50, m_per_class=10)
    if name == "fashion-mnist":
        train, test = datasets.FashionMNIST(fashion_root, "train"), datasets.FashionMNIST(fashion_root, "test")
        trunk = lambda: SmallCNN(1, widths=(16, 32, 64), downsample=True)  # noqa: E731
        return _split(name, train, test, trunk, 64, epochs=10, batch_size=50, m_per_class=10,
                      train_per_class=FASHION_TRAIN_PER_CLASS, test_per_class=FASHION_TEST_PER_CLASS)  # fmt: skip
    if name == "tree":
        train, test = datasets.SyntheticTree("train"), datasets.SyntheticTree("test")
        return _split(name, train, test, lambda: MLP(32), 256, epochs=30, batch_size=64, m_per_class=8)
    raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")


# -------------------------------------------------------------------------------------------------------- models
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


@dataclasses.dataclass
class Space:
    """How to rank (and to compare class means): ``"cosine"`` on ``columns``, ``"ball"`` (Poincaré distance, curvature
    ``c``) on ``columns``, or ``"both"``: CHEST's product distance on ``[sphere (euclidean_dim) | ball]``."""

    kind: str
    columns: slice = dataclasses.field(default_factory=lambda: slice(None))
    c: float = 0.1
    euclidean_dim: Optional[int] = None

    def knn(self):
        if self.kind == "ball":
            return PoincareKNN(c=self.c)
        if self.kind == "both":
            return CustomKNN(EuclideanHyperbolicDistance(self.euclidean_dim, c=self.c, space="both"))
        return CustomKNN(CosineSimilarity())

    def class_mean_distances(self, embeddings, labels):
        """(classes, (n, n) float64 distances between the classes' mean embeddings): the tangent mean in a ball."""
        x = embeddings.double()
        if self.kind == "cosine":
            classes, means = hierarchy.class_means(torch.nn.functional.normalize(x, dim=1), labels)
            means = torch.nn.functional.normalize(means, dim=1)
            d = 1 - means @ means.T
        elif self.kind == "ball":
            classes, means = hierarchy.class_means(x, labels, self.c)
            d = PoincareDistance(c=self.c)(means)
        else:
            e, b = x[:, : self.euclidean_dim], x[:, self.euclidean_dim :]
            classes, e = hierarchy.class_means(torch.nn.functional.normalize(e, dim=1), labels)
            _, b = hierarchy.class_means(b, labels, self.c)
            d = EuclideanHyperbolicDistance(self.euclidean_dim, c=self.c, space="both")(torch.cat([e, b], 1))
        d = (d + d.T).clamp_min(0) / 2
        return classes, d.fill_diagonal_(0)


def cosine_eval(slice_=slice(None)):
    return Space("cosine", slice_)


def ball_eval(c=0.1, slice_=slice(None)):
    return Space("ball", slice_, c)


def both_eval(euclidean_dim, c=0.1):
    return Space("both", slice(None), c, euclidean_dim)


@dataclasses.dataclass
class Setup:
    """What one method trains: the model, the loss (with its parameters), an optional miner, how to evaluate, and
    ``class_points(loss)``: (C, D) points of the training classes (e.g. their proxies' directions) whose cosine
    single-linkage tree is scored on datasets with a class tree."""

    model: torch.nn.Module
    loss: torch.nn.Module
    miner: Optional[Callable] = None
    eval_spaces: dict = dataclasses.field(default_factory=dict)  # name -> Space; default: cosine
    class_points: Optional[Callable] = None


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate(embeddings, labels, space, tree=None):
    """{metric: value} of ``embeddings[:, space.columns]`` ranked in ``space``; with a class tree also
    ``mistake_severity`` and ``dasgupta_means``."""
    x = embeddings[:, space.columns]
    include = METRICS + (("mistake_severity",) if tree is not None else ())
    calc = RetrievalAccuracyCalculator(recall_at=(1,), class_tree=tree, include=include, knn_func=space.knn())
    out = {k: float(v) for k, v in calc.get_accuracy(x, labels).items()}
    if tree is not None:
        classes, d = space.class_mean_distances(x, labels)
        out["dasgupta_means"] = dasgupta.hierarchy_quality(d.numpy(), tree, classes.numpy(), metric="precomputed")[
            "decoded"
        ]
    return out


@functools.lru_cache(maxsize=None)
def hierarchy_baselines(name, fashion_root=None):
    """{"proxies" | "means": {"best", "random", "random_std"}}: the best binary tree's and random trees' figures for
    the training classes (proxies) and the test classes (means) of dataset ``name``; None without a class tree."""
    data = load(name, fashion_root)
    if data.class_tree is None:
        return None
    out = {}
    for part, classes in (("proxies", data.train_classes), ("means", np.unique(data.y_test.numpy()))):
        q = dasgupta.hierarchy_quality(np.eye(len(classes)), data.class_tree, classes)
        out[part] = {k: q[k] for k in ("best", "random", "random_std")}
    return out


def param_groups(setup, lr, loss_lr=None):
    """The model at ``lr``; the loss's parameters at ``loss_lr`` (default ``lr``), or, with a dict, those of each
    named child module of the loss at ``loss_lr[name]`` and the others at ``loss_lr["default"]``."""
    groups = [{"params": list(setup.model.parameters()), "lr": lr}]
    rates = {"default": lr if loss_lr is None else loss_lr} if not isinstance(loss_lr, dict) else loss_lr
    named = {name: [p for p in m.parameters() if p.requires_grad] for name, m in setup.loss.named_children()}
    for name in set(rates) - set(named) - {"default"}:
        raise ValueError(f"loss_lr names {name!r}, which is not a child module of {type(setup.loss).__name__}.")
    listed = {id(p) for name in rates if name in named for p in named[name]}
    groups += [{"params": named[name], "lr": rate} for name, rate in rates.items() if named.get(name)]
    rest = [p for p in setup.loss.parameters() if p.requires_grad and id(p) not in listed]
    if rest:
        groups.append({"params": rest, "lr": rates["default"]})
    return groups


def train_and_evaluate(make_setup, seed, data="digits", epochs=None, batch_size=None, m_per_class=None, lr=1e-3,
                       loss_lr=None, weight_decay=1e-4, samples_per_epoch=None, fashion_root=None):  # fmt: skip
    """Train ``make_setup(data)`` on ``data``'s training classes (``data``: a :class:`Data` or a dataset name),
    evaluate on its test classes. The budget defaults to the dataset's (an epoch: the training set's size in samples);
    ``loss_lr``: see :func:`param_groups`.

    Returns ``{"spaces": {space: {metric: value}}, "dasgupta_proxies": value or None, "time_s": seconds}``.
    """
    t0 = time.perf_counter()
    data = load(data, fashion_root) if isinstance(data, str) else data
    epochs, batch_size = epochs or data.epochs, batch_size or data.batch_size
    m_per_class = m_per_class or data.m_per_class
    torch.manual_seed(seed)
    np.random.seed(seed)
    setup = make_setup(data)
    optimizer = torch.optim.AdamW(param_groups(setup, lr, loss_lr), weight_decay=weight_decay)
    x_train, y_train = data.x_train, data.y_train
    samples = samples_per_epoch or len(y_train)
    sampler = MPerClassSampler(y_train, m=m_per_class, batch_size=batch_size, length_before_new_iter=samples)
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
        emb = torch.cat([setup.model(x) for x in data.x_test.split(1000)])
    spaces = setup.eval_spaces or {"cosine": cosine_eval()}
    out = {"spaces": {name: evaluate(emb, data.y_test, space, data.class_tree) for name, space in spaces.items()}}
    out["dasgupta_proxies"] = None
    if data.class_tree is not None and setup.class_points is not None:
        with torch.no_grad():
            points = setup.class_points(setup.loss).detach().double()
        out["dasgupta_proxies"] = dasgupta.hierarchy_quality(points, data.class_tree, data.train_classes)["decoded"]
    out["time_s"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------------------------- tables
def summarize(runs):
    """{space: {metric: (mean, std), "per_seed": {metric: [...]}}, "dasgupta_proxies": (mean, std, per_seed) or None}
    of the runs of one method (one per seed)."""
    out = {}
    for space in runs[0]["spaces"]:
        per_seed = {m: [r["spaces"][space][m] for r in runs] for m in runs[0]["spaces"][space]}
        out[space] = {**{m: (statistics.mean(v), statistics.pstdev(v)) for m, v in per_seed.items()},
                      "per_seed": per_seed}  # fmt: skip
    values = [r["dasgupta_proxies"] for r in runs]
    out["dasgupta_proxies"] = None
    if all(v is not None for v in values):
        out["dasgupta_proxies"] = (statistics.mean(values), statistics.pstdev(values), values)
    return out


def compare(methods, seeds=(0, 1, 2), data="digits", **train_kwargs):
    """Run every ``methods[name] = (make_setup, extra_train_kwargs)`` over ``seeds`` on ``data``; print one line per
    method and space, return ``{name: summarize(runs)}``."""
    table = {}
    for name, (make_setup, kw) in methods.items():
        t0 = time.time()
        runs = [train_and_evaluate(make_setup, seed, data, **{**train_kwargs, **kw}) for seed in seeds]
        table[name] = summarize(runs)
        for space, res in spaces(table[name]).items():
            print(
                f"{name:40s} {space:12s} MAP@R {100 * res[METRICS[0]][0]:5.2f} ± {100 * res[METRICS[0]][1]:4.2f}   "
                f"P@1 {100 * res[METRICS[1]][0]:5.2f} ± {100 * res[METRICS[1]][1]:4.2f}   ({time.time() - t0:.0f} s)",
                flush=True,
            )
    return table


def spaces(summary):
    """The evaluation spaces of a :func:`summarize` result (its first one is the method's primary space)."""
    return {k: v for k, v in summary.items() if k != "dasgupta_proxies"}


def paired(a, b):
    """Per-seed differences ``a - b`` of two equally long lists: (mean, standard error, number of seeds where a > b)."""
    diff = [x - y for x, y in zip(a, b, strict=True)]
    se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
    return statistics.mean(diff), se, sum(d > 0 for d in diff)


def paired_difference(table, a, b, metric=METRICS[0]):
    """Per-seed differences ``a - b`` of ``metric`` (each method's first space): (mean, standard error, wins of a).

    Both methods see the same seeds (data order, initialisation), so the seed-to-seed spread that both share cancels:
    this is the test that decides "at least as high", not the two means with their stds.
    """
    va, vb = (next(iter(spaces(table[name]).values()))["per_seed"][metric] for name in (a, b))
    return paired(va, vb)


def markdown(table):
    """The table as markdown rows (method | space | MAP@R | Recall@1), in percent, mean ± std."""
    lines = ["| method | evaluated in | MAP@R (%) | Recall@1 (%) |", "|---|---|---|---|"]
    for name, summary in table.items():
        for space, res in spaces(summary).items():
            (m, ms), (p, ps) = res[METRICS[0]], res[METRICS[1]]
            lines.append(f"| {name} | {space} | {100 * m:.2f} ± {100 * ms:.2f} | {100 * p:.2f} ± {100 * ps:.2f} |")
    return "\n".join(lines)
