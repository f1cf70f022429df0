"""Digits zero-shot (train 0-4, test 5-9): CHESTLoss and its ablations against pml's SoftTripleLoss, same budget.

Every method has the harness's MLP trunk, 30 epochs, batches of 5 classes × 10, AdamW (lr 1e-3, weight decay 1e-4)
for the model and 1e-2 for every loss parameter (10×, the proxy learning rate chosen by ``--sweep``), K = 10 proxies
per class, c = 0.1, clip_r = 2.3. CHEST and its ablations use layout (b): ``EuclideanHyperbolicHead`` with D_E = D_H =
32, each space as wide as the 32-d baseline head; the Euclidean part is evaluated with cosine, the ball part with
exact Poincaré kNN, and both together with ``EuclideanHyperbolicDistance(space="both")`` (weights 1, 1). The
ablations are CHESTLoss with some weights set to 0. Layout (a) (one 32-d ball head seen by every part) is run too.

    python benchmarks/digits_chest.py               # the README table, seeds 0, 1, 2
    python benchmarks/digits_chest.py --seeds 10    # the same table over seeds 0-9
    python benchmarks/digits_chest.py --stability   # MAP@R at model lr 3e-4, 1e-3, 3e-3 (proxy lr 10x), seeds 0, 1, 2
    python benchmarks/digits_chest.py --sweep       # the runs that chose CHEST's defaults, seeds 3, 4, 5

``--sweep`` varies one setting at a time around the defaults (the proxy learning rate; HIER's weight, size and
neighbourhood; HIER on the class proxies; the SoftTriple scales; the Euclidean weight; the D_E/D_H split; layout (a)),
on seeds 3, 4, 5, so that the reported seeds are not the ones the defaults were selected on.
"""

import argparse

import torch
from digits_harness import Head, Setup, ball_eval, compare, cosine_eval, make_model, markdown
from pytorch_metric_learning.losses import SoftTripleLoss
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyperbolic.distances import EuclideanHyperbolicDistance
from pml_hyperbolic.layers import EuclideanHyperbolicHead
from pml_hyperbolic.losses import CHESTLoss

CLASSES, K, DIM, C = 5, 10, 32, 0.1
PROXY_LR_MULT = 10
OFF = dict(hyperbolic_weight=0.0, euclidean_weight=0.0, hier_weight=0.0)


def spaces(d_e, which=("euclidean", "ball", "both")):
    out = {
        "euclidean": cosine_eval(slice(0, d_e)),
        "ball": lambda e: ball_eval(C)(e[:, d_e:]),
        "both": lambda e: (e, CustomKNN(EuclideanHyperbolicDistance(d_e, c=C, space="both"))),
    }
    return {name: out[name] for name in which}


def chest(d_e=DIM, d_h=DIM, which=("euclidean", "ball", "both"), **loss_kwargs):
    """CHESTLoss in layout (b) (D_E + D_H), evaluated in ``which`` spaces."""

    def make():
        loss = CHESTLoss(CLASSES, d_e + d_h, euclidean_dim=d_e, centers_per_class=K, c=C, **loss_kwargs)
        return Setup(make_model(EuclideanHyperbolicHead(256, d_e, d_h, c=C)), loss, eval_spaces=spaces(d_e, which))

    return make


def chest_one_head(dim=DIM, **loss_kwargs):
    """CHESTLoss in layout (a): one ball head, evaluated with the Poincaré distance and with cosine."""

    def make():
        loss = CHESTLoss(CLASSES, dim, centers_per_class=K, c=C, **loss_kwargs)
        return Setup(make_model(Head(256, dim, "ball", c=C)), loss, eval_spaces={"ball": ball_eval(C), "cosine": cosine_eval()})

    return make


def pml_soft_triple():
    loss = SoftTripleLoss(CLASSES, DIM, centers_per_class=K)
    return Setup(make_model(Head(256, DIM, "sphere")), loss, eval_spaces={"cosine": cosine_eval()})


EUCLIDEAN_ONLY = chest(which=("euclidean",), **{**OFF, "euclidean_weight": 1.0})
HYPERBOLIC_ONLY = chest(which=("ball",), **{**OFF, "hyperbolic_weight": 1.0})
TABLE = {
    "pml SoftTripleLoss (32-d sphere head)": pml_soft_triple,
    "Euclidean SoftTriple only": EUCLIDEAN_ONLY,
    "hyperbolic SoftTriple only": HYPERBOLIC_ONLY,
    "both SoftTriples": chest(hier_weight=0.0),
    "CHEST = both + HIER (default CHESTLoss)": chest(),
    "CHEST, layout (a): one 32-d ball head": chest_one_head(),
}


def sweep_methods():
    """One setting at a time around the base (model lr 1e-3, proxy lr 1e-2 unless stated). The base is CHESTLoss's
    defaults except the Euclidean part, which had pml's defaults (la 20, gamma 0.1) until the last variants showed
    la 80, gamma 0.03 to be better in both spaces (now the default)."""
    base = dict(euclidean_kwargs=dict(la=20, gamma=0.1, margin=0.01))
    runs = {f"proxy lr {lr:g}": (chest(**base), {"loss_lr": lr}) for lr in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)}
    variants = {
        **{f"hier_weight {w:g}": dict(hier_weight=w) for w in (0.0, 0.1, 1.0)},
        **{
            f"HIER {p} proxies, topk {k}, {t} triplets/anchor": dict(
                hier_kwargs=dict(num_proxies=p, topk=k, triplets_per_anchor=t)
            )
            for p, k, t in ((16, 8, 5), (32, 10, 50), (32, 15, 10), (32, 20, 10), (64, 10, 10), (64, 15, 10), (64, 15, 50))
        },
        "hier_class_proxies": dict(hier_class_proxies=True),
        "hyperbolic la 16": dict(hyperbolic_kwargs=dict(la=16.0)),
        "hyperbolic_weight 0.5": dict(hyperbolic_weight=0.5),
        "euclidean_weight 0.5": dict(euclidean_weight=0.5),
        "euclidean_weight 2": dict(euclidean_weight=2.0),
        "Euclidean la 40": dict(euclidean_kwargs=dict(la=40, gamma=0.1, margin=0.01)),
        "Euclidean la 80": dict(euclidean_kwargs=dict(la=80, gamma=0.1, margin=0.01)),
        "Euclidean la 80, gamma 0.03": dict(euclidean_kwargs=dict(la=80, gamma=0.03, margin=0.01)),
    }
    runs.update({name: (chest(**{**base, **kw}), {}) for name, kw in variants.items()})
    runs["split D_E 16 + D_H 16"] = (chest(d_e=16, d_h=16, **base), {})
    runs["layout (a), one 32-d ball head"] = (chest_one_head(**base), {})
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stability", action="store_true", help="MAP@R across 3 learning rates spanning 10x")
    parser.add_argument("--sweep", action="store_true", help="rerun the runs that chose the defaults (seeds 3-5)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 for the table (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the MLP is tiny: more threads only add synchronisation on a shared machine
    if args.sweep:
        table = compare(sweep_methods(), seeds=(3, 4, 5), epochs=30, lr=1e-3, loss_lr=1e-2)
    elif args.stability:
        methods = {
            f"{name}, lr {lr:g}": (make, {"lr": lr, "loss_lr": PROXY_LR_MULT * lr})
            for name, make in (("CHEST", chest()), ("Euclidean SoftTriple only", EUCLIDEAN_ONLY),
                               ("hyperbolic SoftTriple only", HYPERBOLIC_ONLY))
            for lr in (3e-4, 1e-3, 3e-3)
        }  # fmt: skip
        table = compare(methods, seeds=(0, 1, 2), epochs=30)
    else:
        methods = {name: (make, {}) for name, make in TABLE.items()}
        table = compare(methods, seeds=tuple(range(args.seeds)), epochs=30, lr=1e-3, loss_lr=PROXY_LR_MULT * 1e-3)
    print(markdown(table))


if __name__ == "__main__":
    main()
