"""Build one run: data, input pipeline, model, loss, optimizers, schedulers, logging, testers and pml trainer."""

import dataclasses
import os
import random

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import logging_presets

from pml_hyperbolic.utils.distributed import DistributedLossWrapper
from pml_hyperbolic.utils.optim import param_groups

from . import distributed
from .data import input_shape, load_data
from .errors import UsageError
from .evaluation import make_tester
from .history import History
from .images import ImageSet, memory_budget
from .losses import LOSSES
from .models import EmbeddingHead, build_trunk
from .pipeline import IMAGENET_MEAN, IMAGENET_STD, Pipeline
from .records import SubLosses
from .trainer import CheckpointHooks, RecipeTrainer, RunState, lr_factor


@dataclasses.dataclass
class Run:
    """Everything :func:`build_run` builds (also used by the tests and the throughput benchmark)."""

    cfg: object
    data: object
    setup: object
    trainer: RecipeTrainer
    testers: dict
    hooks: CheckpointHooks
    record_keeper: object
    model_folder: str
    device: torch.device
    history: History
    pipeline: Pipeline


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was requested but CUDA is not available; use --device cpu.")
    return device


def amp_dtype(cfg, device):
    if not cfg.amp:
        return None
    if cfg.amp_dtype is not None:
        return getattr(torch, cfg.amp_dtype)
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def default_output(cfg):
    return os.path.join("runs", f"{cfg.dataset}_{cfg.loss}_{cfg.backbone}".replace("/", "-"))


def normalization(trunk):
    """(mean, std) of a timm trunk's pretrained configuration, ImageNet's for the small trunks."""
    pretrained = getattr(trunk, "pretrained_cfg", None) or {}
    return tuple(pretrained.get("mean", IMAGENET_MEAN)), tuple(pretrained.get("std", IMAGENET_STD))


def build_run(cfg):
    """Build the data, model, loss, optimizers, schedulers, testers and trainer of one run (``cfg.loss`` is one
    registry name). The dataset is read before the backbone's weights are looked for. Nothing is trained yet; with
    ``cfg.resume`` the last checkpoint is not loaded yet either."""
    device, rank, world_size = setup_torch(cfg)
    data = load_data(cfg)
    num_classes = len(np.unique(np.asarray(data.train.labels)))
    trunk = build_trunk(cfg.backbone, input_shape(cfg), cfg.pretrained, cfg.pretrained_path, cfg.global_pool)
    setup = LOSSES[cfg.loss](cfg, num_classes)  # initialised after the trunk, before the head: a seed's draws
    channels_last = cfg.channels_last and device.type == "cuda" and isinstance(data.train, ImageSet)
    trunk, embedder = build_models(cfg, trunk, setup, device, channels_last)
    models, loss = {"trunk": trunk, "embedder": embedder}, setup.loss.to(device)
    train_models, train_loss = models, loss
    if world_size > 1:
        train_models = {name: distributed.wrap_model(m, device) for name, m in models.items()}
        train_loss = DistributedLossWrapper(loss)
    optimizers = make_optimizers(cfg, trunk, embedder, setup, device)

    pipeline = Pipeline(
        device, cfg.num_workers, cfg.image_size, cfg.crop_min_scale, *normalization(trunk), cfg.augment_on,
        channels_last, memory_budget(cfg.cache_gb), rank, world_size,
    )  # fmt: skip
    train_dataset = pipeline.train_dataset(data.train)
    output = cfg.output or default_output(cfg)
    model_folder = os.path.join(output, "saved_models")
    if rank > 0:  # logs of the training-only ranks; checkpoints are rank 0's
        output = os.path.join(output, f"rank{rank}")
    record_keeper, _, _ = logging_presets.get_record_keeper(
        os.path.join(output, "logs"), os.path.join(output, "tensorboard")
    )
    hooks = CheckpointHooks(
        record_keeper,
        sub_losses=SubLosses(setup.loss),
        primary_metric=cfg.primary_metric,
        validation_split_name=data.val_split,
        log_freq=cfg.log_freq,
    )
    history = History(output, cfg, data, setup)
    testers = make_testers(cfg, data, setup, hooks, history, pipeline, device)

    sampler = make_sampler(cfg, train_dataset, num_classes, rank, world_size)
    local_batch = cfg.batch_size // world_size
    trainer = RecipeTrainer(
        models=train_models,
        optimizers=optimizers,
        batch_size=local_batch,
        loss_funcs={"metric_loss": train_loss},
        mining_funcs={"tuple_miner": setup.miner} if setup.miner is not None else {},
        dataset=train_dataset,
        sampler=sampler,
        dataloader_num_workers=cfg.num_workers,
        lr_schedulers=make_schedulers(cfg, optimizers),
        gradient_clippers=make_clippers(cfg, {**models, "metric_loss": loss}),
        freeze_trunk_batchnorm=cfg.freeze_bn,
        data_device=device,
        end_of_iteration_hook=history.wrap_iteration_hook(hooks.end_of_iteration_hook),
        amp_dtype=amp_dtype(cfg, device),
        batches=lambda: pipeline.train_batches(train_dataset, sampler, local_batch),
        progress_every=cfg.log_freq,
    )
    trainer.run_state = {"run_state": RunState(trainer)}

    def after_epoch(trainer):
        """The other evaluation spaces' metrics, then the epoch's row of the history."""
        accuracies, val = {}, {}
        if trainer.epoch % cfg.eval_interval == 0 or trainer.epoch == cfg.epochs:
            for i, (name, tester) in enumerate(testers.items()):
                if i > 0:
                    tester.test(data.eval_sets, trainer.epoch, trunk, embedder, data.splits_to_eval)
                accuracies[name] = tester.all_accuracies[data.query_split]
                if data.val_split is not None:
                    val[name] = tester.all_accuracies[data.val_split]
            record_keeper.save_records()
        history.end_epoch(trainer.epoch, accuracies, val)

    if rank > 0:
        trainer.end_of_epoch_hook = lambda trainer: True  # only rank 0 evaluates and saves
    else:
        trainer.end_of_epoch_hook = hooks.end_of_epoch_hook(
            next(iter(testers.values())),
            data.eval_sets,
            model_folder,
            cfg.epochs,
            test_interval=cfg.eval_interval,
            patience=cfg.patience,
            splits_to_eval=data.splits_to_eval,
            after_epoch=after_epoch,
        )
    return Run(cfg, data, setup, trainer, testers, hooks, record_keeper, model_folder, device, history, pipeline)


def setup_torch(cfg):
    """(device, rank, world size): the device (joining torchrun's process group), threads, determinism."""
    device = resolve_device(cfg.device)
    rank, world_size = distributed.world()
    if world_size > 1:
        device = distributed.init(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)
    return device, rank, world_size


def build_models(cfg, trunk, setup, device, channels_last):
    """The trunk (frozen patch embedding, channels-last, compiled as asked) and the embedder, on ``device``."""
    if cfg.freeze_patch_embed:
        if not hasattr(trunk, "patch_embed"):
            raise UsageError(f"--freeze-patch-embed: backbone {cfg.backbone!r} has no patch_embed.")
        trunk.patch_embed.requires_grad_(False)
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
    trunk = trunk.to(device, memory_format=torch.channels_last) if channels_last else trunk.to(device)
    if cfg.compile:
        trunk.compile()
    return trunk, embedder.to(device)


def make_testers(cfg, data, setup, hooks, history, pipeline, device):
    """One tester per evaluation space; the first logs through ``hooks`` and feeds ``history``."""
    testers = {}
    for i, (name, space) in enumerate(setup.eval_spaces.items()):
        if i == 0:
            end_of_testing = history.wrap_testing_hook(hooks.end_of_testing_hook)
        else:
            prefixed = logging_presets.HookContainer(hooks.record_keeper, record_group_name_prefix=name)
            end_of_testing = prefixed.end_of_testing_hook
        testers[name] = make_tester(cfg, data, space, pipeline.eval_batches, end_of_testing, device)
    return testers


def make_sampler(cfg, dataset, num_classes, rank, world_size):
    """pml's ``MPerClassSampler`` over ``--samples-per-epoch`` (this rank's share under torchrun)."""
    samples = len(dataset) if cfg.samples_per_epoch is None else cfg.samples_per_epoch
    if samples == "classes":
        samples = num_classes * cfg.m_per_class
    check_sampler(cfg, num_classes, samples)
    sampler = MPerClassSampler(dataset.labels, m=cfg.m_per_class, batch_size=cfg.batch_size,
                               length_before_new_iter=samples)  # fmt: skip
    if world_size > 1:
        sampler = distributed.RankShardSampler(sampler, cfg.batch_size, rank, world_size)
    return sampler


def make_schedulers(cfg, optimizers):
    """pml's ``<name>_scheduler_by_epoch``: ``LambdaLR`` with :func:`~.trainer.lr_factor` (the warm-up freezes only
    the trunk)."""
    schedulers = {}
    for key, optimizer in optimizers.items():
        name = key[: -len("_optimizer")]
        factor = lr_factor(
            cfg.lr_schedule, cfg.epochs, cfg.lr_step_epochs, cfg.lr_gamma, cfg.warmup_epochs, name == "trunk"
        )
        schedulers[f"{name}_scheduler_by_epoch"] = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return schedulers


def make_clippers(cfg, modules):
    """pml's ``<name>_grad_clipper`` for every module with trainable parameters (norm or value clipping)."""
    clippers = {}
    for name, module in modules.items():
        if not any(p.requires_grad for p in module.parameters()):
            continue
        if cfg.grad_clip_norm:
            clippers[f"{name}_grad_clipper"] = _clipper(torch.nn.utils.clip_grad_norm_, module, cfg.grad_clip_norm)
        elif cfg.grad_clip_value:
            clippers[f"{name}_grad_clipper"] = _clipper(torch.nn.utils.clip_grad_value_, module, cfg.grad_clip_value)
    return clippers


def make_optimizers(cfg, trunk, embedder, setup, device):
    """AdamW for the trunk, the embedder and the loss's parameters (at their learning-rate scales); fused on CUDA,
    where it takes the GradScaler's inf check without a host sync."""

    def adamw(groups):
        return torch.optim.AdamW(groups, eps=cfg.adam_eps, fused=device.type == "cuda" or None)

    wd = cfg.weight_decay
    optimizers = {
        "trunk_optimizer": adamw(param_groups(trunk, lr=cfg.lr, weight_decay=wd)),
        "embedder_optimizer": adamw(param_groups(embedder, lr=cfg.lr * cfg.head_lr_scale, weight_decay=wd)),
    }
    if setup.lr_scales:
        modules, scales = zip(*setup.lr_scales)
        groups = param_groups(None, *modules, lr=cfg.lr, proxy_lr_mult=list(scales), weight_decay=wd)
        optimizers["metric_loss_optimizer"] = adamw(groups)
    return optimizers


def _clipper(fn, module, value):
    return lambda: fn(module.parameters(), value)


def check_sampler(cfg, num_classes, samples):
    """Clear errors for batch settings that pml's MPerClassSampler would reject with a bare assertion."""
    if cfg.m_per_class * num_classes < cfg.batch_size:
        raise UsageError(
            f"--batch-size {cfg.batch_size} needs at least {cfg.batch_size // cfg.m_per_class} training classes with "
            f"--m-per-class {cfg.m_per_class}, but the training set has {num_classes}."
        )
    if samples < cfg.batch_size:
        raise UsageError(f"An epoch of {samples} samples is shorter than one batch ({cfg.batch_size}).")
