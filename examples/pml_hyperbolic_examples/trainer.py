"""pml's ``MetricLossOnly`` with what the published recipes add (mixed precision, gradient clipping after
unscaling), epoch schedules with a frozen-backbone warm-up, and checkpoints that resume a run exactly."""

import math
import random

import numpy as np
import torch
from pytorch_metric_learning.trainers import MetricLossOnly
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.logging_presets import HookContainer


class RecipeTrainer(MetricLossOnly):
    """``trainers.MetricLossOnly`` with mixed precision.

    With ``amp_dtype`` (``torch.float16`` or ``torch.bfloat16``) the trunk and the embedder run under
    ``torch.autocast``; the loss always runs in float32 on float32 embeddings (so loss parameters such as proxies stay
    float32). float16 uses a ``torch.amp.GradScaler``, and gradients are unscaled before pml's
    ``gradient_clippers`` run. Everything else is pml's trainer.
    """

    def __init__(self, *args, amp_dtype=None, **kwargs):
        self.amp_dtype = amp_dtype
        super().__init__(*args, **kwargs)
        self.grad_scaler = torch.amp.GradScaler(self.data_device.type, enabled=amp_dtype == torch.float16)

    def calculate_loss(self, curr_batch):
        data, labels = curr_batch
        with torch.autocast(self.data_device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            embeddings = self.compute_embeddings(data)
        embeddings = embeddings.float()
        indices_tuple = self.maybe_mine_embeddings(embeddings, labels)
        self.losses["metric_loss"] = self.maybe_get_metric_loss(embeddings, labels, indices_tuple)

    def backward(self):
        self.grad_scaler.scale(self.losses["total_loss"]).backward()

    def clip_gradients(self):
        if self.grad_scaler.is_enabled():
            for optimizer in self._optimizers_to_step():
                self.grad_scaler.unscale_(optimizer)
        super().clip_gradients()

    def step_optimizers(self):
        for optimizer in self._optimizers_to_step():
            self.grad_scaler.step(optimizer)
        self.grad_scaler.update()

    def _optimizers_to_step(self):
        """pml's rule (skip frozen keys), also skipping optimizers without gradients (the GradScaler needs some)."""
        return [
            v
            for k, v in self.optimizers.items()
            if c_f.regex_replace("_optimizer$", "", k) not in self.freeze_these
            and any(p.grad is not None for g in v.param_groups for p in g["params"])
        ]


def lr_factor(schedule, epochs, step_epochs=None, gamma=0.5, warmup_epochs=0, frozen_in_warmup=False):
    """``epoch -> learning-rate factor`` for ``LambdaLR`` stepped once per epoch (pml's ``*_scheduler_by_epoch``).

    ``schedule``: ``"constant"``, ``"step"`` (× ``gamma`` every ``step_epochs``) or ``"cosine"`` (to 0 at
    ``epochs``). With ``frozen_in_warmup`` the factor is 0 for the first ``warmup_epochs`` (HIER's backbone warm-up).
    """
    if schedule not in ("constant", "step", "cosine"):
        raise ValueError(f"lr schedule must be 'constant', 'step' or 'cosine', got {schedule!r}.")
    if schedule == "step" and not (step_epochs and step_epochs > 0):
        raise ValueError("The 'step' schedule needs --lr-step-epochs > 0.")

    def factor(epoch):
        if frozen_in_warmup and epoch < warmup_epochs:
            return 0.0
        if schedule == "step":
            return gamma ** (epoch // step_epochs)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))
        return 1.0

    return factor


class RunState:
    """What an exact resume needs besides models, losses, optimizers and schedulers: the random states (Python,
    NumPy, which pml's samplers use, torch CPU and CUDA), the class order of the ``MPerClassSampler`` (it shuffles
    its list in place) and the ``GradScaler``. It has ``state_dict`` / ``load_state_dict``, so pml's
    ``HookContainer`` saves and loads it like a model (``run_state_<epoch>.pth``).

    :meth:`capture` takes a snapshot of the random states (saved by ``state_dict``); :meth:`restore` brings it back.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.snapshot = None

    def capture(self):
        np_state = np.random.get_state()
        py_state = random.getstate()
        self.snapshot = {
            "python": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *[float(x) for x in np_state[2:]]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def restore(self):
        s = self.snapshot
        random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
        name, keys, pos, has_gauss, cached = s["numpy"]
        np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
        torch.set_rng_state(s["torch"].cpu())
        if s["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in s["cuda"]])

    def state_dict(self):
        if self.snapshot is None:
            self.capture()
        sampler = self.trainer.sampler
        return {
            "rng": self.snapshot,
            "sampler_labels": [int(x) for x in getattr(sampler, "labels", [])],
            "grad_scaler": self.trainer.grad_scaler.state_dict(),
        }

    def load_state_dict(self, state):
        self.snapshot = state["rng"]
        self.restore()
        if state["sampler_labels"]:
            self.trainer.sampler.labels = list(state["sampler_labels"])
        if state["grad_scaler"]:
            self.trainer.grad_scaler.load_state_dict(state["grad_scaler"])


class CheckpointHooks(HookContainer):
    """pml's ``HookContainer`` (record-keeper logging, evaluation, best-model saving) with two additions for exact
    resumes: a checkpoint at the end of *every* epoch, not only on test epochs (previous epoch's files are removed),
    including the trainer's :class:`RunState` (``trainer.run_state = {"run_state": RunState(trainer)}``); and
    evaluation that leaves the random state as it found it, so how often you evaluate never changes training.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.saveable_trainer_objects = self.saveable_trainer_objects + ["run_state"]

    def end_of_epoch_hook(
        self,
        tester,
        dataset_dict,
        model_folder,
        test_interval=1,
        patience=None,
        splits_to_eval=None,
        test_collate_fn=None,
        after_epoch=None,
    ):
        """pml's end-of-epoch hook plus the above; ``after_epoch(trainer)`` runs after evaluation and saving."""
        pml_hook = super().end_of_epoch_hook(
            tester, dataset_dict, model_folder, test_interval, patience, splits_to_eval, test_collate_fn
        )

        def hook(trainer):
            run_state = trainer.run_state["run_state"]
            run_state.capture()
            keep_going = pml_hook(trainer)
            if trainer.epoch % test_interval != 0:
                self.save_models(trainer, model_folder, trainer.epoch)
            for obj_dict in [getattr(trainer, x, {}) for x in self.saveable_trainer_objects]:
                c_f.delete_dict_of_models(obj_dict, trainer.epoch - 1, model_folder)
            if after_epoch is not None:
                after_epoch(trainer)
            run_state.restore()
            return keep_going

        return hook
