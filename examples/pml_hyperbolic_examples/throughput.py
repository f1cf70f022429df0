"""``--benchmark-throughput STEPS``: how fast the input pipeline, the bare backbone and the whole training step run,
in one process, so that the ratio end-to-end / bare says how well the pipeline feeds the device."""

import copy
import itertools
import json
import os
import time

import torch

from .augment import reference_transforms
from .build import amp_dtype, build_run
from .images import ImageSet, Reference
from .pipeline import RankLabels
from .runner import release

COLUMNS = {
    "reference_loader": "loader only, reference pipeline",
    "loader": "loader only",
    "bare": "bare backbone step",
    "end_to_end": "end-to-end training",
}


def benchmark_throughput(cfg, steps, warmup=5):
    """Images per second, each over ``steps`` batches after ``warmup`` ones (the device synchronised around the
    timed part), for every loss of ``cfg.losses``:

    - ``loader``: this runner's batches, normalised on the device (no model); for image datasets also
      ``reference_loader``: the reference pipeline (:func:`~.pipeline.reference_transforms` in the same number of
      workers, float32 batches copied to the device) on the same images, sampler and batch size;
    - ``bare``: the trunk alone on one device-resident batch: forward, a mean-square loss, backward, and the same
      optimizer and mixed precision (AdamW, GradScaler for float16) as the run;
    - ``end_to_end``: the runner's training iterations (batches, trunk, head, loss, backward, optimizers, hooks);
    - ``ratio``: end_to_end / bare.

    The loader and bare figures are measured with the first loss (they do not depend on it). Prints a markdown table
    and writes ``throughput.json`` to the output folder; returns the rows."""
    rows, shared = [], {}
    for name in cfg.losses:
        sub = copy.copy(cfg)
        sub.loss = name
        r = build_run(sub)
        if not shared:
            shared["loader"] = loader_rate(r, steps, warmup)
            if isinstance(r.data.train, ImageSet):
                shared["reference_loader"] = reference_loader_rate(r, steps, warmup)
            shared["bare"] = bare_step_rate(r, steps, warmup)
        end_to_end = training_rate(r, steps, warmup)
        rows.append(
            {
                "backbone": cfg.backbone,
                "loss": name,
                "device": torch.cuda.get_device_name(r.device) if r.device.type == "cuda" else "cpu",
                "amp_dtype": str(r.trainer.amp_dtype),
                "batch_size": cfg.batch_size,
                "image_size": cfg.image_size,
                "num_workers": cfg.num_workers,
                "augment_on": cfg.augment_on,
                "steps": steps,
                **shared,
                "end_to_end": end_to_end,
                "ratio": end_to_end / shared["bare"],
            }
        )
        output = r.history.output
        release(r)
        del r
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "throughput.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(markdown(rows))
    return rows


def markdown(rows):
    """The rows as a markdown table (images/s)."""
    lines = [
        "| backbone | loss | " + " | ".join(COLUMNS.values()) + " | end-to-end / bare |",
        "|---|---|" + "---:|" * (len(COLUMNS) + 1),
    ]
    for row in rows:
        cells = [f"{row[k]:,.0f}" if k in row else "–" for k in COLUMNS]
        lines.append(f"| {row['backbone']} | {row['loss']} | " + " | ".join(cells) + f" | {row['ratio']:.2f} |")
    return "\n".join(lines)


def _rate(step, batch_size, steps, warmup, device):
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(batches):
    """Batches across epochs (a new DataLoader iteration, like training, when one ends)."""
    return itertools.chain.from_iterable(itertools.repeat(batches))


def loader_rate(r, steps, warmup):
    batches = r.pipeline.train_batches(r.trainer.dataset, r.trainer.sampler, r.trainer.batch_size)
    it = _cycle(batches)
    return _rate(lambda: next(it), r.trainer.batch_size, steps, warmup, r.device)


def reference_loader_rate(r, steps, warmup):
    """The reference pipeline: torchvision's transforms on PIL images in the workers, float32 batches, copied to the
    device the way pml's trainer does."""
    train_tf, _ = reference_transforms(r.cfg.image_size, *r.pipeline.normalize, r.cfg.crop_min_scale)
    dataset = Reference(r.data.train, train_tf, labels=RankLabels(r.data.train).targets)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=r.trainer.batch_size, sampler=r.trainer.sampler, drop_last=True,
        num_workers=r.cfg.num_workers,
    )  # fmt: skip
    it = _cycle(loader)

    def step():
        x, y = next(it)
        x.to(r.device), y.to(r.device)

    return _rate(step, r.trainer.batch_size, steps, warmup, r.device)


def bare_step_rate(r, steps, warmup):
    trunk = r.trainer.models["trunk"]
    x = next(iter(r.pipeline.train_batches(r.trainer.dataset, r.trainer.sampler, r.trainer.batch_size)))[0]
    params = [p for p in trunk.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=r.cfg.lr, eps=r.cfg.adam_eps, fused=r.device.type == "cuda" or None)
    dtype = amp_dtype(r.cfg, r.device)
    scaler = torch.amp.GradScaler(r.device.type, enabled=dtype == torch.float16)
    trunk.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(r.device.type, dtype=dtype, enabled=dtype is not None):
            out = trunk(x)
        scaler.scale(out.float().square().mean()).backward()
        scaler.step(optimizer)
        scaler.update()

    rate = _rate(step, len(x), steps, warmup, r.device)
    trunk.zero_grad(set_to_none=True)
    return rate


def training_rate(r, steps, warmup):
    trainer = r.trainer
    trainer.initialize_dataloader()
    trainer.set_to_train()
    trainer.epoch, trainer.iteration = 1, 0

    def step():
        trainer.forward_and_backward()
        trainer.end_of_iteration_hook(trainer)
        trainer.iteration += 1

    rate = _rate(step, trainer.batch_size, steps, warmup, r.device)
    trainer.dataloader_iter = None
    return rate
