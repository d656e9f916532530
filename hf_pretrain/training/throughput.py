"""Training throughput: tokens/s over each logging interval and model FLOPs utilisation (MFU).

Model FLOPs per trained token, forward + backward, follow PaLM's accounting (Chowdhery et al. 2022, appendix B):

    6·N + 12·L·H·Q·C

- N: the weights of every matmul (`flop_counted_parameters`): no input embedding (a lookup), no norm or bias
  (elementwise), the output head included (a matmul, tied or not). Each weight costs 2 FLOPs per token forward and
  4 backward (the input's and the weight's gradients).
- L·H·Q: layers x query heads x head size (not the model width: PaLM 540B has d = 18,432 but H·Q = 48·256), C the
  attention context. Scores Q·Kᵀ and the weighted values each cost 2·H·Q·C per token and layer forward, x3 with the
  backward: 12·L·H·Q·C.
- Causal attention is counted in full, C = T, as PaLM does ("model FLOPs" of a causal block count the masked half of
  the T x T scores): causal and bidirectional attention cost the same here, and MFU stays comparable with PaLM's and
  with every other tool that quotes 6N + 12LHQT.
- Isolated documents (`document_attention: isolated`) attend over their own document only: a block of documents
  L_1..L_k costs 12·L·H·Q·Σ L_i² in attention, so per token C = Σ L_i² / Σ L_i, the token-weighted mean document
  length (`document_context`). This is the model's work, whatever the kernel executes: flash attention with
  `cu_seq_lens` does exactly this; sdpa/eager with a block-diagonal 4D mask execute the full T x T and throw the
  masked part away, which MFU rightly does not reward.
- A sparse masked-LM head (the masked decoders' `sparse_prediction`, default on; ModernBERT's `sparse_prediction`)
  runs on the masked positions only: its weights cost 6·N_head·f per token, f the fraction of positions predicted
  (the masking rate), instead of 6·N_head.

Checked in tests/test_throughput.py: exactly against `torch.utils.flop_counter.FlopCounterMode` (which counts the
mm/bmm/sdpa FLOPs that are executed, nothing elementwise) on tiny Llama, BERT, masked Llama and ModernBERT
models, and against the published figures of PaLM (the 46.2% MFU of PaLM 540B) and Chinchilla (Hoffmann et al.
2022, appendix F, table A4).

Not counted: softmax, norms, activations, RoPE, the loss (elementwise: Chinchilla counts the softmax, 3·H·T² per
layer forward, < 1% here), recomputation under activation checkpointing (that is hardware FLOPs, not model FLOPs),
and sliding windows (ModernBERT's local layers are counted at the full context).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from hf_pretrain.models import parameter_size

_DOCUMENT_LENGTHS = "document_lengths"
_CONTEXT_SAMPLE_ROWS = 1024  # blocks read to estimate the mean document context of a map-style dataset


@dataclass(frozen=True)
class GpuPeak:
    """Dense (no 2:4 sparsity) tensor-core peak FLOP/s of one GPU, FP32 accumulate, per dtype; None: not supported."""

    name: str  # what `peak_flops_per_device` also accepts by itself (the planner's `gpu`)
    pattern: str  # full match against the CUDA device name without its "NVIDIA " / "Tesla " prefix
    bf16: float | None
    fp16: float | None
    source: str


# Datasheets quote "with sparsity" figures; the dense figure is half of them. A name that matches no pattern exactly
# (a new GPU, a MIG slice, A10G which NVIDIA publishes no datasheet for) has no peak: MFU is not logged for it.
GPU_PEAKS = (
    GpuPeak("H100", r"H100( SXM5?)?( \d+GB HBM3)?", 989e12, 989e12,
            "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: BF16/FP16 Tensor Core 1,979 TFLOPS with sparsity"),
    GpuPeak("H100 PCIe", r"H100 PCIe", 756e12, 756e12,
            "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe: BF16/FP16 Tensor Core 1,513 TFLOPS with sparsity"),
    GpuPeak("H100 NVL", r"H100 NVL", 835e12, 835e12,
            "NVIDIA H100 Tensor Core GPU datasheet, H100 NVL: BF16/FP16 Tensor Core 1,671 TFLOPS with sparsity"),
    GpuPeak("H200", r"H200( SXM)?( \d+GB HBM3e)?", 989e12, 989e12,
            "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: BF16/FP16 Tensor Core 1,979 TFLOPS with sparsity"),
    GpuPeak("H200 NVL", r"H200 NVL", 835e12, 835e12,
            "NVIDIA H200 Tensor Core GPU datasheet, H200 NVL: BF16/FP16 Tensor Core 1,671 TFLOPS with sparsity"),
    GpuPeak("GH200", r"GH200( \d+GB?( HBM3e?)?)?", 989e12, 989e12,
            "NVIDIA GH200 Grace Hopper Superchip datasheet: BF16/FP16 Tensor Core 1,979 TFLOPS with sparsity"),
    GpuPeak("B200", r"B200", 2250e12, 2250e12,
            "NVIDIA HGX B200 datasheet, per GPU: FP16/BF16 Tensor Core 4.5 PFLOPS with sparsity"),
    GpuPeak("A100", r"A100([- ](SXM4?|PCIE|PCIe|\d+GB))*", 312e12, 312e12,
            "NVIDIA A100 Tensor Core GPU datasheet (SXM and PCIe, 40/80GB): BF16/FP16 Tensor Core 312 TFLOPS"),
    GpuPeak("L40S", r"L40S", 362e12, 362e12,
            "NVIDIA L40S datasheet: BF16/FP16 Tensor Core 733 TFLOPS with sparsity"),
    GpuPeak("L40", r"L40", 181e12, 181e12,
            "NVIDIA L40 datasheet: BF16/FP16 Tensor Core 362.1 TFLOPS with sparsity"),
    GpuPeak("L4", r"L4", 121e12, 121e12,
            "NVIDIA L4 Tensor Core GPU datasheet: BF16/FP16 Tensor Core 242 TFLOPS with sparsity"),
    GpuPeak("A10", r"A10", 125e12, 125e12,
            "NVIDIA A10 Tensor Core GPU datasheet: BF16/FP16 Tensor Core 125 TFLOPS (250 with sparsity)"),
    GpuPeak("V100", r"V100-SXM2(-\d+GB)?", None, 125e12,
            "NVIDIA V100 Tensor Core GPU datasheet, SXM2: FP16 Tensor Core 125 TFLOPS; no bf16"),
    GpuPeak("V100 PCIe", r"V100-PCIE(-\d+GB)?", None, 112e12,
            "NVIDIA V100 Tensor Core GPU datasheet, PCIe: FP16 Tensor Core 112 TFLOPS; no bf16"),
    GpuPeak("RTX 4090", r"(GeForce )?RTX 4090", 165.2e12, 165.2e12,
            "NVIDIA Ada Lovelace architecture whitepaper, RTX 4090: BF16/FP16 Tensor with FP32 accumulate 165.2"),
    GpuPeak("RTX 3090", r"(GeForce )?RTX 3090", 71e12, 71e12,
            "NVIDIA Ampere GA102 GPU architecture whitepaper, RTX 3090: BF16/FP16 Tensor with FP32 accumulate 71"),
)  # fmt: skip
PEAK_BF16_FLOPS = tuple((peak.name, peak.bf16) for peak in GPU_PEAKS if peak.bf16)  # (name, FLOP/s) for the planner
PRECISIONS = ("bf16", "fp16", "fp32")


def training_precision(args) -> str:
    """The matmul dtype of a run from its TrainingArguments: "bf16", "fp16" or "fp32"."""
    return "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32"


def gpu_peak(device_name: str) -> GpuPeak | None:
    """The table row of a GPU by its CUDA name ("NVIDIA A100-SXM4-80GB") or its row name ("A100"); None if unknown."""
    name = re.sub(r"^(NVIDIA|Tesla)\s+", "", device_name.strip())
    for peak in GPU_PEAKS:
        if name == peak.name or re.fullmatch(peak.pattern, name, flags=re.IGNORECASE):
            return peak
    return None


def peak_flops_per_device(device_name: str | None = None, precision: str = "bf16") -> float | None:
    """Peak dense FLOP/s of one GPU (the current CUDA device when None) in `precision`; None when unknown or CPU.

    fp32 gives None: its matmuls run in fp32 or TF32 depending on torch's global settings (`tf32`,
    `torch.backends.cuda.matmul.allow_tf32`), whose peaks differ 8-16x, so no guess is made; set
    `peak_flops_per_device` for such a run.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; choose one of {PRECISIONS}.")
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    peak = gpu_peak(device_name)
    return None if peak is None or precision == "fp32" else getattr(peak, precision)


def _attention_width(config) -> tuple[int, int]:
    """(layers L, query heads x head size H·Q) of a config, for the attention term."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None) or 0
    if getattr(config, "is_encoder_decoder", False):
        layers += getattr(config, "num_decoder_layers", None) or layers
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "num_heads", None)
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None)
    return layers, (heads * head_dim if heads and head_dim else width)


def flops_per_token(
    config,
    num_parameters: int,
    sequence_length: float,
    *,
    head_parameters: int = 0,
    predicted_fraction: float = 1.0,
) -> float:
    """Training FLOPs per token (forward + backward): 6·N + 12·L·H·Q·C (see the module docstring).

    `num_parameters` N: the matmul weights (`flop_counted_parameters`). `sequence_length` C: the attention context,
    the block length, or with isolated documents their mean context (`document_context`). `head_parameters`: the part
    of N that runs on the predicted positions only (`sparse_head_parameters`), at `predicted_fraction` of them.
    """
    if not 0 <= predicted_fraction <= 1:
        raise ValueError(f"predicted_fraction must be in [0, 1], got {predicted_fraction}.")
    layers, width = _attention_width(config)
    dense = num_parameters - head_parameters
    return 6.0 * (dense + head_parameters * predicted_fraction) + 12.0 * layers * width * sequence_length


def _matmul_modules(model: torch.nn.Module) -> Iterable[torch.nn.Module]:
    for module in model.modules():
        # nn.Linear and its subclasses, and GPT-2's Conv1D (a Linear with a transposed weight)
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            yield module


def flop_counted_parameters(model: torch.nn.Module) -> int:
    """The weights of every matmul of `model`: each Linear (Conv1D) weight once per module that multiplies by it.

    The input embedding is a lookup and counts only as the output head it may be tied to; norms, biases and position
    embeddings are not matmul weights."""
    return sum(parameter_size(module.weight) for module in _matmul_modules(model))


def sparse_head_parameters(model: torch.nn.Module) -> int:
    """Matmul weights that run only on the predicted positions: the head under `config.sparse_prediction`, else 0.

    The masked decoders (`modeling_masked_llama`) apply `lm_head` to the masked positions only; ModernBERT applies
    its prediction head (`head`: dense + norm) and `decoder` to them."""
    if not getattr(model.config, "sparse_prediction", False):
        return 0
    heads = [model.get_output_embeddings(), getattr(model, "head", None)]
    return sum(flop_counted_parameters(module) for module in heads if isinstance(module, torch.nn.Module))


def document_context(document_lengths: Iterable[Sequence[int]]) -> float:
    """The mean attention context of tokens in isolated documents: Σ L_i² / Σ L_i over all documents of all blocks.

    >>> document_context([[2048]]), document_context([[1024, 1024]]), document_context([[1536, 512], [2048]])
    (2048.0, 1024.0, 1664.0)
    """
    squares = total = 0
    for lengths in document_lengths:
        for length in lengths:
            squares, total = squares + length * length, total + length
    if total == 0:
        raise ValueError("document_context needs at least one document with tokens.")
    return squares / total


def dataset_document_context(dataset, rows: int = _CONTEXT_SAMPLE_ROWS) -> float | None:
    """`document_context` of up to `rows` evenly spaced blocks of a map-style dataset with a `document_lengths`
    column (through wrappers that keep it as `.dataset`, such as `BlockOrderDataset`); None when it has none (a
    stream: its documents are not known before they are read)."""
    while not hasattr(dataset, "column_names") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    if _DOCUMENT_LENGTHS not in (getattr(dataset, "column_names", None) or ()) or not len(dataset):
        return None
    count = min(rows, len(dataset))
    indices = sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)})
    return document_context(dataset.select(indices)[_DOCUMENT_LENGTHS])


def attention_context(sequence_length: int, isolated_dataset=None) -> float | None:
    """The attention context C of a run: its block length, or, with isolated documents (`isolated_dataset` is the
    training data then), their mean context; None when the documents are isolated but unknown (a stream)."""
    if isolated_dataset is None:
        return float(sequence_length)
    return dataset_document_context(isolated_dataset)


def model_flops_per_token(
    model: torch.nn.Module, context: float | None, masked_fraction: float | None
) -> float | None:
    """`flops_per_token` of `model` at attention context `context` (None: unknown, so None), its sparse head at
    `masked_fraction` of the positions when a masked-LM phase trains (None: every position is predicted)."""
    if context is None:
        return None
    head = sparse_head_parameters(model) if masked_fraction is not None else 0
    fraction = 1.0 if masked_fraction is None else masked_fraction
    parameters = flop_counted_parameters(model)
    return flops_per_token(model.config, parameters, context, head_parameters=head, predicted_fraction=fraction)


@dataclass
class ThroughputMeter:
    """Tokens/s and MFU between consecutive `update` calls (each logging interval), on all devices together.

    `flops_per_token` may change between calls (a CLM→MLM switch changes the head's FLOPs); None logs no MFU."""

    flops_per_token: float | None
    peak_flops: float | None  # of all devices together
    context: float | None = None  # the attention context `flops_per_token` was computed for (kept by the trainer)
    _last_time: float | None = field(default=None, init=False)
    _last_tokens: int = field(default=0, init=False)

    def update(self, tokens_seen: int) -> dict[str, float]:
        """Metrics since the previous call ({} at the first call, which only starts the clock)."""
        now = time.perf_counter()
        if self._last_time is None:
            self._last_time, self._last_tokens = now, tokens_seen
            return {}
        elapsed, tokens = now - self._last_time, tokens_seen - self._last_tokens
        self._last_time, self._last_tokens = now, tokens_seen
        if elapsed <= 0 or tokens <= 0:
            return {}
        metrics = {"tokens_per_second": tokens / elapsed}
        if self.peak_flops and self.flops_per_token:
            metrics["mfu"] = tokens * self.flops_per_token / elapsed / self.peak_flops
        return metrics
