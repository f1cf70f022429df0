"""Command-line options of ``examples/train.py``: every option checked by the parser (one-line errors), defaults per
dataset, presets (checked against the options)."""

import argparse
import inspect
import math
import os

import torch

from pml_hyperbolic.losses import CHESTLoss
from pml_hyperbolic.losses.chest_loss import REGULARIZER_WEIGHTS

from .data import DATASETS, RECALL_AT, SMALL_DATASETS
from .losses import LOSSES
from .models import SMALL_TRUNKS, timm_model_exists
from .presets import PRESETS

CHEST_DEFAULT_REGULARIZER = inspect.signature(CHESTLoss).parameters["regularizer"].default

# Defaults that depend on the dataset (used where the command line and the preset leave an option unset).
_SMALL = dict(
    backbone="mlp", embedding_size=32, epochs=20, lr=1e-3, weight_decay=1e-4, num_workers=0, threads=1,
    hier_proxies=64, hier_topk=15,
)  # fmt: skip
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
    "fashion-mnist": dict(_SMALL, backbone="cnn", epochs=10, batch_size=50, m_per_class=10, threads=None),
    "tree": dict(_SMALL, batch_size=64, m_per_class=8),
    "synthetic-images": dict(IMAGE_DEFAULTS, backbone="tiny_cnn", embedding_size=128, epochs=1, batch_size=64,
                             m_per_class=4),
}  # fmt: skip


def _checked(convert, test, what):
    """An argparse ``type``: ``convert`` the text, then require ``test``; the error says ``what`` was expected."""

    def parse(text):
        try:
            value = convert(text)
        except (TypeError, ValueError, RuntimeError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


def _finite(x):
    return math.isfinite(x)


POSITIVE_INT = _checked(int, lambda v: v > 0, "a positive integer")
NON_NEGATIVE_INT = _checked(int, lambda v: v >= 0, "an integer >= 0")
POSITIVE = _checked(float, lambda v: _finite(v) and v > 0, "a positive number")
NON_NEGATIVE = _checked(float, lambda v: _finite(v) and v >= 0, "a number >= 0")
UNIT_INTERVAL = _checked(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
FRACTION = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
SEEDS = _checked(lambda t: [int(s) for s in t.split(",")], lambda v: len(v) > 0, "comma-separated integers")
SAMPLES = _checked(
    lambda t: t if t == "classes" else int(t), lambda v: v == "classes" or v > 0, "a positive integer or 'classes'"
)
DEVICE = _checked(lambda t: t if t == "auto" else str(torch.device(t)), lambda v: True, "auto, cpu, cuda or cuda:N")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one (the help describes dataset-dependent defaults)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Errors on one line (the full usage is long): ``train.py: error: <message> (see --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser():
    p = Parser(
        prog="train.py",
        description="Train and evaluate deep metric learning losses (Euclidean and hyperbolic) with "
        "pytorch-metric-learning's trainers and testers. Without arguments: compare all losses on digits.",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("what to run")
    g.add_argument(
        "--preset", choices=sorted(PRESETS), metavar="NAME",
        help="a published recipe, explicit options override it: hier_{resnet50,deit,vit,dino}_{cub,cars,sop,inshop} "
        "(HIER, CVPR 2023) or hyp_{vit,deit,dino}_{cub,cars,sop,inshop} (Hyp-ViT, CVPR 2022)",
    )  # fmt: skip
    g.add_argument("--dataset", choices=DATASETS, default="digits", help="what to train and evaluate on")
    g.add_argument(
        "--data-root",
        help="dataset folder (or its parent); by default data/<official folder name> (fashion-mnist: "
        "data/fashion-mnist, then Debian's /usr/share/datasets/fashion-mnist)",
    )
    g.add_argument(
        "--loss",
        help=f"one of {', '.join(LOSSES)}; 'all' or a comma-separated list compares them "
        f"(by default all for {', '.join(SMALL_DATASETS)}; required otherwise)",
    )
    g.add_argument("--seeds", type=SEEDS, default="0", help="comma-separated seeds; several give mean ± std")
    g.add_argument("--output", help="run folder (by default runs/<dataset>_<loss>_<backbone>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    g.add_argument(
        "--benchmark-throughput", type=POSITIVE_INT, metavar="STEPS",
        help="measure images/s over STEPS batches (loader only, bare backbone step, end-to-end training, ratio) "
        "for each --loss, print a table, and exit",
    )  # fmt: skip

    g = p.add_argument_group("model")
    g.add_argument("--backbone", help="mlp, cnn, tiny_cnn, or a timm model name (by default per dataset)")
    g.add_argument(
        "--pretrained", action=argparse.BooleanOptionalAction, default=True,
        help="start a timm backbone from its pretrained weights (--no-pretrained: random initialisation)",
    )  # fmt: skip
    g.add_argument("--pretrained-path", help="local weights file for the timm backbone (nothing is downloaded)")
    g.add_argument("--global-pool", help="timm global pooling, e.g. avgmax (HIER's ResNet-50); by default timm's")
    g.add_argument("--embedding-size", type=POSITIVE_INT, help="embedding dimension (by default per dataset)")
    g.add_argument("--curvature", type=POSITIVE, default=0.1, help="c of the Poincaré ball (curvature -c)")
    g.add_argument("--clip-r", type=POSITIVE, default=2.3, help="feature clipping radius before expmap0")
    g.add_argument(
        "--freeze-bn", action=argparse.BooleanOptionalAction, default=False, help="freeze the trunk's BatchNorm layers"
    )
    g.add_argument(
        "--freeze-patch-embed", action=argparse.BooleanOptionalAction, default=False,
        help="freeze a ViT's patch embedding",
    )  # fmt: skip
    g.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=True,
        help="channels-last images and trunk for image datasets on CUDA",
    )  # fmt: skip
    g.add_argument("--compile", action="store_true", help="torch.compile the trunk (slower start, faster steps)")

    g = p.add_argument_group("loss")
    g.add_argument("--temperature", type=POSITIVE, default=0.2, help="hyperbolic_contrastive temperature")
    g.add_argument("--hier-weight", type=NON_NEGATIVE, default=0.5, help="weight of HIERLoss next to Proxy-Anchor")
    g.add_argument(
        "--hier-proxies", type=POSITIVE_INT,
        help="number of hierarchical proxies (by default 64 for the small datasets, 512 (the paper's) for images)",
    )  # fmt: skip
    g.add_argument(
        "--chest-regularizer", choices=("hyphc", "hier", "none"),
        help="chest's regularizer of its hyperbolic proxies: HypHC's relaxed Dasgupta cost, HIER's LCA proxies, or "
        f"none (by default CHESTLoss's, {CHEST_DEFAULT_REGULARIZER!r})",
    )  # fmt: skip
    g.add_argument(
        "--chest-regularizer-weight", type=NON_NEGATIVE,
        help="weight of chest's regularizer (by default CHESTLoss's: "
        + ", ".join(f"{name} {w:g}" for name, w in REGULARIZER_WEIGHTS.items()) + ")",
    )  # fmt: skip
    g.add_argument(
        "--hier-topk", type=POSITIVE_INT,
        help="HIER reciprocal-neighbour mining k (by default 15 for the small datasets, 20 (the paper's) for images)",
    )  # fmt: skip

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=POSITIVE_INT, help="training epochs (by default per dataset)")
    g.add_argument("--batch-size", type=POSITIVE_INT, help="images per batch (by default per dataset)")
    g.add_argument("--m-per-class", type=POSITIVE_INT, help="images per class in a batch (MPerClassSampler)")
    g.add_argument(
        "--samples-per-epoch", type=SAMPLES,
        help="samples per epoch: a number, or 'classes' (every class once, m images each); by default the training "
        "set size",
    )  # fmt: skip
    g.add_argument("--lr", type=POSITIVE, help="backbone learning rate, AdamW (by default per dataset)")
    g.add_argument("--head-lr-scale", type=NON_NEGATIVE, default=1.0, help="head learning rate / --lr")
    g.add_argument(
        "--proxy-lr-scale", type=NON_NEGATIVE, help="class-proxy learning rate / --lr (by default the loss's)"
    )
    g.add_argument("--hier-lr-scale", type=NON_NEGATIVE, default=50.0, help="HIER proxy learning rate / --lr")
    g.add_argument("--weight-decay", type=NON_NEGATIVE, help="AdamW weight decay (by default per dataset)")
    g.add_argument("--adam-eps", type=POSITIVE, default=1e-8, help="AdamW epsilon")
    g.add_argument(
        "--lr-schedule", choices=("constant", "step", "cosine"), default="constant", help="learning-rate schedule"
    )
    g.add_argument("--lr-step-epochs", type=POSITIVE_INT, help="step schedule: epochs between decays")
    g.add_argument("--lr-gamma", type=POSITIVE, default=0.5, help="step schedule: decay factor")
    g.add_argument(
        "--warmup-epochs", type=NON_NEGATIVE_INT, default=0, help="epochs with the backbone frozen (learning rate 0)"
    )
    g.add_argument("--grad-clip-norm", type=POSITIVE, help="clip each model's gradient norm")
    g.add_argument("--grad-clip-value", type=POSITIVE, help="clamp every gradient element (models and loss)")
    g.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=False,
        help="mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU)",
    )  # fmt: skip
    g.add_argument("--amp-dtype", choices=("float16", "bfloat16"), help="the mixed-precision dtype (with --amp)")

    g = p.add_argument_group("input pipeline (image datasets, docs/runner.md)")
    g.add_argument("--image-size", type=_checked(int, lambda v: v >= 8, "an integer >= 8"), default=224,
                   help="crop size in pixels")  # fmt: skip
    g.add_argument("--crop-min-scale", type=UNIT_INTERVAL, default=0.08, help="RandomResizedCrop's smallest area")
    g.add_argument(
        "--num-workers", type=NON_NEGATIVE_INT,
        help="DataLoader worker processes (by default 0 for the small datasets, else min(8, CPU count))",
    )  # fmt: skip
    g.add_argument(
        "--augment-on", choices=("workers", "device"), default="workers",
        help="where training crops are resized: in the workers, or on the training device for the whole batch",
    )  # fmt: skip
    g.add_argument(
        "--cache-gb", type=NON_NEGATIVE,
        help="memory for decoded images (training images and evaluation crops, decoded once); 0 decodes every "
        "epoch; by default a quarter of the physical memory",
    )  # fmt: skip

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-batch-size", type=POSITIVE_INT, default=256, help="images per evaluation batch")
    g.add_argument(
        "--eval-interval", type=POSITIVE_INT, default=1,
        help="evaluate every N epochs and after the last (checkpoints: every epoch)",
    )  # fmt: skip
    g.add_argument(
        "--val-fraction", type=FRACTION, default=0.0,
        help="hold out this fraction of the training classes (the last in label order) as a validation split, and "
        "report the epoch with the best validation --primary-metric; 0: report the last epoch",
    )  # fmt: skip
    g.add_argument(
        "--primary-metric", default="recall_at_1",
        help="the validation metric that selects the reported epoch: recall_at_K (K of the dataset's list) or "
        "mean_average_precision_at_r",
    )  # fmt: skip
    g.add_argument("--patience", type=POSITIVE_INT, help="stop after N evaluations without a better validation metric")

    g = p.add_argument_group("system")
    g.add_argument("--device", type=DEVICE, default="auto", help="auto (CUDA when there is a GPU), cpu, cuda, cuda:1")
    g.add_argument(
        "--threads", type=POSITIVE_INT,
        help="torch CPU threads (by default 1 for digits and tree, whose tiny models run fastest single-threaded, "
        "else torch's)",
    )  # fmt: skip
    g.add_argument(
        "--deterministic", action="store_true",
        help="torch deterministic algorithms: bitwise reproducible runs (and resumes), possibly slower",
    )  # fmt: skip
    g.add_argument("--log-freq", type=POSITIVE_INT, default=50, help="record-keeper logging interval (iterations)")

    g = p.add_argument_group("generated data (--dataset tree, synthetic-images)")
    g.add_argument("--tree-branching", type=_checked(int, lambda v: v >= 2, "an integer >= 2"), default=4,
                   help="children per node of the generated tree")  # fmt: skip
    g.add_argument("--tree-depth", type=POSITIVE_INT, default=3, help="levels below the root (classes = b ** depth)")
    g.add_argument("--tree-dim", type=POSITIVE_INT, default=32, help="dimension of the generated points")
    g.add_argument("--tree-noise", type=NON_NEGATIVE, default=0.9, help="norm of a sample's offset from its leaf")
    g.add_argument("--tree-level-decay", type=POSITIVE, default=0.7, help="offset norm ratio between tree levels")
    g.add_argument("--tree-samples-per-class", type=POSITIVE_INT, default=30, help="points per class")
    g.add_argument("--tree-seed", type=int, default=0, help="seed of the generated tree and samples")
    g.add_argument(
        "--synthetic-classes", type=_checked(int, lambda v: v >= 2, "an integer >= 2"), default=100,
        help="classes of the generated images",
    )  # fmt: skip
    g.add_argument("--synthetic-images-per-class", type=POSITIVE_INT, default=10, help="generated images per class")
    return p


def check_presets(parser):
    """Every preset key must be an option (a typo would otherwise be ignored)."""
    dests = {a.dest for a in parser._actions}
    for name, preset in PRESETS.items():
        unknown = sorted(set(preset) - dests)
        if unknown:
            raise ValueError(f"Preset {name!r} sets unknown options {unknown}.")


def parse_args(argv=None):
    """Parse ``argv``: preset values replace the defaults, explicit options replace both; dataset-dependent
    defaults fill what is still unset; combinations are checked. Returns the namespace, with ``losses`` and
    ``seeds`` as lists."""
    parser = build_parser()
    check_presets(parser)
    cfg = parser.parse_args(argv)
    if cfg.preset:
        parser.set_defaults(**PRESETS[cfg.preset])
        cfg = parser.parse_args(argv)
    for k, v in DATASET_DEFAULTS.get(cfg.dataset, IMAGE_DEFAULTS).items():
        if getattr(cfg, k) is None:
            setattr(cfg, k, v)
    if cfg.loss is None:
        if cfg.dataset not in SMALL_DATASETS:
            parser.error(f"--loss (or --preset) is required for {cfg.dataset}; choose from {', '.join(LOSSES)}")
        cfg.loss = "all"
    cfg.losses = list(LOSSES) if cfg.loss == "all" else [x.strip() for x in cfg.loss.split(",")]
    unknown = [x for x in cfg.losses if x not in LOSSES]
    if unknown:
        parser.error(f"unknown loss {', '.join(unknown)}; choose from {', '.join(LOSSES)} or 'all'")
    check_combinations(parser, cfg)
    return cfg


def check_combinations(parser, cfg):
    """Errors for options that are valid alone but not together (each on one line)."""
    if cfg.batch_size % cfg.m_per_class != 0:
        parser.error(f"--batch-size ({cfg.batch_size}) must be a multiple of --m-per-class ({cfg.m_per_class})")
    if cfg.resume and len(cfg.losses) * len(cfg.seeds) > 1 and cfg.output is None:
        parser.error("--resume needs --output (the comparison folder to continue)")
    if cfg.lr_schedule == "step" and cfg.lr_step_epochs is None:
        parser.error("--lr-schedule step needs --lr-step-epochs")
    if cfg.grad_clip_norm and cfg.grad_clip_value:
        parser.error("choose one of --grad-clip-norm and --grad-clip-value")
    given = {"--chest-regularizer": cfg.chest_regularizer, "--chest-regularizer-weight": cfg.chest_regularizer_weight}
    chest_options = [option for option, value in given.items() if value is not None]
    if chest_options and "chest" not in cfg.losses:
        verb = "applies" if len(chest_options) == 1 else "apply"
        parser.error(f"{' and '.join(chest_options)} {verb} to the chest loss only; add chest to --loss")
    if cfg.chest_regularizer == "none" and cfg.chest_regularizer_weight is not None:
        parser.error("--chest-regularizer none has no weight: drop --chest-regularizer-weight")
    if cfg.amp_dtype and not cfg.amp:
        parser.error("--amp-dtype needs --amp")
    if cfg.patience and not cfg.val_fraction:
        parser.error("--patience needs a validation split (--val-fraction): early stopping on the test set would "
                     "select on it")  # fmt: skip
    recall_at = RECALL_AT.get(cfg.dataset, (1, 2, 4, 8))
    metrics = [f"recall_at_{k}" for k in recall_at] + ["mean_average_precision_at_r"]
    if cfg.primary_metric not in metrics:
        parser.error(f"--primary-metric for {cfg.dataset} must be one of {', '.join(metrics)}")
    if cfg.pretrained_path is not None and not os.path.isfile(cfg.pretrained_path):
        parser.error(f"--pretrained-path {cfg.pretrained_path!r} is not a file")
    if cfg.backbone not in SMALL_TRUNKS and not timm_model_exists(cfg.backbone):
        parser.error(
            f"unknown --backbone {cfg.backbone!r}: use one of {', '.join(SMALL_TRUNKS)} or a timm model name "
            "(e.g. resnet50, vit_small_patch16_224, vit_small_patch16_224.dino)"
        )
