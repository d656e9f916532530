"""A LoRA run's output: the merged model at the top of output_dir loads with the standard tools as the right class,
and the adapter in output_dir/adapter/ loads with peft onto its base (hf_pretrain.lora_export)."""

import json
import os

import pytest
import torch
from peft import AutoPeftModel, PeftModel
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, LlamaForCausalLM, pipeline

import hf_pretrain  # noqa: F401  (registers LlamaForMaskedLM with AutoModelForMaskedLM)
from hf_pretrain.data.tokenizer import train_tokenizer
from hf_pretrain.lora_export import base_model_reference, save_lora_result
from hf_pretrain.modeling_masked_llama import LlamaForMaskedLM
from hf_pretrain.models import add_lora, build_config

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "masked language modelling hides tokens and predicts them",
    "causal language modelling predicts the next token",
] * 4
TEXT = "the quick brown fox jumps over the lazy dog"
AUTO = {"masked": AutoModelForMaskedLM, "causal": AutoModelForCausalLM}
CLASS = {"masked": LlamaForMaskedLM, "causal": LlamaForCausalLM}


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(SENTENCES, vocab_size=400, min_frequency=1)


def trained_lora(tok, kind, base_dir=None):
    """A tiny Llama (from a saved causal checkpoint, as continued pretraining does, or from config) wrapped with
    LoRA, its lora_B weights made non-zero so that the merged model differs from the base."""
    torch.manual_seed(0)
    config = build_config("llama-tiny", tok)
    if base_dir is None:
        model = AUTO[kind].from_config(config)
    else:
        AutoModelForCausalLM.from_config(config).save_pretrained(base_dir)
        model = AUTO[kind].from_pretrained(base_dir)
    lora = add_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    return lora.eval()


def logits(model, tok):
    batch = tok([TEXT, "the lazy dog"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_lora_result_loads_as_the_right_class_with_the_trained_weights(tok, kind, tmp_path, monkeypatch):
    base_dir, out = str(tmp_path / "base"), str(tmp_path / "out")
    lora = trained_lora(tok, kind, base_dir)
    expected = logits(lora, tok)
    with lora.disable_adapter():
        assert not torch.allclose(logits(lora, tok), expected, atol=1e-3)  # the adapter matters

    adapter_dir = save_lora_result(lora, out, tok, base_dir)

    # The top of output_dir is the merged model, not an adapter: nothing there points pipeline() at another base.
    assert not os.path.exists(os.path.join(out, "adapter_config.json"))
    config = read_json(os.path.join(out, "config.json"))
    assert config["architectures"] == [CLASS[kind].__name__]
    if kind == "masked":
        assert config.get("is_causal", False) is False and "AutoModelForMaskedLM" in config["auto_map"]
    else:
        assert config.get("is_causal", True) is True and "auto_map" not in config
    merged = AUTO[kind].from_pretrained(out)
    assert type(merged) is CLASS[kind]
    assert getattr(merged.config, "is_causal", True) is (kind == "causal")
    torch.testing.assert_close(logits(merged, tok), expected, atol=1e-5, rtol=0)

    if kind == "masked":
        fill = pipeline("fill-mask", model=out)
        assert type(fill.model) is LlamaForMaskedLM
        prompt = f"the quick brown {tok.mask_token} jumps"
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            scores = lora(input_ids=ids).logits[0, (ids[0] == tok.mask_token_id).nonzero().item()]
        assert fill(prompt, top_k=1)[0]["token"] == scores.argmax().item()  # the trained model's prediction
    else:
        generate = pipeline("text-generation", model=out)
        assert type(generate.model) is LlamaForCausalLM

    # The adapter alone, with an absolute base path: it loads from any working directory, onto the run's class.
    assert adapter_dir == os.path.join(out, "adapter")
    adapter_config = read_json(os.path.join(adapter_dir, "adapter_config.json"))
    assert adapter_config["base_model_name_or_path"] == os.path.abspath(base_dir)
    assert adapter_config["task_type"] is None
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    reloaded = AutoPeftModel.from_pretrained(adapter_dir)
    assert type(reloaded.get_base_model()) is CLASS[kind]
    torch.testing.assert_close(logits(reloaded, tok), expected, atol=1e-5, rtol=0)
    explicit = PeftModel.from_pretrained(AUTO[kind].from_pretrained(base_dir), adapter_dir)
    torch.testing.assert_close(logits(explicit, tok), expected, atol=1e-5, rtol=0)


def test_lora_on_a_model_built_from_config_saves_the_merged_model_only(tok, tmp_path):
    out = str(tmp_path / "out")
    lora = trained_lora(tok, "masked")
    assert save_lora_result(lora, out, tok, None) is None
    assert sorted(name for name in os.listdir(out) if "adapter" in name) == []
    torch.testing.assert_close(
        logits(AutoModelForMaskedLM.from_pretrained(out), tok), logits(lora, tok), atol=1e-5, rtol=0
    )
    assert any(getattr(module, "lora_A", None) is not None for module in lora.modules())  # the PEFT model is intact


def test_what_save_model_of_a_peft_model_wrote_does_not_load(tok, tmp_path):
    """The old behaviour (`trainer.save_model()` is `PeftModel.save_pretrained` here): an adapter at the top of
    output_dir, which AutoPeftModel refuses for a masked run and which names no base for a model built from config."""
    base_dir = str(tmp_path / "base")
    masked = trained_lora(tok, "masked", base_dir)
    masked.save_pretrained(str(tmp_path / "old"))
    assert os.path.isfile(tmp_path / "old" / "adapter_config.json")
    assert not os.path.isfile(tmp_path / "old" / "config.json")
    with pytest.raises(ValueError, match="import allowlist"):
        AutoPeftModel.from_pretrained(str(tmp_path / "old"))
    trained_lora(tok, "masked").save_pretrained(str(tmp_path / "scratch"))
    assert read_json(tmp_path / "scratch" / "adapter_config.json")["base_model_name_or_path"] is None


def test_base_reference_is_kept_for_the_hub_and_made_absolute_for_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    assert base_model_reference("ckpt") == str(tmp_path / "ckpt")
    assert base_model_reference("my-org/my-model") == "my-org/my-model"
    assert base_model_reference(None) is None and base_model_reference("") is None


def test_only_a_peft_model_is_accepted(tok, tmp_path):
    with pytest.raises(TypeError, match="PeftModel"):
        save_lora_result(AutoModelForCausalLM.from_config(build_config("llama-tiny", tok)), str(tmp_path), tok)
