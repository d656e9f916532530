"""XForMaskedLM for every decoder whose attention can be made bidirectional: masked_decoder_class, probe_bidirectional,
register_masked_decoder, and trust_remote_code loading of the copied modeling file."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F
from _tiny import NO_HF_PRETRAIN, one_thread  # noqa: F401  (one_thread: an autouse fixture)
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    OpenAIGPTConfig,
    Qwen2Config,
    RwkvConfig,
)

import hf_pretrain.modeling_masked_llama as masked_module
from hf_pretrain.modeling_masked_llama import (
    LlamaForMaskedLM,
    MaskedDecoderMixin,
    masked_decoder_class,
    probe_bidirectional,
    register_masked_decoder,
    set_bidirectional,
    shrunk_config,
)

# The architectures the brief names, plus GPT-2 (its backbone is `.transformer`) and Cohere (it scales its logits).
ARCHITECTURES = ["qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo2", "gpt2", "cohere"]
VOCAB = 64  # shrunk_config's vocabulary


def tiny_config(model_type: str, **overrides):
    config = shrunk_config(AutoConfig.for_model(model_type, **overrides))
    assert config is not None and config.vocab_size == VOCAB
    return config


def tiny_pair(model_type: str, impl: str | None = None, seed: int = 0):
    """A random tiny CausalLM and the masked LM on a copy of its weights."""
    torch.manual_seed(seed)
    causal = AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()
    masked_class = masked_decoder_class(causal.config)
    masked = masked_class(tiny_config(model_type)).eval()
    masked.load_state_dict(causal.state_dict())
    if impl is not None:
        causal.set_attn_implementation(impl)
        masked.set_attn_implementation(impl)
    return causal, masked


def implementations(model_type: str):
    """eager, and sdpa where transformers has it for the architecture (Gemma2 does not)."""
    causal_class = type(AutoModelForCausalLM.from_config(tiny_config(model_type)))
    return ["eager", "sdpa"] if causal_class._supports_sdpa else ["eager"]


CASES = [(arch, impl) for arch in ARCHITECTURES for impl in implementations(arch)]


def ids(shape, seed=1):
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def run(model, input_ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=input_ids, **kwargs).logits


def changed(a, b) -> bool:
    return (a - b).abs().max().item() > 1e-4


# --- which architectures, and the probe ------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral", "gemma", "gpt2"])
def test_probe_finds_bidirectional_architectures(model_type):
    config = AutoConfig.for_model(model_type)  # full size: the probe shrinks it
    assert probe_bidirectional(config) is True
    assert probe_bidirectional(type(config)) is True  # a config class works as well


@pytest.mark.parametrize("model_type", ["openai-gpt", "gpt_neo", "mamba"])
def test_probe_finds_architectures_that_ignore_is_causal(model_type):
    assert probe_bidirectional(AutoConfig.for_model(model_type)) is False


def test_probe_is_fast_leaves_no_trace_and_says_none_when_it_cannot_build():
    config = AutoConfig.for_model("qwen2")
    before = config.to_dict()
    probe_bidirectional(config)  # imports the architecture's module
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    start = time.perf_counter()
    assert probe_bidirectional(config) is True
    assert time.perf_counter() - start < 1.0
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    assert config.to_dict() == before  # the config itself is untouched
    # gemma3 is a vision-language model: its config has no text sizes at the top level to shrink
    assert probe_bidirectional(AutoConfig.for_model("gemma3")) is None


def test_shrunk_config_keeps_one_layer_of_each_kind():
    config = shrunk_config(AutoConfig.for_model("gemma3_text"))  # 5 sliding-window layers, then a full one, ...
    assert config.layer_types == ["sliding_attention", "full_attention"] and config.num_hidden_layers == 2
    gpt2 = shrunk_config(GPT2Config())  # n_embd / n_layer through attribute_map
    assert (gpt2.n_embd, gpt2.n_layer, gpt2.n_head, gpt2.bos_token_id) == (32, 2, 4, 50256 % VOCAB)


# --- the classes -----------------------------------------------------------------------------------------------


def test_masked_decoder_class_is_built_on_the_architectures_own_classes():
    qwen2 = masked_decoder_class(Qwen2Config)
    assert qwen2 is masked_decoder_class(Qwen2Config()) is masked_module.Qwen2ForMaskedLM  # cached, importable
    assert qwen2.__name__ == "Qwen2ForMaskedLM" and qwen2.__module__ == masked_module.__name__
    assert [c.__name__ for c in qwen2.__mro__[1:3]] == ["MaskedDecoderMixin", "Qwen2PreTrainedModel"]
    assert qwen2._base_model_class.__name__ == "Qwen2Model" and qwen2.config_class is Qwen2Config
    assert masked_decoder_class(LlamaConfig) is LlamaForMaskedLM and issubclass(LlamaForMaskedLM, MaskedDecoderMixin)
    gpt2 = masked_decoder_class(GPT2Config)
    assert gpt2._decoder_attribute == "transformer" and gpt2._tied_weights_keys == {
        "lm_head.weight": "transformer.wte.weight"
    }


@pytest.mark.parametrize(
    ("config_class", "expected"),
    [
        (BertConfig, "bert: transformers has a masked LM for it (BertForMaskedLM)"),
        (OpenAIGPTConfig, "openai-gpt: its token mixing ignores is_causal"),
        (RwkvConfig, "rwkv: RwkvForCausalLM is not base model + lm_head"),
    ],
)
def test_architectures_without_a_masked_decoder_get_a_one_line_reason(config_class, expected):
    for _ in range(2):  # the second answer comes from the cache
        with pytest.raises(ValueError, match=re.escape(expected)) as error:
            masked_decoder_class(config_class)
        assert "\n" not in str(error.value)
    with pytest.raises(AttributeError, match="cannot build OpenAIGPTForMaskedLM"):
        masked_module.OpenAIGPTForMaskedLM  # noqa: B018
    assert not hasattr(masked_module, "NoSuchThingForMaskedLM") and not hasattr(masked_module, "something_else")


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_causal_checkpoint_loads_computes_the_same_and_saves_back(model_type, tmp_path):
    torch.manual_seed(0)
    causal = AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()
    causal.save_pretrained(tmp_path / "clm")
    masked_class = masked_decoder_class(causal.config)
    masked, info = masked_class.from_pretrained(tmp_path / "clm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert masked.config.is_causal is False and masked.state_dict().keys() == causal.state_dict().keys()

    input_ids = ids((2, 8))
    set_bidirectional(masked.eval(), False)  # causal mode: the very function of the CausalLM, logit transforms too
    torch.testing.assert_close(run(masked, input_ids), run(causal, input_ids), atol=1e-5, rtol=1e-5)

    masked.save_pretrained(tmp_path / "saved_causal")  # saved while causal: as the CausalLM it is
    saved = json.loads((tmp_path / "saved_causal" / "config.json").read_text())
    assert saved["architectures"] == [type(causal).__name__] and "auto_map" not in saved
    back, info = AutoModelForCausalLM.from_pretrained(tmp_path / "saved_causal", output_loading_info=True)
    assert type(back) is type(causal) and not info["missing_keys"] and not info["unexpected_keys"]

    set_bidirectional(masked, True)
    masked.save_pretrained(tmp_path / "mlm")
    saved = json.loads((tmp_path / "mlm" / "config.json").read_text())
    assert saved["architectures"] == [masked_class.__name__] and "is_causal" not in saved
    assert saved["auto_map"] == {"AutoModelForMaskedLM": f"modeling_masked_llama.{masked_class.__name__}"}
    assert (tmp_path / "mlm" / "modeling_masked_llama.py").is_file()
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "mlm").eval()  # a causal class reading it stays causal
    torch.testing.assert_close(run(back, input_ids), run(causal, input_ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("model_type", "impl"), CASES)
def test_bidirectional_with_padding_and_packed_documents(model_type, impl):
    causal, masked = tiny_pair(model_type, impl)
    input_ids = ids((2, 8))
    last_changed = input_ids.clone()
    last_changed[:, -1] = (input_ids[:, -1] + 1) % VOCAB
    assert changed(run(masked, input_ids)[:, 0], run(masked, last_changed)[:, 0]), "position 0 sees the end"
    assert not changed(run(causal, input_ids)[:, 0], run(causal, last_changed)[:, 0]), "the CausalLM stays causal"

    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0  # row 1: 5 real tokens, right padding
    pad_changed = input_ids.clone()
    pad_changed[1, 5:] = (input_ids[1, 5:] + 7) % VOCAB
    padded = run(masked, input_ids, attention_mask=attention_mask)
    assert not changed(padded[1, :5], run(masked, pad_changed, attention_mask=attention_mask)[1, :5])

    doc_a, doc_b = ids((1, 5), seed=3), ids((1, 4), seed=4)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])
    together = run(masked, torch.cat([doc_a, doc_b], dim=1), position_ids=position_ids)
    torch.testing.assert_close(together[:, :5], run(masked, doc_a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[:, 5:], run(masked, doc_b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_unshifted_sparse_loss(model_type):
    _, masked = tiny_pair(model_type)
    input_ids = ids((2, 10))
    labels = torch.full_like(input_ids, -100)
    labels[:, [0, 3, 7]] = input_ids[:, [0, 3, 7]]
    full = run(masked, input_ids)
    with torch.no_grad():
        out = masked(input_ids=input_ids, labels=labels)
    selected = labels != -100
    assert out.logits.shape == (int(selected.sum()), VOCAB)  # sparse: the M labeled positions only
    torch.testing.assert_close(out.loss, F.cross_entropy(full[selected], labels[selected]), atol=1e-5, rtol=1e-5)
    assert masked.loss_type == "ForMaskedLM"
    masked.train()  # and it trains
    masked(input_ids=input_ids, labels=labels).loss.backward()
    assert masked.lm_head.weight.grad is not None


def test_from_causal_lm_shares_modules_and_register_is_idempotent(monkeypatch):
    extra = AutoModelForMaskedLM._model_mapping._extra_content
    monkeypatch.setitem(extra, Qwen2Config, None)  # removed again after the test
    causal = AutoModelForCausalLM.from_config(tiny_config("qwen2")).eval()
    masked_class = register_masked_decoder(causal.config)
    assert register_masked_decoder(Qwen2Config) is masked_class and extra[Qwen2Config] is masked_class
    masked = masked_class.from_causal_lm(causal)
    assert masked.model is causal.model and masked.lm_head is causal.lm_head
    assert not any(p.is_meta for p in masked.parameters()) and causal.config.is_causal is False
    assert type(AutoModelForMaskedLM.from_config(tiny_config("qwen2"))) is masked_class
    assert type(AutoModelForCausalLM.from_config(tiny_config("qwen2"))).__name__ == "Qwen2ForCausalLM"
    with pytest.raises(TypeError, match="Qwen2ForCausalLM-like"):
        masked_class.from_causal_lm(torch.nn.Linear(2, 2))


# --- trust_remote_code, in a process that has never seen hf_pretrain ---------------------------------------------

REMOTE_LOAD = NO_HF_PRETRAIN + textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForMaskedLM

    results = {}
    for path in sys.argv[1:]:
        model = AutoModelForMaskedLM.from_pretrained(path, trust_remote_code=True).eval()
        reference = torch.load(f"{path}/reference.pt")
        with torch.no_grad():
            logits = model(input_ids=reference["input_ids"]).logits
        results[path] = {
            "class": type(model).__name__,
            "module": type(model).__module__,
            "max_diff": float((logits - reference["logits"]).abs().max()),
        }
    assert "hf_pretrain" not in sys.modules
    print(json.dumps(results))
    """
)


def test_trust_remote_code_loads_non_llama_checkpoints_without_hf_pretrain(tmp_path):
    paths = {}
    for model_type in ("qwen2", "gpt2", "llama"):  # llama: LlamaForMaskedLM, the class checkpoints already name
        torch.manual_seed(0)
        config = tiny_config(model_type)
        model = masked_decoder_class(config)(config).eval()  # its save_pretrained writes auto_map, copies the file
        input_ids = ids((2, 7))
        path = tmp_path / model_type
        model.save_pretrained(path)
        torch.save({"input_ids": input_ids, "logits": run(model.eval(), input_ids)}, path / "reference.pt")
        paths[str(path)] = type(model).__name__
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, *paths],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the repository root: `hf_pretrain` is not importable from the working directory
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for path, class_name in paths.items():
        assert results[path]["class"] == class_name
        assert results[path]["module"].startswith("transformers_modules")
        assert results[path]["max_diff"] < 1e-5
