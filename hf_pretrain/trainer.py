"""`PretrainingTrainer`: `transformers.Trainer` with thin, pretraining-specific overrides.

What it adds, each in one override that calls `super()`:
- the objective of the current global step (`ObjectivePlan`): the batch view, the attention (causal or
  bidirectional) and the metrics follow it, so a CLM→MLM switch lands on an exact step, also after a resume;
- the Warmup-Stable-Decay schedule (or a cooldown branch) whose phase boundaries, like the objective plan, are
  stored in every checkpoint and win over the arguments on resume;
- per-objective metrics (perplexity for causal LM, accuracy for masked LM), tokens/s per logging interval and MFU.
Tokens seen (non-padding) are counted by the Trainer itself (`include_num_input_tokens_seen`).
"""

from __future__ import annotations

import logging
import math

import torch
from transformers import Trainer

from hf_pretrain.callbacks.objective_switch import ObjectiveSwitchCallback, phases_from_checkpoint
from hf_pretrain.modeling_masked_llama import set_bidirectional
from hf_pretrain.objectives import ObjectivePlan, select_view
from hf_pretrain.schedules import (
    ScheduleStateCallback,
    WSDSchedule,
    resolve_steps,
    schedule_from_checkpoint,
    wsd_schedule,
)
from hf_pretrain.throughput import ThroughputMeter, flop_counted_parameters, flops_per_token, peak_flops_per_device

logger = logging.getLogger(__name__)

_MAX_LOG_LOSS = 80.0  # exp(80) ~ 5e34: an untrained-model perplexity stays finite in JSON logs


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy), capped so a diverged loss still logs a finite number."""
    return math.exp(min(loss, _MAX_LOG_LOSS))


class PretrainingTrainer(Trainer):
    """A `Trainer` for pretraining with `PretrainingArguments`. See the module docstring for what it adds.

    >>> from hf_pretrain import PretrainingTrainer
    >>> PretrainingTrainer.__mro__[1].__name__
    'Trainer'
    """

    def __init__(self, *args, sequence_length: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sequence_length = sequence_length
        self.plan: ObjectivePlan | None = None
        self.schedule: WSDSchedule | None = None
        self._resumed_phases: list | None = None
        self._resumed_schedule: WSDSchedule | None = None
        self._bidirectional: bool | None = None
        # [correct, predicted] masked-LM token counts since the last log, per mode (train / eval), on device.
        self._mlm_counts = {True: torch.zeros(2, dtype=torch.long), False: torch.zeros(2, dtype=torch.long)}
        self._throughput: ThroughputMeter | None = None
        self.add_callback(ObjectiveSwitchCallback())
        self.add_callback(ScheduleStateCallback(None))

    def _callback(self, cls):
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, cls))

    # ---- the run's plan and schedule ----------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, **kwargs):
        if isinstance(resume_from_checkpoint, str):
            # Phase boundaries come from the checkpoint, so changed arguments cannot move a switch or the decay.
            self._resumed_phases = phases_from_checkpoint(resume_from_checkpoint)
            self._resumed_schedule = schedule_from_checkpoint(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _resolve_plan(self, total_steps: int) -> ObjectivePlan:
        planned = ObjectivePlan.for_run(self.args.objective, total_steps, self.args.switch_fraction)
        if self._resumed_phases:
            resumed = ObjectivePlan.from_dict({"phases": self._resumed_phases})
            if resumed != planned:
                logger.warning(
                    "Resuming with the checkpoint's objective plan %s (arguments say %s).", resumed, planned
                )
            return resumed
        return planned

    def _resolve_schedule(self, total_steps: int) -> WSDSchedule:
        args = self.args
        if args.cooldown_from:
            # A cooldown branch: no stable phase; an optional short warmup (its optimizer state is fresh), then decay.
            warmup = resolve_steps(args.warmup_steps, total_steps, "warmup_steps")
            planned = WSDSchedule(warmup, 0, total_steps - warmup, args.decay_type, min_lr_ratio=args.min_lr_ratio)
        else:
            planned = wsd_schedule(
                total_steps,
                args.warmup_steps,
                args.decay_steps,
                decay_type=args.decay_type,
                min_lr_ratio=args.min_lr_ratio,
            )
        if self._resumed_schedule is not None:
            if self._resumed_schedule != planned:
                logger.warning(
                    "Resuming with the checkpoint's schedule %s (arguments say %s).", self._resumed_schedule, planned
                )
            return self._resumed_schedule
        return planned

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        self.plan = self._resolve_plan(num_training_steps)
        self._callback(ObjectiveSwitchCallback).phases = self.plan.to_dict()["phases"]
        if self.args.lr_scheduler_type != "warmup_stable_decay" or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.schedule = self._resolve_schedule(num_training_steps)
        self._callback(ScheduleStateCallback).schedule = self.schedule
        self.lr_scheduler = self.schedule.build(optimizer or self.optimizer)
        self._created_lr_scheduler = True
        logger.info("Schedule: %s; objectives: %s", self.schedule, self.plan.phases)
        return self.lr_scheduler

    # ---- the objective of the step -------------------------------------------------------------------------------

    def current_objective(self):
        if self.plan is None:  # evaluate() before train(): the plan's first objective
            self.plan = ObjectivePlan.for_run(
                self.args.objective, max(self.args.max_steps, 1), self.args.switch_fraction
            )
        return self.plan.at(self.state.global_step)

    def _prepare_objective(self, inputs: dict) -> dict:
        objective = self.current_objective()
        if objective.masked_decoder:
            bidirectional = objective.attention == "bidirectional"
            if bidirectional != self._bidirectional:
                set_bidirectional(self.accelerator.unwrap_model(self.model), bidirectional)
                self._bidirectional = bidirectional
        return select_view(inputs, objective)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Select each batch's view before the Trainer counts its labels for loss normalisation.
        prepared = (self._prepare_objective(batch) for batch in epoch_iterator)
        return super().get_batch_samples(prepared, num_batches, device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = self._prepare_objective(inputs)  # evaluation batches come here directly
        objective = self.current_objective()
        if not objective.unshifted_labels or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if objective.name == "mlm":
            self._count_mlm_accuracy(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The Trainer decides whether a batch has labels before compute_loss runs: select the view first.
        return super().prediction_step(model, self._prepare_objective(inputs), prediction_loss_only, ignore_keys)

    @torch.no_grad()
    def _count_mlm_accuracy(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        targets = labels[labels != -100]  # (M,)
        predictions = logits.argmax(-1)
        if predictions.shape != targets.shape:  # dense logits (B, T, V): keep the labelled positions
            predictions = predictions[labels != -100]
        counts = self._mlm_counts[self.model.training]
        if counts.device != targets.device:
            counts = self._mlm_counts[self.model.training] = counts.to(targets.device)
        counts += torch.stack([(predictions == targets).sum(), targets.new_tensor(targets.numel())])

    # ---- metrics in the logs ---------------------------------------------------------------------------------------

    def _pop_mlm_accuracy(self, training: bool) -> float | None:
        counts = self.accelerator.reduce(self._mlm_counts[training].clone(), reduction="sum")
        self._mlm_counts[training].zero_()
        correct, total = counts.tolist()
        return correct / total if total else None

    def _throughput_metrics(self) -> dict[str, float]:
        if self._throughput is None:
            model = self.accelerator.unwrap_model(self.model)
            peak = self.args.peak_flops_per_device or peak_flops_per_device()
            length = self.sequence_length or getattr(model.config, "max_position_embeddings", 512)
            per_token = flops_per_token(model.config, flop_counted_parameters(model), length)
            self._throughput = ThroughputMeter(per_token, peak * self.args.world_size if peak else None)
        return self._throughput.update(self.state.num_input_tokens_seen)  # {} at the first log: it starts there

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A training log at global step s averages steps up to s - 1; evaluation runs the objective of step s.
        step = self.state.global_step - 1 if "loss" in logs else self.state.global_step
        objective = self.plan.at(max(step, 0)) if self.plan is not None else self.current_objective()
        causal = objective.attention in ("causal", "prefix", "encoder_decoder")
        for key in [k for k in logs if k == "loss" or (k.endswith("_loss") and not k.startswith("train"))]:
            prefix = key.removesuffix("loss")  # "" for training, "eval_" for evaluation
            if causal:
                logs[f"{prefix}perplexity"] = perplexity(logs[key])
            accuracy = self._pop_mlm_accuracy(training=not prefix)
            if accuracy is not None:
                logs[f"{prefix}mlm_accuracy"] = accuracy
        if "loss" in logs and self.args.include_num_input_tokens_seen != "no":
            logs.update(self._throughput_metrics())
        super().log(logs, start_time)
