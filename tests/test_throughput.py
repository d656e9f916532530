import pytest

from hf_pretrain.models import build_config, build_model
from hf_pretrain.training.throughput import (
    ThroughputMeter,
    flop_counted_parameters,
    flops_per_token,
    peak_flops_per_device,
)


def test_flops_per_token_is_six_n_plus_attention(tokenizer):
    config = build_config("llama-tiny", tokenizer)  # 2 layers, width 64
    assert flops_per_token(config, 1000, 128) == 6 * 1000 + 12 * 2 * 64 * 128


def test_flop_counted_parameters_drop_the_input_embedding_only(tokenizer):
    model = build_model(build_config("llama-tiny", tokenizer))
    total = sum(p.numel() for p in model.parameters())
    assert flop_counted_parameters(model) == total - len(tokenizer) * 64  # the untied output head still counts


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA A100-SXM4-80GB", 312e12),
     ("NVIDIA A10G", 125e12), ("Some CPU", None)],
)  # fmt: skip
def test_peak_flops_by_device_name(name, peak):
    assert peak_flops_per_device(name) == peak


def test_meter_reports_the_interval_not_the_run(monkeypatch):
    now = iter([10.0, 12.0, 13.0])
    monkeypatch.setattr("hf_pretrain.training.throughput.time.perf_counter", lambda: next(now))
    meter = ThroughputMeter(flops_per_token=1e9, peak_flops=1e12)
    assert meter.update(1000) == {}  # the first call only starts the clock
    assert meter.update(5000) == pytest.approx({"tokens_per_second": 2000.0, "mfu": 2.0})
    assert meter.update(6000) == pytest.approx({"tokens_per_second": 1000.0, "mfu": 1.0})
