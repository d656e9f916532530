"""Training throughput: tokens/s over each logging interval and model FLOPs utilisation (MFU).

FLOPs per token follow the PaLM appendix B count: 6·N for the matmuls of the forward and backward passes (N the
non-embedding parameters plus the output head, which is a matmul), plus 12·L·d·T for attention scores and values
(L layers, model width d, sequence length T). MFU divides achieved model FLOP/s by the devices' peak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from hf_pretrain.models import parameter_size

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets; matched as substrings of the device name,
# first match wins, so the more specific names come first.
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L4", 121e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)


def peak_flops_per_device(device_name: str | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU by name (the current CUDA device when None); None when unknown or CPU."""
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def flops_per_token(config, num_parameters: int, sequence_length: int) -> float:
    """Training FLOPs per token (forward + backward): 6·N + 12·L·d·T (see the module docstring).

    `num_parameters` should exclude the input embedding (a lookup, no FLOPs) but include the output head.
    """
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", 0)
    if getattr(config, "is_encoder_decoder", False):
        layers += getattr(config, "num_decoder_layers", None) or layers
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", 0)
    return 6.0 * num_parameters + 12.0 * layers * width * sequence_length


def flop_counted_parameters(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: all but the input embedding (its output head counts, tied or not)."""
    embedding = model.get_input_embeddings()
    total = sum(parameter_size(p) for p in model.parameters())
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    return total - parameter_size(embedding.weight) + (parameter_size(head.weight) if tied else 0)


@dataclass
class ThroughputMeter:
    """Tokens/s and MFU between consecutive `update` calls (each logging interval), on all devices together."""

    flops_per_token: float
    peak_flops: float | None  # of all devices together
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
        if self.peak_flops:
            metrics["mfu"] = tokens * self.flops_per_token / elapsed / self.peak_flops
        return metrics
