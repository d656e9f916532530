import pytest
import torch

from hf_pretrain.models import MODEL_PRESETS, build_config, build_model, count_parameters


@pytest.mark.parametrize("preset", ["llama-tiny", "t5-tiny"])
def test_presets_build_with_the_tokenizers_vocabulary(tokenizer, preset):
    config = build_config(preset, tokenizer, {"num_hidden_layers": 1} if preset.startswith("llama") else None)
    model = build_model(config)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    ids = torch.tensor([[5, 6, 7, 8]])
    if model.config.is_encoder_decoder:
        loss = model(input_ids=ids, labels=ids).loss
    else:
        loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)


def test_overrides_win_over_the_preset(tokenizer):
    config = build_config("llama-tiny", tokenizer, {"hidden_size": 32, "num_attention_heads": 2})
    assert config.hidden_size == 32 and config.intermediate_size == MODEL_PRESETS["llama-tiny"]["intermediate_size"]


def test_unknown_preset_is_named(tokenizer):
    with pytest.raises(ValueError, match="model_preset='nope'"):
        build_config("nope", tokenizer)


def test_parameter_count_excludes_embeddings_on_request(tokenizer):
    model = build_model(build_config("llama-tiny", tokenizer))
    embeddings = 2 * len(tokenizer) * model.config.hidden_size  # input and (untied) output embeddings
    assert count_parameters(model) - count_parameters(model, exclude_embeddings=True) in (embeddings, embeddings // 2)
