"""Train and evaluate one loss with pml's trainer, tester and hooks (:func:`run`), resuming an interrupted run."""

import gc
import glob
import os
import time

import torch

from . import distributed, plots
from .build import build_run, default_output
from .errors import UsageError
from .evaluation import hierarchy_metrics, primary_embeddings


def check_output(cfg):
    """Refuse to overwrite a run, and to resume one that does not exist (before anything is built)."""
    output = cfg.output or default_output(cfg)
    checkpoints = glob.glob(os.path.join(output, "saved_models", "trunk_*.pth"))
    if cfg.resume and not checkpoints:
        raise UsageError(
            f"Nothing to resume in {output}: no checkpoint in {os.path.join(output, 'saved_models')}. "
            "Check --output, or start the run without --resume."
        )
    if not cfg.resume and distributed.world()[0] == 0 and checkpoints:
        raise UsageError(f"{output} already holds a run: pass --resume to continue it, or choose another --output.")


def run(cfg):
    """Train ``cfg.loss`` (one registry name) and evaluate it every ``cfg.eval_interval`` epochs and at the end;
    write ``results.json``, ``results.csv``, the plots, record-keeper logs, tensorboard events and checkpoints to the
    output folder. Returns the results dict (as in ``results.json``, plus ``"map"``: the 2-D embedding map)."""
    t0 = time.perf_counter()
    check_output(cfg)
    r = build_run(cfg)
    try:
        return _train(r, cfg, t0)
    finally:
        release(r)


def release(r):
    """Stop the run's DataLoader workers now: drop its loaders (persistent workers live as long as they do) and
    collect them here, not in the forked workers of a later run in this process (compare, benchmarks)."""
    r.trainer.dataloader = r.trainer.dataloader_iter = None
    r.pipeline.close()
    gc.collect()


def _train(r, cfg, t0):
    start_epoch = 1
    if cfg.resume:
        r.history.load()
        ddp_models = r.trainer.models  # checkpoints hold the plain modules' state dicts
        r.trainer.models = {name: getattr(m, "module", m) for name, m in ddp_models.items()}
        start_epoch = r.hooks.load_latest_saved_models(r.trainer, r.model_folder, r.device)
        r.trainer.models = ddp_models
        for optimizer in r.trainer.optimizers.values():
            cpu_steps(optimizer)
        print(f"[{cfg.loss}] resuming at epoch {start_epoch} from {r.model_folder}")
    if start_epoch <= cfg.epochs:
        r.history.start()
        r.trainer.train(start_epoch, cfg.epochs)
    if distributed.world()[0] > 0:
        return {}
    return finish(r, time.perf_counter() - t0)


def cpu_steps(optimizer):
    """pml loads checkpoints with ``map_location=device``, which puts the optimizers' ``step`` counters on the GPU;
    torch keeps them on the CPU unless the optimizer is capturable or fused. Put them back (an exact resume saves the
    same state as an uninterrupted run, and no step pays a device sync to read its counter)."""
    if optimizer.defaults.get("capturable") or optimizer.defaults.get("fused"):
        return
    for state in optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].cpu()


def finish(r, wall_time):
    """Hierarchy metrics, plots and the final ``results.json`` of a trained run."""
    if r.history.embeddings is None:  # nothing evaluated in this process (e.g. resuming a finished run)
        tester = next(iter(r.testers.values()))
        trunk, embedder = r.trainer.models["trunk"], r.trainer.models["embedder"]
        emb, labels = tester.get_all_embeddings(r.data.eval_sets[r.data.query_split], trunk, embedder)
        epoch = r.history.epochs[-1]["epoch"] if r.history.epochs else 0
        r.history.embeddings = (epoch, emb.cpu(), labels[:, 0].cpu())
    extra = {"wall_time_s": wall_time}
    if r.data.class_tree is not None:
        extra["hierarchy"] = hierarchy_metrics(r)
    output, title = r.history.output, f"{r.cfg.dataset}: {r.cfg.loss}"
    result = r.history.result()
    plots.plot_history(r.history.epochs, os.path.join(output, "recall.png"), title=title, reported=result)
    emb, c = primary_embeddings(r, r.history.embeddings[1])
    embedding_map = plots.embedding_map(
        emb, r.history.embeddings[2], c, proxies=_proxies_to_draw(r.setup) if c is not None else None
    )
    map_title = f"{title}, test embeddings of epoch {r.history.embeddings[0]}"
    plots.save_map(embedding_map, os.path.join(output, "embeddings.png"), title=map_title)
    r.history.write(extra)
    r.record_keeper.save_records()
    return r.history.summary(extra) | {"map": embedding_map}


def _proxies_to_draw(setup):
    with torch.no_grad():
        out = {}
        if setup.lca_proxies is not None:
            out["hierarchical proxies"] = setup.lca_proxies(setup.loss).detach().cpu()
        if setup.proxies is not None:
            out.update({k: v.detach().cpu() for k, v in setup.proxies(setup.loss).items()})
    return out
