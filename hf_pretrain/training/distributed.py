"""The launch setup: the global batch a paper quotes, the DeepSpeed / Accelerate checks that must fail before
training instead of silently changing it, and the same initial weights for a seed on every backend."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import contextmanager

import torch
from transformers.integrations import deepspeed as hf_deepspeed
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

logger = logging.getLogger(__name__)


def load_deepspeed_config(config: str | Mapping | None) -> dict | None:
    if config is None or isinstance(config, Mapping):
        return dict(config) if config is not None else None
    if not os.path.isfile(config):
        raise ValueError(f"deepspeed: no such config file {config!r}.")
    with open(config) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"deepspeed: {config!r} is not valid JSON: {error}") from None


def check_deepspeed_config(config: str | Mapping | None) -> None:
    """A DeepSpeed `scheduler` block silently replaces the Trainer's schedule (our WSD), and an `optimizer` block
    its optimizer; both make a run differ from its config without a word, so both are errors. ZeRO-3 must gather
    its sharded weights at save, or no checkpoint loads with `from_pretrained`."""
    loaded = load_deepspeed_config(config)
    if not loaded:
        return
    zero = loaded.get("zero_optimization", {})
    if zero.get("stage") == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") not in (True, "true", "auto"):
        raise ValueError(
            "The DeepSpeed config uses ZeRO-3 without zero_optimization.stage3_gather_16bit_weights_on_model_save: "
            "true, so saved models would hold only shards that from_pretrained cannot load. Set it to true."
        )
    for block, owner in (("scheduler", "WSD schedule (decay_steps, decay_type, ...)"), ("optimizer", "optim")):
        if block in loaded:
            raise ValueError(
                f"The DeepSpeed config has a {block!r} block, which would silently replace the Trainer's {owner}. "
                f"Remove the block; the Trainer passes its own {block} to DeepSpeed ('auto' values come from "
                "the training arguments)."
            )


def resolve_global_batch(
    world_size: int, per_device: int, sequence_length: int, tokens: int | None = None, sequences: int | None = None
) -> int:
    """Gradient accumulation steps that make the global batch exactly `tokens` (or `sequences`) per optimizer step.

    global batch (sequences) = world_size x per_device x accumulation; in tokens, x sequence_length. A target that
    no whole accumulation reaches is an error naming the nearest reachable batches, never a silent rounding.

    >>> resolve_global_batch(world_size=64, per_device=8, sequence_length=4096, tokens=4 * 2**20)
    2
    """
    if (tokens is None) == (sequences is None):
        raise ValueError("Give the global batch as global_batch_tokens or global_batch_size (sequences), not both.")
    per_step = world_size * per_device * (sequence_length if tokens is not None else 1)
    target, name = (tokens, "global_batch_tokens") if tokens is not None else (sequences, "global_batch_size")
    if target <= 0:
        raise ValueError(f"{name} must be positive, got {target}.")
    accumulation, remainder = divmod(target, per_step)
    if remainder or accumulation == 0:
        lower, upper = max(accumulation, 1) * per_step, (accumulation + 1) * per_step
        raise ValueError(
            f"{name}={target} is not reachable: world_size {world_size} x per_device_train_batch_size {per_device}"
            + (f" x block_size {sequence_length}" if tokens is not None else "")
            + f" = {per_step} per micro-step, so the global batch is a multiple of {per_step} (e.g. {lower} or "
            f"{upper}); change {name}, per_device_train_batch_size or the number of processes."
        )
    return accumulation


def describe_batch(world_size: int, per_device: int, accumulation: int, sequence_length: int) -> str:
    sequences = world_size * per_device * accumulation
    return (
        f"world_size={world_size}, per_device_train_batch_size={per_device}, gradient_accumulation_steps="
        f"{accumulation}: global batch {sequences} sequences = {sequences * sequence_length:,} tokens per step"
    )


ACCELERATE_TYPES = ("NO", "MULTI_CPU", "MULTI_GPU", "DEEPSPEED", "FSDP", "MULTI_XPU", "MULTI_NPU", "XLA")


def check_accelerate_config(path: str) -> dict:
    """Check an `accelerate launch --config_file` YAML before launching; returns the parsed config.

    Errors: an unknown distributed_type, a process count that does not split evenly over its machines
    (num_processes is the TOTAL over all machines), several machines without a head address, MULTI_CPU with
    several processes (it starts only one), FSDP with use_cpu (one process, no FSDP), and a DeepSpeed JSON that
    fails `check_deepspeed_config`.
    """
    import yaml

    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    kind = str(config.get("distributed_type", "NO"))
    if kind not in ACCELERATE_TYPES:
        raise ValueError(f"{path}: distributed_type {kind!r} is unknown; expected one of {ACCELERATE_TYPES}.")
    machines, processes = int(config.get("num_machines", 1)), int(config.get("num_processes", 1))
    if machines < 1 or processes < machines or processes % machines:
        raise ValueError(
            f"{path}: num_processes={processes} does not split evenly over num_machines={machines}; num_processes "
            "is the total over all machines (machines x processes per machine)."
        )
    if machines > 1 and not config.get("main_process_ip"):
        raise ValueError(f"{path}: {machines} machines need main_process_ip (the address of machine_rank 0).")
    if kind == "MULTI_CPU" and processes > 1:
        raise ValueError(
            f"{path}: distributed_type MULTI_CPU starts a single process under `accelerate launch`; for "
            "data-parallel CPU processes use distributed_type: MULTI_GPU with use_cpu: true."
        )
    if kind == "FSDP" and str(config.get("use_cpu", False)).lower() == "true":
        raise ValueError(
            f"{path}: distributed_type FSDP with use_cpu: true starts one process without FSDP (Accelerate runs "
            "FSDP on GPUs only); remove use_cpu, or use configs/accelerate/cpu_2proc.yaml for CPU processes."
        )
    if kind == "DEEPSPEED":
        ds_file = (config.get("deepspeed_config") or {}).get("deepspeed_config_file")
        if not ds_file:
            raise ValueError(
                f"{path}: DEEPSPEED needs deepspeed_config.deepspeed_config_file (see configs/deepspeed/)."
            )
        check_deepspeed_config(ds_file)
    return config


# ---- the same start on every backend ----------------------------------------------------------------------------


@contextmanager
def outside_zero3():
    """Build a model whole: while a ZeRO-3 DeepSpeed config is registered, transformers builds every model
    partitioned across the processes (zero.Init). transformers holds that config only as a module-level weak
    reference (set by TrainingArguments or accelerate's DeepSpeed plugin): cleared inside, then put back."""
    if not is_deepspeed_zero3_enabled():
        yield
        return
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = reference


def same_start_on_every_backend(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`build()` (a fresh model from the global RNG), with the same initial weights under DDP, ZeRO-2, ZeRO-3 (with
    or without zero3_init_flag) and FSDP for the same seed.

    DDP, ZeRO-2 and FSDP build the model whole on every process from the seeded RNG (FSDP then shards rank 0's
    copy), so they agree. Under ZeRO-3 transformers builds it partitioned (zero.Init: torch's own init skipped,
    then each module initialised on rank 0 from wherever the RNG then stands), which draws other numbers: eval loss
    6.588 vs 6.560 after equal steps. So under ZeRO-3 rank 0 also builds the model whole from the same RNG state,
    as DDP would, and every partitioned parameter is gathered in turn and overwritten with it (rank 0's values are
    broadcast when the gather ends). Cost: one whole copy of the model in rank 0's CPU memory while it is built,
    one parameter at a time on the devices; the other ranks never hold the whole model.
    """
    if not is_deepspeed_zero3_enabled():
        return build()
    import deepspeed

    first = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    reference = None
    if first:
        with torch.random.fork_rng(devices=[]), outside_zero3():  # the RNG state a DDP run builds from, kept
            reference = dict(build().named_parameters())
    model = build()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            with deepspeed.zero.GatheredParameters([parameter], modifier_rank=0):
                if first:
                    parameter.copy_(reference.pop(name))
    logger.info("ZeRO-3: the partitioned model starts from the weights a whole build gives with the same seed.")
    return model
