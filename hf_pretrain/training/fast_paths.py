"""The fast paths of a run, one switch each, checked at the resolve step before any data is read or any model built.

- `bf16`: bf16 autocast (weights and optimizer stay float32); refused on a CUDA device without bf16.
- `attn_implementation: flash_attention_2` (or `_3`): flash_attn's varlen kernel, documents kept apart by
  `cu_seq_lens` (`document_mask.flash_document_kwargs`); refused without the package, without CUDA, without
  bf16/fp16 (flash_attn has no float32), with a 4D prefix-LM mask, or for a family transformers has no flash for.
- `attn_implementation: sdpa | flex_attention`: a 4D bool mask / a BlockMask (`model_families.resolve_attention`
  refuses flex training on CPU).
- `torch_compile`: the Trainer compiles the model; refused when batch shapes vary (`packing: false`) and on a CPU
  without a C++ compiler (inductor builds its CPU kernels with one).
- `optim: adamw_torch_fused`: torch's fused AdamW; refused where a one-parameter fused step fails (probed).
- `use_liger_kernel`: liger's Triton kernels (norms, RoPE, SwiGLU, the causal-LM loss); refused without
  `liger_kernel`, off CUDA, or on a model type liger does not patch (it would silently change nothing).

Each refusal is one line naming the fields and what to do: a combination that cannot work must not start a job
that fails (or silently runs the slow path) after the data has been tokenized and the model built.

Not refused, not measured here (no GPU): `torch_compile` with flash attention and isolated documents, where the
number of `cu_seq_lens` entries varies per batch (dynamo marks it dynamic after one recompile).

Measured on this package's CPU (torch 2.13): fused AdamW steps on CPU (float32 and bf16 parameters), so
`adamw_torch_fused` is not refused there; bf16 autocast trains on CPU.
"""

from __future__ import annotations

import importlib.util
import shutil

import torch
import transformers
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from hf_pretrain.training.document_mask import is_flash

# The module each flash implementation imports its kernels from (transformers' `lazy_import_flash_attention`).
_FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
_FUSED_ADAMW = "adamw_torch_fused"


def flash_problem(
    attn_implementation: str,
    *,
    model_type: str,
    prefix_mask: bool,
    device_type: str,
    half_precision: bool,
) -> str | None:
    """Why flash attention cannot train this run, or None. `prefix_mask`: the objective sends a 4D prefix-LM mask
    on a decoder (prefix LM, span corruption or UL2 with span_decoder_only); `half_precision`: bf16 or fp16 is set."""
    name = f"attn_implementation={attn_implementation!r}"
    if prefix_mask:
        return (
            f"{name} takes no 4D mask, and this objective's prefix-LM attention (bidirectional prefix, causal rest) "
            "needs one on a decoder: use attn_implementation: sdpa (or flex_attention on a GPU)."
        )
    package = _FLASH_PACKAGES.get(attn_implementation)
    if package is not None and importlib.util.find_spec(package) is None:
        return f"{name} needs the {package} package, which is not installed: pip install flash-attn, or use sdpa."
    if device_type != "cuda":
        return f"{name} runs on CUDA GPUs only, and this run trains on {device_type}: use sdpa there."
    if not half_precision:
        return f"{name}: flash_attn computes in bf16 or fp16 only: set bf16: true (or fp16: true)."
    model_class = _base_class(model_type)
    if model_class is not None and not getattr(model_class, "_supports_flash_attn", False):
        return f"{name}: transformers has no flash attention for {model_type}: use sdpa or eager."
    return None


def compile_problem(*, padding_free: bool, device_type: str) -> str | None:
    """Why `torch_compile` cannot speed this run up, or None."""
    if padding_free:
        return (
            "torch_compile with packing: false: every padding-free batch has another length, so the model would be "
            "recompiled (then run shape-generic kernels) instead of reusing one graph: set packing: true (fixed "
            "block_size batches) or torch_compile: false."
        )
    if device_type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return "torch_compile on CPU needs a C++ compiler (inductor builds its kernels with it): install g++."
    return None


def bf16_problem(device_type: str) -> str | None:
    """Why bf16 autocast cannot run on `device_type`, or None (CPUs run it, emulated where they lack the ops)."""
    if device_type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name()
        return f"bf16: true, but {name} has no bf16 arithmetic: set fp16: true instead (or train on an Ampere+ GPU)."
    return None


def liger_problem(model_type: str, device_type: str) -> str | None:
    """Why `use_liger_kernel` cannot patch this model, or None."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "use_liger_kernel: true, but liger_kernel is not installed: pip install liger-kernel, or unset it."
    if device_type != "cuda":
        return f"use_liger_kernel: liger's kernels are Triton (CUDA) kernels and this run trains on {device_type}."
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        supported = ", ".join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN)[:12])
        return (
            f"use_liger_kernel: liger has no kernels for {model_type} (it patches {supported}, ...), so nothing would "
            "change: unset use_liger_kernel."
        )
    return None


def fused_adamw_problem(device_type: str) -> str | None:
    """Why torch's fused AdamW cannot step on `device_type`, or None; probed with one parameter, not assumed."""
    parameter = torch.nn.Parameter(torch.ones(2, device=device_type))
    try:
        optimizer = torch.optim.AdamW([parameter], fused=True)
        parameter.sum().backward()
        optimizer.step()
    except (RuntimeError, NotImplementedError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (
            f"optim: {_FUSED_ADAMW} cannot step on {device_type} with torch {torch.__version__} ({reason}): use "
            "adamw_torch."
        )
    return None


def check_fast_paths(
    training_args,
    *,
    attn_implementation: str,
    model_type: str,
    prefix_mask: bool,
    padding_free: bool,
    device_type: str | None = None,
) -> None:
    """Raise a ValueError naming the fields for the first fast path of the run that cannot work (module docstring).

    `training_args` is read only (bf16, fp16, torch_compile, optim, use_liger_kernel); `device_type` defaults to
    the training device's."""
    device_type = device_type or training_args.device.type
    half_precision = bool(training_args.bf16 or training_args.fp16)
    problems = (
        bf16_problem(device_type) if training_args.bf16 else None,
        flash_problem(
            attn_implementation,
            model_type=model_type,
            prefix_mask=prefix_mask,
            device_type=device_type,
            half_precision=half_precision,
        )
        if is_flash(attn_implementation)
        else None,
        compile_problem(padding_free=padding_free, device_type=device_type) if training_args.torch_compile else None,
        fused_adamw_problem(device_type)
        if getattr(training_args.optim, "value", training_args.optim) == _FUSED_ADAMW
        else None,
        liger_problem(model_type, device_type) if training_args.use_liger_kernel else None,
    )
    for problem in problems:
        if problem is not None:
            raise ValueError(problem)


def _base_class(model_type: str):
    name = MODEL_MAPPING_NAMES.get(model_type)
    return getattr(transformers, name, None) if isinstance(name, str) else None
