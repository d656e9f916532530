"""`PretrainingTrainer`: `transformers.Trainer` with thin, pretraining-specific overrides.

What it adds, each in one override that calls `super()`:
- the objective of the current global step (`ObjectivePlan`): the batch view, the attention (causal or
  bidirectional) and the metrics follow it, so a CLM→MLM switch lands on an exact step, also after a resume;
- the Warmup-Stable-Decay schedule (or a cooldown branch) whose phase boundaries, like the objective plan, are
  stored in every checkpoint and win over the arguments on resume;
- per-objective metrics (perplexity for causal LM, accuracy for masked LM), tokens/s per logging interval and MFU;
- atomic checkpoints: `checkpoint-N` appears only once every rank's files are written and synced, and a run starts
  by setting half-written ones aside (hf_pretrain.training.checkpoints).
Tokens seen (non-padding) are counted by the Trainer itself (`include_num_input_tokens_seen`).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from transformers import Trainer

from hf_pretrain.collators import IGNORE_INDEX
from hf_pretrain.modeling_masked_llama import masked_lm_accuracy
from hf_pretrain.objective_views import select_view
from hf_pretrain.objectives import ObjectivePlan, Phase
from hf_pretrain.resolve import run_plan
from hf_pretrain.schedules import ScheduleStateCallback, WSDSchedule
from hf_pretrain.training.attention import mask_collator, probe_attention, set_direction
from hf_pretrain.training.callbacks.objective_switch import ObjectiveSwitchCallback
from hf_pretrain.training.checkpoints import atomic_save, set_aside_incomplete
from hf_pretrain.training.document_mask import isolate_for_model, supports_document_mask
from hf_pretrain.training.throughput import (
    ThroughputMeter,
    attention_context,
    model_flops_per_token,
    peak_flops_per_device,
    training_precision,
)

logger = logging.getLogger(__name__)

_MAX_LOG_LOSS = 80.0  # exp(80) ~ 5e34: an untrained-model perplexity stays finite in JSON logs


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Summed cross-entropy at the labelled positions over `num_items_in_batch` (else their count).

    `logits` are dense (B, T, V) for `labels` (B, T), or sparse (M, V) for the M labelled positions in row-major
    order (the masked decoders' and ModernBERT's `sparse_prediction`).
    """
    mask = labels != IGNORE_INDEX  # (B, T)
    targets = labels[mask]  # (M,)
    flat = logits[mask.to(logits.device)] if logits.shape[:-1] == labels.shape else logits  # (M, V)
    if flat.shape[0] != targets.numel():
        raise ValueError(
            f"logits {tuple(logits.shape)} match neither labels {tuple(labels.shape)} nor their M labels."
        )
    total = F.cross_entropy(flat.float(), targets.to(flat.device), reduction="sum")
    if num_items_in_batch is None:
        return total / mask.sum().clamp(min=1).to(total.device)
    return total / (num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch)


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy), capped so a diverged loss still logs a finite number."""
    return math.exp(min(loss, _MAX_LOG_LOSS))


class PretrainingTrainer(Trainer):
    """A `Trainer` for pretraining with `PretrainingArguments`. See the module docstring for what it adds.

    The objective, hence the batch view, the attention and the metric, follows the global step: here a CLM→MLM run
    of 20 steps that switches half way.

    >>> import contextlib, io, tempfile
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from hf_pretrain import PretrainingArguments, PretrainingTrainer
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                                      num_attention_heads=2, num_key_value_heads=1))
    >>> args = PretrainingArguments(output_dir=tempfile.mkdtemp(), objective="clm_then_mlm", max_steps=20,
    ...                             switch_fraction=0.5, eval_strategy="no", use_cpu=True)
    >>> with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed, when installed, may print a notice on CPU
    ...     trainer = PretrainingTrainer(model=model, args=args)
    >>> def objective_at(step):
    ...     trainer.state.global_step = step
    ...     phase = trainer.current_objective()
    ...     return phase.name, phase.attention, phase.metric
    >>> objective_at(0), objective_at(9)
    (('clm_unshifted', 'causal', 'perplexity'), ('clm_unshifted', 'causal', 'perplexity'))
    >>> objective_at(10), objective_at(19)
    (('mlm', 'bidirectional', 'mlm_accuracy'), ('mlm', 'bidirectional', 'mlm_accuracy'))
    """

    def __init__(
        self,
        *args,
        sequence_length: int | None = None,
        plan: ObjectivePlan | None = None,
        schedule: WSDSchedule | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.sequence_length = sequence_length
        # The recipe hands over the plan and schedule its resolve step decided; used as a library, the trainer
        # derives them from its arguments when it knows the run's length (create_scheduler).
        self.plan: ObjectivePlan | None = plan
        self.schedule: WSDSchedule | None = schedule
        self._resolved = plan is not None
        self._resume_from: str | None = None
        self._attention: str | None = None  # the attention the model was last set to and probed in
        self._documents_probed: str | None = None  # the attention document isolation was last probed in
        self._owns_scheduler = False
        # [correct, predicted] masked-LM token counts since the last log, per mode (train / eval), on device.
        self._mlm_counts = {True: torch.zeros(2, dtype=torch.long), False: torch.zeros(2, dtype=torch.long)}
        self._throughput: ThroughputMeter | None = None
        self.add_callback(ObjectiveSwitchCallback(plan.to_dict()["phases"] if plan is not None else None))
        self.add_callback(ScheduleStateCallback(schedule))

    def _callback(self, cls):
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, cls))

    def _get_train_sampler(self, train_dataset=None):
        # A `BlockOrderDataset` is read by global block index (epoch and position): see data/block_order.py.
        from hf_pretrain.data.block_order import block_order_sampler

        dataset = self.train_dataset if train_dataset is None else train_dataset
        return block_order_sampler(super()._get_train_sampler(train_dataset), dataset, self.args)

    # ---- the run's plan and schedule ----------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, **kwargs):
        if isinstance(resume_from_checkpoint, str):
            self._resume_from = resume_from_checkpoint  # its stored phases and schedule win over the arguments
        if self._owns_scheduler:  # a second train() builds a fresh scheduler for its fresh optimizer
            self.lr_scheduler, self._owns_scheduler = None, False
        if self.args.should_save:  # a killed run's half-written checkpoints go to incomplete_checkpoints/
            set_aside_incomplete(self.args.output_dir, keep=self._resume_from)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _run_epoch(self, *args, **kwargs):
        # Resumed from the run's last checkpoint (killed in its final save or evaluation): the Trainer's loop looks
        # for the end only after a step, so it would train one step past max_steps. Nothing is left to train.
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    # ---- atomic checkpoints ----------------------------------------------------------------------------------------

    _checkpoint_run_dir: str | None = None  # the staging folder while atomic_save runs

    def _get_output_dir(self, trial) -> str:
        return self._checkpoint_run_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        # Written into output_dir/.saving-checkpoint-N/, renamed to checkpoint-N once every rank's files are synced.
        with atomic_save(self, super()._get_output_dir(trial)):
            super()._save_checkpoint(model, trial)

    def _check_resolved_length(self, num_training_steps: int) -> None:
        """A probe of the resolve step: the Trainer's own step count is the one the schedule was resolved for (a
        resumed run keeps its checkpoint's schedule even when max_steps grew; later steps stay at min_lr_ratio)."""
        if self.schedule is not None and self._resume_from is None and self.schedule.total_steps != num_training_steps:
            raise RuntimeError(
                f"The resolved schedule covers {self.schedule.total_steps} steps but the Trainer plans "
                f"{num_training_steps}: the run's length changed after it was resolved."
            )

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if not self._resolved:
            self.plan, schedule = run_plan(self.args, num_training_steps, self._resume_from)
            self.schedule = self.schedule or schedule
            self._callback(ObjectiveSwitchCallback).phases = self.plan.to_dict()["phases"]
            self._callback(ScheduleStateCallback).schedule = self.schedule
        else:
            self._check_resolved_length(num_training_steps)
        if self.schedule is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        # Not super(): transformers' create_scheduler reads warmup and the WSD phases from self.args, and a resolved
        # run never writes them back into its arguments (they may come from the checkpoint being resumed, and
        # fractions were resolved against the run's length). The scheduler itself is transformers' own
        # get_wsd_schedule (WSDSchedule.build), with the phases given as step counts.
        self.lr_scheduler = self.schedule.build(optimizer or self.optimizer)
        self._owns_scheduler = True
        logger.info("Schedule: %s; objectives: %s", self.schedule, self.plan.phases)
        return self.lr_scheduler

    # ---- the objective of the step -------------------------------------------------------------------------------

    def current_objective(self) -> Phase:
        if self.plan is None:  # evaluate() before train(): the plan's first phase
            self.plan = ObjectivePlan.for_run(
                self.args.objective, max(self.args.max_steps, 1), self.args.switch_fraction
            )
        return self.plan.at(self.state.global_step)

    def _mask_implementation(self) -> str | None:
        """The attention implementation the prefix masks are built for (what the probes must check): the collator's
        `attn_implementation` when it builds them in the DataLoader workers, the model's own when it sends
        `document_ids` + `prefix_mask` and the mask is built here on the device (`attention_on_device`)."""
        collator = mask_collator(self.data_collator)
        if collator is None:
            return None
        if getattr(collator, "attention_on_device", False):
            config = self.accelerator.unwrap_model(self.model).config
            config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
            return getattr(config, "_attn_implementation", None) or collator.attn_implementation
        return collator.attn_implementation

    def _prepare_objective(self, inputs: dict) -> dict:
        phase = self.current_objective()
        view = select_view(inputs, phase)
        if phase.attention != self._attention:  # the first step, and every switch: set, then measure
            model = self.accelerator.unwrap_model(self.model)
            set_direction(model, phase.attention)
            # The form the run feeds the model: the worker's 4D mask, or the one built on the device at the step
            on_device = "document_ids" in view or bool(
                getattr(mask_collator(self.data_collator), "attention_on_device", False)
            )
            measured = probe_attention(model, phase.attention, self._mask_implementation(), on_device=on_device)
            logger.info(
                "Step %d: %s attention (%s), probe %s", self.state.global_step, phase.attention, phase.name, measured
            )
            self._attention = phase.attention
        return view

    def _prepare_inputs(self, inputs):
        # On the device: a batch whose features carried `document_lengths` has `document_ids` (B, T); its attention
        # stays inside each document through a (B, 1, T, T) mask built here, never in the DataLoader workers.
        inputs = super()._prepare_inputs(inputs)
        if "document_ids" not in inputs:
            return inputs
        phase = self.current_objective()
        model = self.accelerator.unwrap_model(self.model)
        # Only a bidirectional phase attends both ways; "prefix" and "encoder_decoder" on a decoder (decoder-only
        # prefix LM, span corruption, UL2) are causal plus the batch's prefix_mask (B, T), bidirectional there.
        causal = phase.attention != "bidirectional"
        prefix = "prefix_mask" in inputs
        if self._documents_probed != phase.attention:  # measured once per attention, like the direction itself
            supported = supports_document_mask(model, causal=causal, prefix=prefix)  # the mask this run builds
            if supported is not True:
                raise RuntimeError(f"Documents cannot be kept apart in {type(model).__name__}: {supported}")
            self._documents_probed = phase.attention
        return isolate_for_model(inputs, model, causal=causal)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Select each batch's view before the Trainer counts its labels for loss normalisation.
        prepared = (self._prepare_objective(batch) for batch in epoch_iterator)
        return super().get_batch_samples(prepared, num_batches, device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = self._prepare_objective(inputs)  # evaluation batches come here directly
        phase = self.current_objective()
        if not phase.unshifted_labels or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        if phase.metric != "mlm_accuracy":
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss
        # Masked LM: one normalisation for every family's head. BERT, RoBERTa, DistilBERT and DeBERTa-v2 return a
        # local mean that ignores num_items_in_batch although their forward takes **kwargs, so the Trainer would
        # neither divide it by the accumulation steps nor weight micro-batches by their masked-token counts.
        outputs = model(**inputs)
        loss = masked_cross_entropy(outputs.logits, labels, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None and self.model.training:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as super().compute_loss does
        self._count_mlm_accuracy(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The Trainer decides whether a batch has labels before compute_loss runs: select the view first.
        return super().prediction_step(model, self._prepare_objective(inputs), prediction_loss_only, ignore_keys)

    def _count_mlm_accuracy(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        correct, total = masked_lm_accuracy(logits, labels)  # sparse (M, V) or dense (B, T, V) logits
        counts = self._mlm_counts[self.model.training]
        if counts.device != correct.device:
            counts = self._mlm_counts[self.model.training] = counts.to(correct.device)
        counts += torch.stack([correct, total.to(correct.device)])

    # ---- metrics in the logs ---------------------------------------------------------------------------------------

    def _pop_mlm_accuracy(self, training: bool) -> float | None:
        counts = self.accelerator.reduce(self._mlm_counts[training].clone(), reduction="sum")
        self._mlm_counts[training].zero_()
        correct, total = counts.tolist()
        return correct / total if total else None

    def _throughput_metrics(self) -> dict[str, float]:
        model = self.accelerator.unwrap_model(self.model)
        if self._throughput is None:  # fp32 and unknown GPUs: no peak, no MFU (throughput.peak_flops_per_device)
            peak = self.args.peak_flops_per_device or peak_flops_per_device(precision=training_precision(self.args))
            length = self.sequence_length or getattr(model.config, "max_position_embeddings", 512)
            # Isolated documents (the collator wrapper passes document_lengths on) attend over their document only.
            isolated = self.train_dataset if getattr(self.data_collator, "documents", False) else None
            context = attention_context(length, isolated)
            self._throughput = ThroughputMeter(None, peak * self.args.world_size if peak else None, context)
        # The phase decides the head's FLOPs: a sparse masked-LM head runs on the masked positions only.
        masked = None
        if self.current_objective().metric == "mlm_accuracy":
            masked = getattr(self.data_collator, "mlm_probability", None) or self.args.mlm_probability
        self._throughput.flops_per_token = model_flops_per_token(model, self._throughput.context, masked)
        return self._throughput.update(self.state.num_input_tokens_seen)  # {} at the first log: it starts there

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A training log at global step s averages steps up to s - 1; evaluation runs the objective of step s.
        step = self.state.global_step - 1 if "loss" in logs else self.state.global_step
        phase = self.plan.at(max(step, 0)) if self.plan is not None else self.current_objective()
        for key in [k for k in logs if k == "loss" or (k.endswith("_loss") and not k.startswith("train"))]:
            prefix = key.removesuffix("loss")  # "" for training, "eval_" for evaluation
            if phase.metric == "perplexity":
                logs[f"{prefix}perplexity"] = perplexity(logs[key])
            accuracy = self._pop_mlm_accuracy(training=not prefix)
            if accuracy is not None:
                logs[f"{prefix}mlm_accuracy"] = accuracy
        if "loss" in logs and self.args.include_num_input_tokens_seen != "no":
            logs.update(self._throughput_metrics())
        super().log(logs, start_time)
