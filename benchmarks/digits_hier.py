"""Digits zero-shot (train 0-4, test 5-9): Proxy-Anchor alone vs Proxy-Anchor + 0.5 HIER, 3 seeds, same budget.

The paper's recipe, the pml way: ``MultipleLosses([ProxyAnchorLoss(5, dim), HIERLoss(dim, ...)], weights=[1, 0.5])``.
Proxy-Anchor uses pml's default cosine distance (it sees the L2-normalised ball points); HIER sees the ball points.
Every method has the same model (MLP trunk + Linear + ToPoincare(c=0.1, clip_r=2.3), 32-d), the same sampler
(5 classes × 10 per batch), 30 epochs, AdamW lr 1e-3 for the model and 5e-2 (50×, the official HIER proxy
multiplier) for every loss parameter. Embeddings are evaluated in the ball (exact Poincaré kNN) and with cosine.

Digits-scale HIER settings: 64 proxies and topk = 15 (self + 9 same-class + 5 other-class neighbours in a batch of 50;
the official 512 / 20 are for 180-image batches of 90 classes), 50 triplets per anchor, margin 0.1, tau 0.1.
Runs on one CPU thread (the results do not depend on it; on a shared 2-core machine many small two-thread ops stall).

    python benchmarks/digits_hier.py
"""

import torch
from digits_harness import Head, Setup, ball_eval, compare, cosine_eval, markdown
from pytorch_metric_learning.losses import MultipleLosses, ProxyAnchorLoss

from pml_hyperbolic.losses import HIERLoss

DIM = 32
SPACES = {"ball": ball_eval(0.1), "cosine": cosine_eval()}


def proxy_anchor(data):
    model = data.model(Head(data.features, DIM, "ball"))  # before the loss: the seed's draws of the README table
    return Setup(model, ProxyAnchorLoss(data.num_classes, DIM), eval_spaces=SPACES)


def proxy_anchor_hier(**hier_kwargs):
    def make(data):
        loss = MultipleLosses([ProxyAnchorLoss(data.num_classes, DIM), HIERLoss(DIM, **hier_kwargs)], weights=[1, 0.5])
        return Setup(data.model(Head(data.features, DIM, "ball")), loss, eval_spaces=SPACES)

    return make


if __name__ == "__main__":
    torch.set_num_threads(1)
    table = compare(
        {
            "ProxyAnchor": (proxy_anchor, {}),
            "ProxyAnchor + 0.5 HIER (64 proxies, topk 15)": (proxy_anchor_hier(num_proxies=64, topk=15), {}),
        },
        seeds=(0, 1, 2),
        epochs=30,
        loss_lr=5e-2,
    )
    print(markdown(table))
