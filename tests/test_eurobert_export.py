"""Masked Llama -> native EuroBERT: the same function (by logits), a checkpoint that loads without remote code or
hf_pretrain, fine-tuning from it, and configs that cannot be exported (or would change the function) refused."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _tiny import NO_HF_PRETRAIN, VOCAB, one_thread, tiny_llama_config  # noqa: F401  (one_thread: an autouse fixture)
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    EuroBertConfig,
    EuroBertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
)

import hf_pretrain.eurobert_export as eurobert_export
from hf_pretrain.eurobert_export import EUROBERT_FIELDS, eurobert_compatible, save_eurobert, to_eurobert
from hf_pretrain.modeling_masked_llama import LlamaForMaskedLM, masked_decoder_class, set_bidirectional, shrunk_config


def tiny_config(**overrides) -> LlamaConfig:
    return tiny_llama_config(**{"pad_token_id": 0, "mask_token_id": 4, **overrides})


def masked_llama(impl="sdpa", seed=0, **overrides) -> LlamaForMaskedLM:
    """Random weights everywhere (biases and norm scales too, so nothing is trivially zero or one); embeddings at
    the usual small scale, so that `rms_norm_eps` visibly matters."""
    torch.manual_seed(seed)
    model = LlamaForMaskedLM(tiny_config(**overrides))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.normal_(1.0 if "norm" in name else 0.0, 0.02 if "embed_tokens" in name else 0.2)
    model.set_attn_implementation(impl)
    return model.eval()


def padded_batch():
    input_ids = torch.randint(5, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # right padding
    attention_mask[2, :3] = 0  # left padding
    return input_ids, attention_mask


def logits(model, input_ids, attention_mask=None):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits


# --- the same function ------------------------------------------------------------------------------------------

VARIANTS = {
    "default": {},
    "attention_bias": {"attention_bias": True},
    "mlp_bias": {"mlp_bias": True},  # EuroBERT's lm_head gets a (zero) bias
    "both_biases": {"attention_bias": True, "mlp_bias": True},
    "head_dim_16": {"head_dim": 16},  # != hidden_size / num_attention_heads
    "tied": {"tie_word_embeddings": True},
    "mha_gelu_eps": {"num_key_value_heads": 4, "hidden_act": "gelu_pytorch_tanh", "rms_norm_eps": 1e-5},
    "rope_llama3": {
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
    },
    "rope_yarn": {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}},
    "rope_linear": {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
    "rope_dynamic_longer_than_max": {  # the 9-token batch is past max_position_embeddings: the rescaled branch
        "max_position_embeddings": 8,
        "rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    },
}


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exported_model_computes_the_same_logits(variant, impl):
    model = masked_llama(impl, **VARIANTS[variant])
    assert eurobert_compatible(model.config) is None
    eurobert = to_eurobert(model)
    assert isinstance(eurobert, EuroBertForMaskedLM) and eurobert.config._attn_implementation == impl
    input_ids, attention_mask = padded_batch()
    expected, got = logits(model, input_ids, attention_mask), logits(eurobert, input_ids, attention_mask)
    assert (expected - got).abs().max().item() <= 1e-5
    assert (logits(model, input_ids) - logits(eurobert, input_ids)).abs().max().item() <= 1e-5  # no mask at all
    if VARIANTS[variant].get("mlp_bias"):
        assert eurobert.lm_head.bias is not None and not eurobert.lm_head.bias.any()


def test_export_shares_parameters_and_carries_the_config():
    model = masked_llama(tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, attention_dropout=0.1)
    eurobert = to_eurobert(model, classifier_pooling="mean")
    assert eurobert.model.layers[0].self_attn.q_proj.weight is model.model.layers[0].self_attn.q_proj.weight
    assert eurobert.lm_head.weight is eurobert.model.embed_tokens.weight  # tied as in the source
    assert not any(t.is_meta for t in [*eurobert.parameters(), *eurobert.buffers()])
    config = eurobert.config
    for field in EUROBERT_FIELDS:
        assert getattr(config, field) == getattr(model.config, field), field
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id, config.mask_token_id) == (0, 1, 2, 4)
    assert config.attention_dropout == 0.1 and config.classifier_pooling == "mean"
    assert getattr(config, "is_causal", None) is None and not hasattr(config, "sparse_prediction")


# --- what makes the functions differ, and that such a mismatch is reported ------------------------------------


def _eurobert_with(model, **changes) -> EuroBertForMaskedLM:
    """EuroBERT with the masked Llama's weights but some config fields changed (what a careless export would do)."""
    values = {**to_eurobert(model).config.to_dict(), **changes}
    values.pop("architectures", None)
    changed = EuroBertForMaskedLM(EuroBertConfig(**values))
    changed.load_state_dict(model.state_dict())
    changed.set_attn_implementation(model.config._attn_implementation)
    return changed.eval()


@pytest.mark.parametrize(
    ("model_overrides", "changes"),
    [
        ({}, {"rms_norm_eps": 1e-5}),  # EuroBERT's default; Llama's is 1e-6
        ({}, {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}),
        ({}, {"hidden_act": "gelu"}),
        (  # dynamic RoPE rescales once a sequence is longer than max_position_embeddings (the batch has 9 tokens)
            {
                "max_position_embeddings": 8,
                "rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0},
            },
            {"max_position_embeddings": 128},
        ),
        ({}, {"is_causal": True}),  # sdpa takes is_causal from the config through merge_with_config_defaults
    ],
)
def test_fields_that_change_the_function(model_overrides, changes):
    model = masked_llama("sdpa", **model_overrides)
    # both built before the Llama sees 9 tokens: dynamic RoPE keeps its rescaled frequencies for a while after
    exported, changed = _eurobert_with(model), _eurobert_with(model, **changes)
    input_ids, _ = padded_batch()
    assert (logits(model, input_ids) - logits(exported, input_ids)).abs().max() <= 1e-5
    assert (logits(model, input_ids) - logits(changed, input_ids)).abs().max() > 1e-4


def test_a_functional_override_is_refused():
    model = masked_llama()
    with pytest.raises(ValueError, match=r"rms_norm_eps=1e-05 \(the masked Llama has 1e-06\) would change"):
        to_eurobert(model, rms_norm_eps=1e-5)
    with pytest.raises(ValueError, match="is_causal cannot be set"):
        to_eurobert(model, is_causal=True)


@pytest.mark.parametrize("forgotten", ["rms_norm_eps", "rope_parameters"])
def test_a_field_the_export_forgets_is_caught_by_the_logits(forgotten, monkeypatch):
    model = masked_llama(rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    monkeypatch.setattr(eurobert_export, "EUROBERT_FIELDS", tuple(f for f in EUROBERT_FIELDS if f != forgotten))
    with pytest.raises(RuntimeError, match="computes other logits than the masked Llama"):
        to_eurobert(model)  # EuroBertConfig's default for the field (1e-5; theta 1e4) differs from the Llama's


# --- configs that cannot be exported --------------------------------------------------------------------------


def test_incompatible_configs_give_the_reason():
    assert "model_type='qwen2'" in eurobert_compatible(shrunk_config(AutoConfig.for_model("qwen2")))
    assert "is_causal=True" in eurobert_compatible(tiny_config(is_causal=True))
    assert "architectures=['LlamaForCausalLM']" in eurobert_compatible(tiny_config(architectures=["LlamaForCausalLM"]))
    assert eurobert_compatible(tiny_config(architectures=["LlamaForCausalLM"], is_causal=False)) is None
    quantized = tiny_config()
    quantized.quantization_config = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    assert "quantization_config" in eurobert_compatible(quantized)
    per_layer = tiny_config()
    per_layer.rope_parameters = {"full_attention": {"rope_type": "default", "rope_theta": 1e4}}
    assert "one set of RoPE parameters" in eurobert_compatible(per_layer)


def test_incompatible_models_are_refused():
    qwen2 = shrunk_config(AutoConfig.for_model("qwen2"))
    with pytest.raises(ValueError, match="cannot write this Qwen2ForMaskedLM as EuroBERT: model_type='qwen2'"):
        to_eurobert(masked_decoder_class(qwen2)(qwen2))
    causal_now = set_bidirectional(masked_llama(), False)
    with pytest.raises(ValueError, match="is_causal=True: a causal model"):
        to_eurobert(causal_now)
    with pytest.raises(ValueError, match="its attention is causal now"):
        to_eurobert(LlamaForCausalLM(tiny_config()))
    with pytest.raises(ValueError, match="no mask_token_id"):
        to_eurobert(masked_llama(mask_token_id=None))
    with pytest.raises(TypeError, match="merge adapters first"):
        to_eurobert(torch.nn.Linear(2, 2))


def test_save_refuses_a_folder_with_remote_code(tmp_path):
    (tmp_path / "modeling_masked_llama.py").write_text("# from an earlier save\n")
    with pytest.raises(ValueError, match="holds Python files"):
        save_eurobert(masked_llama(), tmp_path)


# --- the checkpoint, loaded where hf_pretrain is not ---------------------------------------------------------

LOAD_WITHOUT_HF_PRETRAIN = NO_HF_PRETRAIN + textwrap.dedent(
    """
    import torch
    from transformers import (AutoModelForMaskedLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, pipeline)

    path = sys.argv[1]
    reference = torch.load(f"{path}/../reference.pt")
    masked = AutoModelForMaskedLM.from_pretrained(path).eval()
    with torch.no_grad():
        out = masked(input_ids=reference["input_ids"], attention_mask=reference["attention_mask"]).logits
    classifier = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tagger = AutoModelForTokenClassification.from_pretrained(path, num_labels=3)
    fill = pipeline("fill-mask", model=path)
    predictions = fill("The <mask> fox jumps over the lazy dog.")
    print(json.dumps({
        "classes": [type(m).__name__ for m in (masked, classifier, tagger, fill.model)],
        "max_diff": float((out - reference["logits"]).abs().max()),
        "predictions": [p["token_str"] for p in predictions],
        "hf_pretrain_imported": "hf_pretrain" in sys.modules,
    }))
    """
)


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
    """A masked Llama with the trained test tokenizer, written as EuroBERT (the tokenizer next to it)."""
    folder = tmp_path_factory.mktemp("eurobert")
    ids = {name: getattr(tokenizer, f"{name}_id") for name in ("pad_token", "bos_token", "eos_token")}
    model = masked_llama(vocab_size=len(tokenizer), mask_token_id=None, **{f"{k}_id": v for k, v in ids.items()})
    input_ids = torch.tensor(
        tokenizer(["The quick brown fox", "Masked language modelling hides tokens"], padding=True)["input_ids"]
    )
    attention_mask = (input_ids != tokenizer.pad_token_id).long()
    torch.save(
        {"input_ids": input_ids, "attention_mask": attention_mask, "logits": logits(model, input_ids, attention_mask)},
        folder / "reference.pt",
    )
    return save_eurobert(model, folder / "checkpoint", tokenizer=tokenizer)


def test_checkpoint_is_native_eurobert(exported, tokenizer):
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "eurobert" and config["architectures"] == ["EuroBertForMaskedLM"]
    assert "auto_map" not in config and "is_causal" not in config
    assert config["mask_token_id"] == tokenizer.mask_token_id  # from the tokenizer: the Llama config had none
    assert (exported / "model.safetensors").is_file() and not list(exported.glob("*.py"))


def test_checkpoint_loads_without_hf_pretrain_or_remote_code(exported, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(tmp_path / "mods")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_HF_PRETRAIN, str(exported)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the repository root: `hf_pretrain` is not importable from the working directory
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["classes"] == [
        "EuroBertForMaskedLM",
        "EuroBertForSequenceClassification",
        "EuroBertForTokenClassification",
        "EuroBertForMaskedLM",
    ]
    assert result["max_diff"] <= 1e-5 and len(result["predictions"]) == 5
    assert not result["hf_pretrain_imported"] and not (tmp_path / "mods").exists()  # no remote code was loaded


def test_sequence_classification_fine_tunes_from_the_checkpoint(exported, tokenizer):
    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_pretrained(exported, num_labels=2).train()
    texts = ["the quick brown fox", "the lazy dog sleeps", "a quick fox jumps", "a dog is lazy"] * 2
    labels = torch.tensor([1, 0, 1, 0] * 2)  # fox or dog
    batch = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = classifier(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
