"""The runner's loss registry: ``LOSSES[name](cfg, num_classes)`` returns a :class:`LossSetup`, everything the runner
needs to train and evaluate that loss. Adding a loss is one builder function decorated with ``@register_loss(name)``
(timm's ``register_model`` style): the registry refuses a duplicate name, a name ``--loss`` could not parse and a
builder without a docstring (the runner's ``--help`` lists them)."""

import dataclasses
import re
from typing import Callable, Optional

import torch
from pytorch_metric_learning import losses, regularizers

from pml_hyperbolic.distances import PoincareDistance
from pml_hyperbolic.layers import EuclideanHyperbolicHead
from pml_hyperbolic.losses import CHESTLoss, HIERLoss, HyperbolicSoftTripleLoss
from pml_hyperbolic.regularizers import HypHCProxyRegularizer


@dataclasses.dataclass
class EvalSpace:
    """How to rank test embeddings: ``knn`` is ``"poincare"`` (exact hyperbolic kNN, ball points) or ``"cosine"``;
    ``columns`` selects part of the embedding (for heads that output several spaces side by side)."""

    knn: str
    columns: Optional[slice] = None


@dataclasses.dataclass
class LossSetup:
    """A loss and what it needs from the runner.

    Attributes:
        loss: a pml loss (or ``MultipleLosses``) called as ``loss(embeddings, labels, indices_tuple)``.
        space: the head's output: ``"ball"`` (``ToPoincare``), ``"sphere"`` (L2-normalised) or ``"euclidean"``
            (``models.EmbeddingHead``), or a name describing ``head``.
        eval_spaces: ``{name: EvalSpace}``; the first one selects the best model, all are reported.
        lr_scales: ``[(module, learning-rate scale)]``: parts of the loss with parameters (proxies), trained by the
            ``metric_loss_optimizer`` at ``--lr`` × scale (``pml_hyperbolic.utils.optim.param_groups``).
        miner: an optional pml tuple miner (the trainer's ``tuple_miner``).
        head_layer_norm, riemannian: head options (HIER's LayerNorm before the Linear, ``ToPoincare(riemannian)``).
        lca_proxies: ``loss -> ball points`` of proxies that act as lowest common ancestors (HIER's hierarchical
            proxies): drawn in the Poincaré-disk map and scored on how they group sibling classes.
        proxies: ``loss -> {name: ball points}``: other proxies to draw in the map (e.g. class proxies).
        class_proxies: ``loss -> (C, D)``: one point per training class (in label order), e.g. the direction of its
            proxies' mean (``HypHCProxyRegularizer.class_directions``); the tree decoded from them by cosine single
            linkage is scored against the class tree (Dasgupta's cost, ``evaluation.hierarchy_metrics``).
        head: ``in_features -> nn.Module``, a head replacing ``EmbeddingHead`` (e.g. pml_hyperbolic's
            ``EuclideanHyperbolicHead``, whose two spaces side by side are evaluated via ``EvalSpace.columns``).
    """

    loss: torch.nn.Module
    space: str
    eval_spaces: dict
    lr_scales: list = dataclasses.field(default_factory=list)
    miner: Optional[Callable] = None
    head_layer_norm: bool = False
    riemannian: bool = False
    lca_proxies: Optional[Callable] = None
    proxies: Optional[Callable] = None
    head: Optional[Callable] = None
    class_proxies: Optional[Callable] = None


LOSSES = {}


def register_loss(name):
    """Decorator: add ``builder(cfg, num_classes) -> LossSetup`` to ``LOSSES`` as ``name``."""
    if not re.fullmatch(r"[a-z][a-z0-9_+]*", name):
        raise ValueError(f"loss name {name!r}: use lower-case letters, digits, '_' and '+' ('--loss' splits on commas)")
    if name in LOSSES or name == "all":
        raise ValueError(f"loss name {name!r} is already taken")

    def add(builder):
        if not (builder.__doc__ or "").strip():
            raise ValueError(f"loss {name!r}: give its builder a docstring saying what it trains")
        LOSSES[name] = builder
        return builder

    return add


POINCARE = {"poincare": EvalSpace("poincare")}
COSINE = {"cosine": EvalSpace("cosine")}


def _scale(cfg, default):
    return default if cfg.proxy_lr_scale is None else cfg.proxy_lr_scale


def _class_directions(proxies, k):
    """(C, D) direction of each class's proxy mean, from (C·K, D) proxies (row c·K + k: proxy k of class c)."""
    return HypHCProxyRegularizer.class_directions(proxies, k)


@register_loss("softtriple")
def softtriple(cfg, num_classes):
    """pml ``SoftTripleLoss`` on the sphere with the paper's settings (K = 10, λ = 20, γ = 0.1, δ = 0.01, center
    regularizer τ = 0.2); centers at 100× the learning rate (official code)."""
    loss = losses.SoftTripleLoss(
        num_classes,
        cfg.embedding_size,
        centers_per_class=10,
        la=20,
        gamma=0.1,
        margin=0.01,
        weight_regularizer=regularizers.SparseCentersRegularizer(num_classes, 10),
        weight_reg_weight=0.2,
    )
    centers = lambda loss: _class_directions(torch.nn.functional.normalize(loss.fc, dim=0).t(), 10)  # noqa: E731
    return LossSetup(loss, "sphere", COSINE, [(loss, _scale(cfg, 100))], class_proxies=centers)


@register_loss("hyperbolic_softtriple")
def hyperbolic_softtriple(cfg, num_classes):
    """``HyperbolicSoftTripleLoss``: SoftTriple with proxies in the ball and −d as similarity (the loss's defaults);
    proxies at 10³× the learning rate (``benchmarks/digits_softtriple.py``'s choice: proxy lr 1.0 for lr 1e-3)."""
    loss = HyperbolicSoftTripleLoss(num_classes, cfg.embedding_size, c=cfg.curvature, clip_r=cfg.clip_r)
    return LossSetup(
        loss, "ball", POINCARE, [(loss, _scale(cfg, 1e3))], proxies=lambda loss: {"class proxies": loss.get_proxies()},
        class_proxies=lambda loss: _class_directions(loss.get_proxies(), loss.centers_per_class),
    )  # fmt: skip


@register_loss("proxy_anchor")
def proxy_anchor(cfg, num_classes):
    """pml ``ProxyAnchorLoss`` (α = 32, δ = 0.1) on the sphere; proxies at 100× the learning rate (official code)."""
    loss = losses.ProxyAnchorLoss(num_classes, cfg.embedding_size, margin=0.1, alpha=32)
    return LossSetup(loss, "sphere", COSINE, [(loss, _scale(cfg, 100))], class_proxies=lambda loss: loss.proxies)


@register_loss("proxy_anchor+hier")
def proxy_anchor_hier(cfg, num_classes):
    """HIER (CVPR 2023): Proxy-Anchor on the L2-normalised ball points + λ·``HIERLoss`` (λ = ``--hier-weight``),
    head LayerNorm → Linear → ToPoincare(riemannian=True), evaluated with the Poincaré distance."""
    pa = losses.ProxyAnchorLoss(num_classes, cfg.embedding_size, margin=0.1, alpha=32)
    hier = HIERLoss(
        cfg.embedding_size, num_proxies=cfg.hier_proxies, c=cfg.curvature, clip_r=cfg.clip_r, topk=cfg.hier_topk
    )
    # A dict, not a list: record-keeper names its logs after the keys (a list's "0", "1" break its sqlite tables).
    loss = losses.MultipleLosses(
        {"proxy_anchor": pa, "hier": hier}, weights={"proxy_anchor": 1, "hier": cfg.hier_weight}
    )
    return LossSetup(
        loss,
        "ball",
        POINCARE,
        [(pa, _scale(cfg, 100)), (hier, cfg.hier_lr_scale)],
        head_layer_norm=True,
        riemannian=True,
        lca_proxies=lambda loss: loss.losses["hier"].get_proxies(),
        class_proxies=lambda loss: loss.losses["proxy_anchor"].proxies,
    )


@register_loss("chest")
def chest(cfg, num_classes):
    """CHEST (arXiv 2510.05643): ``CHESTLoss`` in layout (b) with its defaults, except the regularizer
    (``--chest-regularizer``) and its weight (``--chest-regularizer-weight``) when given; ``EuclideanHyperbolicHead``
    with D_E = embedding_size / 4 (at least 2, a circle) and D_H = the rest; the ball part is evaluated with the
    Poincaré distance (it selects the best model), the Euclidean part with cosine. Every proxy at 10× the learning
    rate. Split and proxy learning rate: ``benchmarks/quality.py --select``'s choice (docs/quality.md). Its hierarchy
    figures decode the hyperbolic class proxies."""
    d_e = min(max(2, cfg.embedding_size // 4), cfg.embedding_size - 1)
    options = {}
    if cfg.chest_regularizer is not None:
        options["regularizer"] = None if cfg.chest_regularizer == "none" else cfg.chest_regularizer
    if cfg.chest_regularizer_weight is not None:
        options["regularizer_weight"] = cfg.chest_regularizer_weight
    loss = CHESTLoss(num_classes, cfg.embedding_size, euclidean_dim=d_e, c=cfg.curvature, clip_r=cfg.clip_r, **options)
    spaces = {
        "hyperbolic": EvalSpace("poincare", columns=slice(d_e, None)),
        "euclidean": EvalSpace("cosine", columns=slice(0, d_e)),
    }
    head = lambda f: EuclideanHyperbolicHead(f, d_e, cfg.embedding_size - d_e, c=cfg.curvature, clip_r=cfg.clip_r)  # noqa: E731
    return LossSetup(
        loss,
        "sphere|ball",
        spaces,
        [(loss, _scale(cfg, 10))],
        head=head,
        lca_proxies=(lambda loss: loss.regularizer.get_proxies()) if loss.regularizer_name == "hier" else None,
        proxies=lambda loss: {"class proxies": loss.hyperbolic_loss.get_proxies()},
        class_proxies=lambda loss: _class_directions(loss.hyperbolic_loss.get_proxies(), loss.centers_per_class),
    )


@register_loss("contrastive")
def contrastive(cfg, num_classes):
    """pml ``SupConLoss`` with cosine similarity on the sphere (the Sph- baseline of Hyp-ViT, τ = 0.1)."""
    return LossSetup(losses.SupConLoss(temperature=0.1), "sphere", COSINE)


@register_loss("hyperbolic_contrastive")
def hyperbolic_contrastive(cfg, num_classes):
    """Hyp-ViT (CVPR 2022): pml ``SupConLoss`` on −d_c/τ with ``PoincareDistance`` (τ = ``--temperature``)."""
    loss = losses.SupConLoss(temperature=cfg.temperature, distance=PoincareDistance(c=cfg.curvature))
    return LossSetup(loss, "ball", POINCARE)
