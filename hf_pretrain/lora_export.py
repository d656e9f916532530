"""What a LoRA run leaves in its output folder: the merged model at the top, the adapter alone in `adapter/`.

`Trainer.save_model()` on a `PeftModel` writes only the adapter (`adapter_config.json`, `adapter_model.safetensors`)
at the top of `output_dir`. That folder is not a model: `AutoPeftModel` refuses the masked-LM class named in its
`auto_mapping` (not in peft's import allowlist), `pipeline(model=output_dir)` rebuilds a base from whatever
`base_model_name_or_path` says, and a model built from config leaves no base at all. `save_lora_result` writes
instead:

- `output_dir/`: the merged full model (LoRA folded into the weights, `merge_and_unload` on a copy), its config,
  generation config and tokenizer. It loads like any run's result: `AutoModelForMaskedLM.from_pretrained(output_dir)`
  after `import hf_pretrain` (or with `trust_remote_code=True`, `config.json` has an `auto_map`) for a masked model,
  `AutoModelForCausalLM` for a causal one, `AutoModelForSeq2SeqLM` for T5; `pipeline("fill-mask" / "text-generation",
  model=output_dir)` builds that class. No `adapter_config.json` is written there: it is what makes `pipeline()` and
  `from_pretrained` load an adapter onto a base instead of the folder's own weights.
- `output_dir/adapter/`: the adapter alone (and the tokenizer, which peft uses to resize the base's embeddings), when
  the run started from a checkpoint. Its `adapter_config.json` says where the base is: the Hub id as given, or, for
  a local folder, its absolute path (peft passes `base_model_name_or_path` to `from_pretrained` as is, so a relative
  path would resolve against the loader's working directory, not the adapter folder). `auto_mapping` names the
  transformers Auto class of the run (`AutoModelForMaskedLM`, `AutoModelForCausalLM` or `AutoModelForSeq2SeqLM`),
  with `task_type` left unset, so that a masked run's adapter goes onto a masked LM: a causal checkpoint as base
  loads into `LlamaForMaskedLM` with the same parameter names. Load it with

      import hf_pretrain  # registers LlamaForMaskedLM with AutoModelForMaskedLM
      from peft import AutoPeftModel
      model = AutoPeftModel.from_pretrained("output_dir/adapter")

  (peft has no AutoPeftModelFor... class for masked LM; `AutoPeftModel` follows `auto_mapping`), or explicitly
  `PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(base), "output_dir/adapter")`.
  A model built from config (no checkpoint) gets no adapter folder: its base is random weights saved nowhere, so
  the adapter alone could not be used; the merged model at the top is the result.

Needs the full (not sharded) parameters: call it on the main process with the unwrapped model, not under DeepSpeed
ZeRO-3 or FSDP sharding. The merge works on a copy, so the trained `PeftModel` is left as it was (evaluation can go
on with it), at the cost of a second copy of the weights for the duration of the save.
"""

from __future__ import annotations

import copy
import json
import logging
import os

logger = logging.getLogger("hf_pretrain")

ADAPTER_SUBFOLDER = "adapter"
_ADAPTER_CONFIG = "adapter_config.json"


def _auto_class_name(config, architecture: str) -> str:
    """The transformers Auto class that builds the class named `architecture` from `config` ("" when none does)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    config_class = type(config)
    for auto_class in (
        AutoModelForMaskedLM,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    ):
        mapping = auto_class._model_mapping
        if config_class in mapping and mapping[config_class].__name__ == architecture:
            return auto_class.__name__
    # A class no Auto mapping names for this config: the base loads with its own class (peft's default).
    return ""


def base_model_reference(base_reference: str | None) -> str | None:
    """What to write as the adapter's `base_model_name_or_path`: a local folder as an absolute path (it resolves from
    any working directory on this machine), anything else (a Hub id) as given; None for a model built from config."""
    if not base_reference:
        return None
    if os.path.isdir(base_reference):  # transformers prefers a local folder over a Hub id of the same name too
        return os.path.abspath(base_reference)
    return base_reference


def _check_full_parameters(model) -> None:
    if any(hasattr(p, "ds_numel") or p.numel() == 0 for p in model.parameters()):
        raise NotImplementedError(
            "save_lora_result needs the full parameters, but they are partitioned (DeepSpeed ZeRO-3 or FSDP). Save "
            "the adapter with trainer.save_model() and merge it afterwards, on one process, with "
            "PeftModel.from_pretrained(base, adapter).merge_and_unload()."
        )


def _adapter_readme(base: str, auto_class: str, revision: str | None) -> str:
    on_hub = not os.path.isabs(base)
    where = (
        f"the Hub model `{base}`" if on_hub else f"the local checkpoint `{base}` (an absolute path on this machine)"
    )
    if revision:
        where += f" at revision `{revision}`"
    front = f"---\nlibrary_name: peft\nbase_model: {base}\n---\n\n" if on_hub else "---\nlibrary_name: peft\n---\n\n"
    loader = auto_class or "the base model's class"
    return (
        front + "# LoRA adapter\n\n"
        f"A LoRA adapter for {where}, loaded as `{loader}`. The merged model (base plus adapter) is the folder "
        "above this one and needs no peft.\n\n"
        "```python\n"
        "import hf_pretrain  # registers LlamaForMaskedLM with AutoModelForMaskedLM\n"
        "from peft import AutoPeftModel\n\n"
        'model = AutoPeftModel.from_pretrained("path/to/adapter")\n'
        "```\n\n"
        "If the base has moved, edit `base_model_name_or_path` in `adapter_config.json`, or load it yourself and "
        'pass it: `PeftModel.from_pretrained(base_model, "path/to/adapter")`.\n'
    )


def save_lora_result(
    model,
    output_dir: str,
    tokenizer=None,
    base_reference: str | None = None,
    *,
    base_revision: str | None = None,
) -> str | None:
    """Save a trained LoRA model (`peft.PeftModel`) as a merged full model in `output_dir` and, when it started from a
    checkpoint, the adapter alone in `output_dir/adapter/` (see the module docstring for what loads them).

    Args:
        model: the trained `PeftModel`, unwrapped (`trainer.model`), with full parameters. Left unchanged.
        output_dir: where the merged model (and `tokenizer`) go; an `adapter_config.json` a previous save left
            there is removed.
        tokenizer: saved next to the merged model and the adapter (peft resizes the base's embeddings to it).
        base_reference: the checkpoint the model was loaded from before `add_lora` (`model_name_or_path`: a Hub
            id or a local folder); None for a model built from config, which gets no adapter folder.
        base_revision: the Hub revision of `base_reference`, written to the adapter config (peft loads that one).

    Returns:
        The adapter folder, or None when none was written.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(f"save_lora_result expects a peft.PeftModel, got {type(model).__name__}.")
    _check_full_parameters(model)
    os.makedirs(output_dir, exist_ok=True)
    stale = os.path.join(output_dir, _ADAPTER_CONFIG)
    if os.path.isfile(stale):
        os.remove(stale)

    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(output_dir)  # LlamaForMaskedLM writes its own architectures, auto_map and modeling file
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    # The adapter goes onto the class the merged model was saved as (a masked LM saved while causal is a causal LM).
    architecture = (merged.config.architectures or [type(merged).__name__])[0]
    with open(os.path.join(output_dir, "config.json"), encoding="utf-8") as handle:
        architecture = (json.load(handle).get("architectures") or [architecture])[0]
    auto_class = _auto_class_name(merged.config, architecture)
    del merged

    base = base_model_reference(base_reference)
    adapter_dir = None
    if base is not None:
        adapter_dir = os.path.join(output_dir, ADAPTER_SUBFOLDER)
        model.save_pretrained(adapter_dir)
        path = os.path.join(adapter_dir, _ADAPTER_CONFIG)
        with open(path, encoding="utf-8") as handle:
            adapter_config = json.load(handle)
        adapter_config["base_model_name_or_path"] = base
        adapter_config["revision"] = base_revision
        if auto_class:
            # AutoPeftModel builds the base with this class; task_type must stay unset for AutoPeftModel to read it.
            adapter_config["auto_mapping"] = {"base_model_class": auto_class, "parent_library": "transformers"}
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(adapter_config, handle, indent=2, sort_keys=True)
            handle.write("\n")
        with open(os.path.join(adapter_dir, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(_adapter_readme(base, auto_class, base_revision))
        if tokenizer is not None:
            tokenizer.save_pretrained(adapter_dir)
    else:
        logger.info(
            "LoRA on a model built from config: only the merged model is saved (its base weights exist nowhere else)."
        )

    logger.info("LoRA result: merged model in %s%s.", output_dir, f", adapter in {adapter_dir}" if adapter_dir else "")
    return adapter_dir
