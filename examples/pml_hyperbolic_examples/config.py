"""Command-line options of ``examples/train.py``: defaults per dataset, presets, validation."""

import argparse
import os

from .data import DATASETS
from .losses import LOSSES
from .presets import PRESETS

# Defaults that depend on the dataset (used where the command line and the preset leave an option unset).
_SMALL = dict(
    backbone="mlp", embedding_size=32, epochs=20, lr=1e-3, weight_decay=1e-4, num_workers=0, threads=1,
    hier_proxies=64, hier_topk=15,
)
IMAGE_DEFAULTS = dict(
    backbone="resnet50",
    embedding_size=512,
    epochs=100,
    batch_size=180,
    m_per_class=2,
    lr=1e-4,
    weight_decay=1e-2,
    num_workers=min(8, os.cpu_count() or 1),
    hier_proxies=512,
    hier_topk=20,
)
DATASET_DEFAULTS = {
    "digits": dict(_SMALL, batch_size=50, m_per_class=10),
    "tree": dict(_SMALL, batch_size=64, m_per_class=8),
    "synthetic-images": dict(
        IMAGE_DEFAULTS, backbone="tiny_cnn", embedding_size=128, epochs=1, batch_size=64, m_per_class=4, num_workers=0
    ),
}
SMALL_DATASETS = ("digits", "tree")


def build_parser():
    p = argparse.ArgumentParser(
        description="Train and evaluate deep metric learning losses (Euclidean and hyperbolic) with "
        "pytorch-metric-learning's trainers and testers. Without arguments: compare all losses on digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("what to run")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        metavar="NAME",
        help="a published recipe, explicit options override it: hier_{resnet50,deit,vit,dino}_{cub,cars,sop,inshop} "
        "(HIER, CVPR 2023) or hyp_{vit,deit,dino}_{cub,cars,sop,inshop} (Hyp-ViT, CVPR 2022)",
    )
    g.add_argument("--dataset", choices=DATASETS, default="digits")
    g.add_argument("--data-root", help="dataset folder (or its parent); default data/<official folder name>")
    g.add_argument(
        "--loss",
        help=f"one of {', '.join(LOSSES)}; 'all' or a comma-separated list compares them "
        "(default: all for digits and tree)",
    )
    g.add_argument("--seeds", default="0", help="comma-separated seeds; several give mean ± std in comparisons")
    g.add_argument("--output", help="run folder (default runs/<dataset>_<loss>_<backbone>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    g.add_argument(
        "--benchmark-throughput",
        type=int,
        metavar="STEPS",
        help="time STEPS training iterations (after 3 warm-up ones), print images/s, and exit",
    )

    g = p.add_argument_group("model")
    g.add_argument("--backbone", help="mlp, cnn (digits), tiny_cnn, or a timm model name")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True, help="timm pretrained weights")
    g.add_argument("--pretrained-path", help="local weights file for the timm backbone (no download)")
    g.add_argument("--global-pool", help="timm global pooling (HIER's ResNet-50 uses avgmax)")
    g.add_argument("--embedding-size", type=int)
    g.add_argument("--curvature", type=float, default=0.1, help="c of the Poincaré ball (curvature -c)")
    g.add_argument("--clip-r", type=float, default=2.3, help="feature clipping radius before expmap0")
    g.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=False, help="freeze trunk BatchNorm")
    g.add_argument(
        "--freeze-patch-embed",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="freeze a ViT's patch embedding",
    )

    g = p.add_argument_group("loss")
    g.add_argument("--temperature", type=float, default=0.2, help="hyperbolic_contrastive temperature")
    g.add_argument("--hier-weight", type=float, default=0.5, help="weight of HIERLoss next to Proxy-Anchor")
    g.add_argument(
        "--hier-proxies",
        type=int,
        help="number of hierarchical proxies (default: 64 for digits and " "tree, 512 (the paper's) for images)",
    )
    g.add_argument(
        "--hier-topk",
        type=int,
        help="HIER reciprocal-neighbour mining k (default: 15 for digits and " "tree, 20 (the paper's) for images)",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--m-per-class", type=int, help="images per class in a batch (MPerClassSampler)")
    g.add_argument(
        "--samples-per-epoch",
        help="samples per epoch: a number, or 'classes' (every class once, "
        "m images each); default: the training set size",
    )
    g.add_argument("--lr", type=float, help="backbone learning rate (AdamW)")
    g.add_argument("--head-lr-scale", type=float, default=1.0, help="head learning rate / --lr")
    g.add_argument("--proxy-lr-scale", type=float, help="class-proxy learning rate / --lr (default: the loss's)")
    g.add_argument("--hier-lr-scale", type=float, default=50.0, help="HIER proxy learning rate / --lr")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--lr-schedule", choices=("constant", "step", "cosine"), default="constant")
    g.add_argument("--lr-step-epochs", type=int, help="step schedule: epochs between decays")
    g.add_argument("--lr-gamma", type=float, default=0.5, help="step schedule: decay factor")
    g.add_argument("--warmup-epochs", type=int, default=0, help="epochs with the backbone frozen (learning rate 0)")
    g.add_argument("--grad-clip-norm", type=float, help="clip each model's gradient norm")
    g.add_argument("--grad-clip-value", type=float, help="clamp every gradient element (models and loss)")
    g.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU)",
    )
    g.add_argument("--amp-dtype", choices=("float16", "bfloat16"), help="override the mixed-precision dtype")

    g = p.add_argument_group("data and evaluation")
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--crop-min-scale", type=float, default=0.08, help="RandomResizedCrop minimum scale")
    g.add_argument("--num-workers", type=int, help="dataloader workers (default: 0 for in-memory data, else up to 8)")
    g.add_argument("--eval-batch-size", type=int, default=256)
    g.add_argument("--eval-interval", type=int, default=1, help="evaluate every N epochs (checkpoints: every epoch)")
    g.add_argument("--patience", type=int, help="stop after N evaluations without a better primary metric")
    g.add_argument("--primary-metric", default="recall_at_1", help="selects the best model")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: 1 for digits and tree, whose tiny "
        "models run fastest single-threaded, else torch's default)",
    )
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="torch deterministic algorithms: bitwise reproducible runs (and resumes), possibly slower",
    )
    g.add_argument("--log-freq", type=int, default=50, help="record-keeper logging interval (iterations)")
    g.add_argument("--tree-branching", type=int, default=4, help="children per node of the generated tree")
    g.add_argument("--tree-depth", type=int, default=3, help="levels below the root (classes = branching ** depth)")
    g.add_argument("--tree-dim", type=int, default=32)
    g.add_argument("--tree-noise", type=float, default=0.9, help="norm of a sample's offset from its leaf")
    g.add_argument("--tree-level-decay", type=float, default=0.7, help="offset norm ratio between tree levels")
    g.add_argument("--tree-samples-per-class", type=int, default=30)
    g.add_argument("--tree-seed", type=int, default=0, help="seed of the generated tree and samples")
    g.add_argument("--synthetic-classes", type=int, default=100)
    g.add_argument("--synthetic-images-per-class", type=int, default=10)
    return p


def parse_args(argv=None):
    """Parse ``argv``: preset values replace the defaults, explicit options replace both; dataset-dependent
    defaults fill what is still unset. Returns the namespace, with ``losses`` and ``seeds`` as lists."""
    parser = build_parser()
    cfg = parser.parse_args(argv)
    if cfg.preset:
        parser.set_defaults(**PRESETS[cfg.preset])
        cfg = parser.parse_args(argv)
    for k, v in DATASET_DEFAULTS.get(cfg.dataset, IMAGE_DEFAULTS).items():
        if getattr(cfg, k) is None:
            setattr(cfg, k, v)
    if cfg.loss is None:
        if cfg.dataset not in SMALL_DATASETS:
            parser.error(f"--loss (or --preset) is required for {cfg.dataset}; choose from {', '.join(LOSSES)}.")
        cfg.loss = "all"
    cfg.losses = list(LOSSES) if cfg.loss == "all" else [x.strip() for x in cfg.loss.split(",")]
    unknown = [x for x in cfg.losses if x not in LOSSES]
    if unknown:
        parser.error(f"unknown loss {', '.join(unknown)}; choose from {', '.join(LOSSES)} or 'all'.")
    cfg.seeds = [int(s) for s in str(cfg.seeds).split(",")]
    if cfg.samples_per_epoch not in (None, "classes"):
        cfg.samples_per_epoch = int(cfg.samples_per_epoch)
    if cfg.batch_size % cfg.m_per_class != 0:
        parser.error(f"--batch-size ({cfg.batch_size}) must be a multiple of --m-per-class ({cfg.m_per_class}).")
    if cfg.resume and len(cfg.losses) * len(cfg.seeds) > 1 and cfg.output is None:
        parser.error("--resume needs --output (the comparison folder to continue).")
    return cfg
