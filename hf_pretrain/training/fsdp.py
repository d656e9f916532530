"""FSDP (FSDP2 through Accelerate) for any model: the layers to shard come from the model, checked before any work.

`configs/accelerate/fsdp.yaml` names no layer class (`fsdp_transformer_layer_cls_to_wrap` is absent), so
Accelerate's TRANSFORMER_BASED_WRAP policy wraps the classes the model itself lists in `_no_split_modules`, those
it really contains (`accelerate.utils.fsdp_utils.fsdp2_prepare_auto_wrap_policy`): `LlamaDecoderLayer`,
`Qwen2DecoderLayer`, `GPT2Block`, `T5Block`, `BertLayer`, ... One config serves every architecture.

`check_fsdp` runs at the resolve step, before data is read or the model is built, and stops a run that FSDP would
not shard as asked, with one line:
- FSDP requested (an `accelerate launch` FSDP config sets ACCELERATE_USE_FSDP=true, or the Trainer's `fsdp`
  argument) on a machine without a GPU-class device: Accelerate enables FSDP only on CUDA/XPU/NPU/HPU and would
  silently train plain DDP instead (its state's distributed_type falls back to MULTI_CPU);
- a named class to wrap that the model does not contain (Accelerate would raise deep in `prepare`), or no class
  at all (the whole model would be one FSDP unit, gathered whole at every step: no memory saved).
The classes are found on the model built on the meta device: no memory, no initialisation.

Checkpoints: with `fsdp_state_dict_type: FULL_STATE_DICT` the Trainer gathers the full state dict
(`accelerator.get_state_dict`: `get_model_state_dict(full_state_dict=True, cpu_offload=True)`) at every save and
writes it with `save_pretrained`, so checkpoints and the final model load with `from_pretrained`, as the ZeRO-3
configs' gathered weights do.
"""

from __future__ import annotations

import copy
import os

import torch

from hf_pretrain.models import build_model

FSDP_DEVICES = ("cuda", "xpu", "npu", "hpu")  # where Accelerate turns an FSDP request into FSDP


def fsdp_requested(training_args) -> bool:
    """FSDP asked for by `accelerate launch` (an FSDP config exports ACCELERATE_USE_FSDP) or by the Trainer's own
    `fsdp` argument."""
    from_launcher = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1")
    return from_launcher or bool(getattr(training_args, "fsdp", None))


def fsdp_plugin(training_args):
    """The plugin Accelerate will build: from the Trainer's `fsdp_config` if given, else from the launcher's
    FSDP_* environment (what `Accelerator()` does)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    arguments = getattr(training_args, "fsdp_plugin_args", None)
    return FullyShardedDataParallelPlugin(**arguments) if arguments else FullyShardedDataParallelPlugin()


def module_class_names(model: torch.nn.Module) -> set[str]:
    return {type(module).__name__ for module in model.modules()}


def layer_classes_to_wrap(model: torch.nn.Module, plugin) -> list[str]:
    """The class names the plugin's TRANSFORMER_BASED_WRAP policy wraps in `model`, resolved by Accelerate's own
    policy function (the named ones, else the model's `_no_split_modules` that it contains). A named class missing
    from the model is a ValueError naming it and the model's own candidates."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    names = plugin.transformer_cls_names_to_wrap
    candidates = sorted(set(getattr(model, "_no_split_modules", None) or ()) & module_class_names(model))
    try:
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)  # raises for a named class the model lacks
    except ValueError:
        missing = sorted(set(names or ()) - module_class_names(model))
        raise ValueError(
            f"fsdp_transformer_layer_cls_to_wrap={','.join(names)}: {type(model).__name__} has no {missing} module; "
            f"remove the key to wrap the model's own layers ({', '.join(candidates) or 'none listed'})."
        ) from None
    if not wraps_layers(plugin) or policy is None:
        return []
    return sorted({type(module).__name__ for module in model.modules() if policy(module)})


def wraps_layers(plugin) -> bool:
    """Whether the plugin's policy is TRANSFORMER_BASED_WRAP (after the plugin's __post_init__, a function)."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    return getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy) is transformer_auto_wrap_policy


def meta_model(config, masked_decoder: bool):
    """The run's model class on the meta device: its modules without memory or initialisation."""
    with torch.device("meta"):
        return build_model(copy.deepcopy(config), masked_decoder=masked_decoder)


def check_fsdp(training_args, config, masked_decoder: bool) -> list[str] | None:
    """Stop a run that FSDP would not shard as requested (see the module docstring); returns the class names that
    will be wrapped, or None when the run does not use FSDP."""
    if not fsdp_requested(training_args):
        return None
    device = training_args.device.type
    if device not in FSDP_DEVICES:
        raise ValueError(
            f"FSDP was requested (an FSDP accelerate config, ACCELERATE_USE_FSDP=true, or fsdp), but this process "
            f"runs on {device!r}: Accelerate enables FSDP only on {'/'.join(FSDP_DEVICES)} and would silently train "
            "plain DDP; launch on GPUs, or use configs/accelerate/cpu_2proc.yaml for data-parallel CPU runs."
        )
    plugin = fsdp_plugin(training_args)
    model = meta_model(config, masked_decoder)
    wrapped = layer_classes_to_wrap(model, plugin)
    if not wrapped and wraps_layers(plugin):
        raise ValueError(
            f"fsdp_auto_wrap_policy=TRANSFORMER_BASED_WRAP, but {type(model).__name__} lists no layer class it "
            "contains in _no_split_modules, so FSDP would gather the whole model at once: set "
            "fsdp_transformer_layer_cls_to_wrap to its layer class, or use SIZE_BASED_WRAP."
        )
    return wrapped
