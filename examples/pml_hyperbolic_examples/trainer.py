"""pml's ``MetricLossOnly`` with what the published recipes add (mixed precision, gradient clipping after
unscaling), batches from the runner's input pipeline without host syncs, epoch schedules with a frozen-backbone
warm-up, and checkpoints that resume a run exactly."""

import math
import os
import random

import numpy as np
import torch
import tqdm
from pytorch_metric_learning.trainers import MetricLossOnly
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.logging_presets import HookContainer


class RecipeTrainer(MetricLossOnly):
    """``trainers.MetricLossOnly`` with mixed precision and a sync-free step.

    With ``amp_dtype`` (``torch.float16`` or ``torch.bfloat16``) the trunk and the embedder run under
    ``torch.autocast``; the loss always runs in float32 on float32 embeddings (so loss parameters such as proxies stay
    float32). float16 uses a ``torch.amp.GradScaler``, and gradients are unscaled before pml's
    ``gradient_clippers`` run.

    ``batches`` (a callable returning an iterable of ``(data, labels)`` already on the device, labels already
    ranked, e.g. :meth:`.pipeline.Pipeline.train_batches`) replaces pml's DataLoader; then nothing in the step reads a
    device value on the host: labels are not mapped through NumPy, and the progress bar shows the loss only every
    ``progress_every`` iterations. Everything else is pml's trainer.
    """

    def __init__(self, *args, amp_dtype=None, batches=None, progress_every=50, **kwargs):
        self.amp_dtype, self.batches, self.progress_every = amp_dtype, batches, progress_every
        super().__init__(*args, **kwargs)
        self.grad_scaler = torch.amp.GradScaler(self.data_device.type, enabled=amp_dtype == torch.float16)

    def train(self, start_epoch=1, num_epochs=1):
        """pml's loop, formatting the loss for the progress bar only every ``progress_every`` iterations."""
        self.initialize_dataloader()
        for self.epoch in range(start_epoch, num_epochs + 1):
            self.set_to_train()
            c_f.LOGGER.info("TRAINING EPOCH %d" % self.epoch)
            pbar = tqdm.tqdm(range(self.iterations_per_epoch))
            for self.iteration in pbar:
                self.forward_and_backward()
                self.end_of_iteration_hook(self)
                if self.iteration % self.progress_every == 0:
                    pbar.set_description("total_loss=%.5f" % self.losses["total_loss"])
                self.step_lr_schedulers(end_of_epoch=False)
            self.step_lr_schedulers(end_of_epoch=True)
            self.zero_losses()
            if self.end_of_epoch_hook(self) is False:
                break

    def initialize_dataloader(self):
        if self.batches is None:
            return super().initialize_dataloader()
        self.dataloader = self.batches()
        if not self.iterations_per_epoch:
            self.iterations_per_epoch = len(self.dataloader)
        self.dataloader_iter = iter(self.dataloader)

    def get_batch(self):
        if self.batches is None:
            return super().get_batch()
        self.dataloader_iter, (data, labels) = c_f.try_next_on_generator(self.dataloader_iter, self.dataloader)
        return self.maybe_do_batch_mining(data, labels)

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
    """pml's ``HookContainer`` (record-keeper logging, evaluation, model saving), changed in five ways:

    - a checkpoint at the end of *every* epoch, not only on test epochs (the previous epoch's files are removed),
      including the trainer's :class:`RunState` (``trainer.run_state = {"run_state": RunState(trainer)}``), and
      evaluation that leaves the random state as it found it: exact resumes, whatever the evaluation interval;
    - the last epoch is always evaluated;
    - "best" models and best-so-far accuracies exist only for ``validation_split_name`` (a split of held-out
      training classes); with ``validation_split_name=None`` nothing is selected on the test set;
    - ``sub_losses`` (a :class:`~.records.SubLosses`) adds each sub-loss's value to ``loss_histories`` every
      ``log_freq`` iterations, next to pml's ``metric_loss`` and ``total_loss``.
    """

    def __init__(self, record_keeper, sub_losses=None, **kwargs):
        super().__init__(record_keeper, **kwargs)
        self.sub_losses = sub_losses
        self.saveable_trainer_objects = self.saveable_trainer_objects + ["run_state"]

    def end_of_iteration_hook(self, trainer):
        super().end_of_iteration_hook(trainer)
        if self.sub_losses is not None and trainer.iteration % self.log_freq == 0:
            self.record_keeper.update_records(
                self.sub_losses.scalars(), trainer.get_global_iteration(), parent_name="loss_histories"
            )

    def end_of_testing_hook(self, tester):
        for split_name, accuracies in tester.all_accuracies.items():
            epoch, group = accuracies["epoch"], self.record_group_name(tester, split_name)
            self.record_keeper.update_records(accuracies, epoch, parent_name=group)
            if split_name == self.validation_split_name:
                _, _, best_epoch, best_accuracy = self.is_new_best_accuracy(tester, split_name, epoch)
                best = {"best_epoch": best_epoch, "best_accuracy": best_accuracy}
                self.record_keeper.update_records(best, epoch, parent_name=group)

    def save_models_and_eval(
        self, trainer, dataset_dict, model_folder, test_interval, tester, splits_to_eval=None, collate_fn=None
    ):
        if self.validation_split_name is not None:
            return super().save_models_and_eval(
                trainer, dataset_dict, model_folder, test_interval, tester, splits_to_eval, collate_fn
            )
        trunk, embedder = trainer.models["trunk"], trainer.models["embedder"]
        tester.test(dataset_dict, trainer.epoch, trunk, embedder, splits_to_eval, collate_fn)
        self.record_keeper.save_records()
        self.save_models(trainer, model_folder, trainer.epoch)
        return None

    def end_of_epoch_hook(
        self, tester, dataset_dict, model_folder, epochs, test_interval=1, patience=None, splits_to_eval=None,
        after_epoch=None,
    ):  # fmt: skip
        """Evaluate every ``test_interval`` epochs and at epoch ``epochs``, save, stop after ``patience``
        evaluations without a better validation metric; ``after_epoch(trainer)`` runs after evaluation and saving."""
        if self.primary_metric not in tester.accuracy_calculator.get_curr_metrics():
            raise ValueError(f"primary_metric must be one of {tester.accuracy_calculator.get_curr_metrics()}.")
        os.makedirs(model_folder, exist_ok=True)

        def hook(trainer):
            run_state = trainer.run_state["run_state"]
            run_state.capture()
            keep_going = True
            if trainer.epoch % test_interval == 0 or trainer.epoch == epochs:
                best_epoch = self.save_models_and_eval(
                    trainer, dataset_dict, model_folder, test_interval, tester, splits_to_eval
                )
                if patience is not None:
                    keep_going = self.patience_remaining(trainer.epoch, best_epoch, patience)
            else:
                self.save_models(trainer, model_folder, trainer.epoch)
            for obj_dict in [getattr(trainer, x, {}) for x in self.saveable_trainer_objects]:
                c_f.delete_dict_of_models(obj_dict, trainer.epoch - 1, model_folder)
            if after_epoch is not None:
                after_epoch(trainer)
            run_state.restore()
            return keep_going

        return hook
