"""The fast paths: every combination that cannot work stops at the resolve step with its reason; flash attention
keeps documents apart through cu_seq_lens (checked on CPU against a reference varlen kernel registered under the
flash name); bf16 autocast and torch_compile train the recipe's model for a few steps on CPU."""

import importlib.util
import shutil
import sys
import types

import pytest
import torch
from _runs import pretrain, train_logs
from _tiny import tiny_llama_config
from transformers import LlamaForCausalLM
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hf_pretrain.models import build_model
from hf_pretrain.training import fast_paths
from hf_pretrain.training.attention import set_direction
from hf_pretrain.training.document_mask import (
    document_position_ids,
    flash_document_kwargs,
    isolate_for_model,
    supports_document_mask,
)
from hf_pretrain.training.fast_paths import check_fast_paths

TINY = [
    "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "512", "--block_size", "32",
    "--per_device_train_batch_size", "4", "--logging_steps", "1", "--max_documents", "24", "--seed", "0",
    "--eval_strategy", "no", "--save_strategy", "no", "--warmup_steps", "0", "--decay_steps", "1",
    "--validation_fraction", "0",
]  # fmt: skip


def _args(**fields):
    """The TrainingArguments fields check_fast_paths reads, defaulted as transformers defaults them."""
    defaults = {
        "bf16": False,
        "fp16": False,
        "torch_compile": False,
        "optim": "adamw_torch",
        "use_liger_kernel": False,
    }
    return types.SimpleNamespace(**{**defaults, **fields})


def _check(device="cpu", attn="sdpa", model_type="llama", prefix=False, padding_free=False, **fields):
    check_fast_paths(
        _args(**fields),
        attn_implementation=attn,
        model_type=model_type,
        prefix_mask=prefix,
        padding_free=padding_free,
        device_type=device,
    )


@pytest.fixture
def flash_installed(monkeypatch):
    """Pretend flash_attn is importable (the checks only look for the package) on a GPU with bf16."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        fast_paths.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else real(name)
    )


# ---- refusals ----------------------------------------------------------------------------------------------------


def test_flash_refusals(flash_installed):
    flash = {"attn": "flash_attention_2", "device": "cuda", "bf16": True}
    with pytest.raises(ValueError, match=r"flash_attention_2.*4D mask.*prefix-LM.*sdpa"):
        _check(**flash, prefix=True)
    with pytest.raises(ValueError, match="CUDA GPUs only.*trains on cpu"):
        _check(**{**flash, "device": "cpu"})
    with pytest.raises(ValueError, match="bf16 or fp16 only: set bf16: true"):
        _check(**{**flash, "bf16": False})
    with pytest.raises(ValueError, match="no flash attention for deberta-v2"):
        _check(**flash, model_type="deberta-v2")
    _check(**flash)  # llama, bf16, CUDA: nothing to refuse
    _check(**{**flash, "bf16": False}, fp16=True)


def test_flash_not_installed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here")
    with pytest.raises(ValueError, match="needs the flash_attn package, which is not installed"):
        _check(attn="flash_attention_2", device="cuda", bf16=True)


def test_compile_refusals(monkeypatch):
    with pytest.raises(ValueError, match="torch_compile with packing: false.*set packing: true"):
        _check(torch_compile=True, padding_free=True)
    _check(torch_compile=True)  # g++ is on this machine
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="torch_compile on CPU needs a C\\+\\+ compiler"):
        _check(torch_compile=True)
    _check(torch_compile=True, device="cuda")  # triton, not a host compiler, builds the GPU kernels


def test_bf16_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(ValueError, match="bf16: true, but Tesla V100-SXM2-16GB has no bf16.*fp16: true"):
        _check(device="cuda", bf16=True)
    _check(device="cpu", bf16=True)  # CPUs run bf16 autocast (trained below)


def test_liger_refusals(monkeypatch):
    if importlib.util.find_spec("liger_kernel") is None:
        with pytest.raises(ValueError, match="liger_kernel is not installed: pip install liger-kernel"):
            _check(device="cuda", use_liger_kernel=True)
    # A stand-in liger_kernel with liger's own table of patched model types.
    patch = types.ModuleType("liger_kernel.transformers.monkey_patch")
    patch.MODEL_TYPE_TO_APPLY_LIGER_FN = {"llama": None, "qwen2": None, "mistral": None}
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", patch)
    monkeypatch.setattr(fast_paths.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ValueError, match="Triton.*trains on cpu"):
        _check(device="cpu", use_liger_kernel=True)
    with pytest.raises(ValueError, match="no kernels for bert.*llama, mistral, qwen2"):
        _check(device="cuda", model_type="bert", use_liger_kernel=True)
    _check(device="cuda", model_type="qwen2", use_liger_kernel=True)


def test_fused_adamw(monkeypatch):
    # Measured: torch 2.13's fused AdamW steps on CPU, so it is not refused there.
    assert fast_paths.fused_adamw_problem("cpu") is None
    _check(optim="adamw_torch_fused")

    def no_fused(*args, fused=None, **kwargs):
        raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    with pytest.raises(
        ValueError, match="optim: adamw_torch_fused cannot step on cpu.*supported devices.*adamw_torch"
    ):
        _check(optim="adamw_torch_fused")


def test_resolve_stops_before_any_work(tmp_path):
    """Through the recipe: resolve_run refuses before the tokenizer is trained or a model built (nothing written
    but the output folder)."""
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ValueError, match="flash_attention_2.*flash_attn package"):
            pretrain.main([*TINY, "--output_dir", str(tmp_path / "a"), "--attn_implementation", "flash_attention_2"])
    with pytest.raises(ValueError, match="torch_compile with packing: false"):
        pretrain.main(
            [*TINY, "--output_dir", str(tmp_path / "b"), "--torch_compile", "true", "--packing", "false"]
            + [
                "--max_tokens_per_batch",
                "64",
                "--per_device_train_batch_size",
                "1",
                "--per_device_eval_batch_size",
                "1",
            ]
        )
    assert not (tmp_path / "b" / "tokenizer").exists()


# ---- flash attention: documents apart through cu_seq_lens -----------------------------------------------------------


def test_flash_kwargs_by_hand():
    documents = torch.tensor([[0, 0, 0, 1, 2, 2, 2, 2], [0, 0, 1, 1, 1, -1, -1, -1]])
    kwargs = flash_document_kwargs(documents)
    # segments over the 16 flattened tokens: [0,3) [3,4) [4,8) | [8,10) [10,13) and row 1's padding [13,16)
    assert kwargs["cu_seq_lens_q"].tolist() == kwargs["cu_seq_lens_k"].tolist() == [0, 3, 4, 8, 10, 13, 16]
    assert kwargs["cu_seq_lens_q"].dtype == torch.int32
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 4
    assert kwargs["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 2, 3], [0, 1, 0, 1, 2, 0, 1, 2]]
    # transformers' own derivation from the flattened position_ids (what its flash path does for one packed row)
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(kwargs["position_ids"])
    assert cu_q.tolist() == cu_k.tolist() == [0, 3, 4, 8, 10, 13, 16] and int(max_q) == int(max_k) == 4
    one_row = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2, 2]])
    (cu_q, _), _ = prepare_fa_kwargs_from_position_ids(document_position_ids(one_row))
    assert flash_document_kwargs(one_row)["cu_seq_lens_q"].tolist() == cu_q.tolist() == [0, 4, 6, 9]


def _varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A CPU reference of flash_attn_varlen_func as transformers calls it: query (B, H, T, D), key/value
    (B, Hkv, T, D); each cu_seq_lens segment of the flattened B·T tokens attends only to itself. Without
    cu_seq_lens (a lone document) each row is one sequence. Returns (B, T, H, D) as flash_attention_forward does."""
    batch, heads, length, dim = query.shape
    repeat = heads // key.shape[1]
    key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
    flat = [x.transpose(1, 2).reshape(batch * length, heads, dim) for x in (query, key, value)]  # (B·T, H, D)
    bounds = kwargs.get("cu_seq_lens_q")
    bounds = bounds.tolist() if bounds is not None else list(range(0, batch * length + 1, length))
    out = torch.empty_like(flat[0])
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        q, k, v = (x[start:end].transpose(0, 1) for x in flat)  # (H, S, D)
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=module.is_causal, scale=scaling
        ).transpose(0, 1)
    return out.reshape(batch, length, heads, dim), None


def _ignores_documents(module, query, key, value, attention_mask, **kwargs):
    """A kernel that drops cu_seq_lens: every row is one sequence (what flash does when the kwargs are lost)."""
    return _varlen_attention(module, query, key, value, attention_mask, kwargs.get("scaling"))


@pytest.fixture
def flash_model(monkeypatch):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(use_cache=False)).eval()
    model.config._attn_implementation = "flash_attention_2"  # routed to the CPU reference kernel below
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", _varlen_attention)
    return model


def test_flash_isolation_through_the_model(flash_model, monkeypatch):
    lengths = [3, 1, 4]
    ids = torch.tensor([[5, 9, 13, 17, 21, 25, 29, 33], [40, 41, 42, 43, 44, 45, 46, 47]])
    documents = torch.tensor([[0, 0, 0, 1, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0, -1, -1]])
    batch = {"input_ids": ids, "attention_mask": (documents >= 0).long(), "document_ids": documents}
    inputs = isolate_for_model(batch, flash_model, causal=True)
    assert "attention_mask" not in inputs and inputs["cu_seq_lens_q"].tolist() == [0, 3, 4, 8, 14, 16]
    with torch.no_grad():
        packed = flash_model(**inputs).logits  # (2, 8, V)
        start = 0
        for n in lengths:  # every document of row 0 scores as it does alone
            alone = flash_model(input_ids=ids[:, start : start + n][:1]).logits
            torch.testing.assert_close(packed[:1, start : start + n], alone, atol=1e-5, rtol=0)
            start += n
        torch.testing.assert_close(packed[1:, :6], flash_model(input_ids=ids[1:, :6]).logits, atol=1e-5, rtol=0)
    assert supports_document_mask(flash_model) is True  # the trainer's probe, through the same kwargs
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", _ignores_documents)
    assert "leaks across documents" in supports_document_mask(flash_model)


def test_flash_isolation_bidirectional(monkeypatch):
    """Masked LM on a decoder under flash: the attention modules' is_causal=False reaches the varlen kernel, and
    cu_seq_lens keep documents apart in both directions (the probe the trainer runs at a switch to MLM)."""
    torch.manual_seed(0)
    model = build_model(tiny_llama_config(use_cache=False), attn_implementation="sdpa", masked_decoder=True)
    set_direction(model, "bidirectional")
    model.config._attn_implementation = "flash_attention_2"
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", _varlen_attention)
    assert supports_document_mask(model, causal=False) is True
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", _ignores_documents)
    assert "leaks across documents (doc0->doc1" in supports_document_mask(model, causal=False)  # a later token seen


# ---- bf16 autocast and torch_compile train on CPU -------------------------------------------------------------------


def _trains(out, *extra):
    pretrain.main([*TINY, "--output_dir", str(out), "--max_steps", "3", "--learning_rate", "3e-3", *extra])
    losses = [entry["loss"] for entry in train_logs(str(out)).values()]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses))), losses
    return losses


def test_bf16_autocast_trains_on_cpu(tmp_path, monkeypatch):
    seen = []
    original = LlamaForCausalLM.forward

    def forward(self, *args, **kwargs):
        if self.training:  # the attention probes run in eval mode, outside the training step
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", forward)
    _trains(tmp_path, "--bf16", "true")
    assert seen and set(seen) == {torch.bfloat16}  # every training forward ran under bf16 autocast


def test_torch_compile_trains_on_cpu(tmp_path):
    """The Trainer's torch_compile path through the recipe: dynamo captures the model's forward and AOTAutograd its
    backward. The aot_eager backend skips inductor's C++ code generation, which took 161 s for these 3 steps on
    this 2-core machine (inductor, the default backend, is what runs on a GPU)."""
    from torch._dynamo.utils import counters

    counters.clear()
    _trains(tmp_path, "--torch_compile", "true", "--torch_compile_backend", "aot_eager")
    assert counters["stats"]["unique_graphs"] > 0  # the model's forward really ran as a captured graph
