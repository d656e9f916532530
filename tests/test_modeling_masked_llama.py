"""LlamaForMaskedLM: bidirectional attention, unshifted sparse MLM loss, CLM <-> MLM checkpoints, auto classes."""

import ast
import json
import sys

import pytest
import torch
import torch.nn.functional as F
from _tiny import NO_HF_PRETRAIN, VOCAB, one_thread, tiny_llama_config  # noqa: F401  (one_thread: an autouse fixture)
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, LlamaConfig, LlamaForCausalLM

from hf_pretrain.modeling_masked_llama import (
    LlamaForMaskedLM,
    masked_lm_accuracy,
    masked_lm_loss,
    packed_bidirectional_mask,
    register_masked_llama,
    set_bidirectional,
)

IMPLEMENTATIONS = ["eager", "sdpa"]


def tiny(cls, attn_implementation="sdpa", seed=0, **overrides):
    torch.manual_seed(seed)
    model = cls(tiny_llama_config(**overrides))
    model.set_attn_implementation(attn_implementation)
    return model.eval()


def hidden(model, input_ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=input_ids, output_hidden_states=True, **kwargs).hidden_states[-1]


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-4


def random_ids(shape, seed=1):
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def mlm_labels(input_ids, rate=0.3, seed=2):
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.rand(input_ids.shape, generator=generator) < rate
    chosen[:, 1] = True  # at least one per row
    return torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


# --- bidirectional attention ----------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_set_bidirectional_switches_a_causal_lm_both_ways(impl):
    model = tiny(LlamaForCausalLM, impl)
    ids = random_ids((2, 8))
    ids_last_changed = ids.clone()
    ids_last_changed[:, -1] = (ids[:, -1] + 1) % VOCAB

    def first_position(input_ids):
        return hidden(model, input_ids)[:, 0]

    assert not changed(first_position(ids), first_position(ids_last_changed)), "causal: position 0 ignores the future"

    set_bidirectional(model, True)
    assert model.config.is_causal is False
    assert all(not layer.self_attn.is_causal for layer in model.model.layers)
    assert changed(first_position(ids), first_position(ids_last_changed)), "bidirectional: position 0 sees the end"

    set_bidirectional(model, False)
    assert not changed(first_position(ids), first_position(ids_last_changed)), "causal again"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_masked_lm_is_bidirectional(impl):
    model = tiny(LlamaForMaskedLM, impl)
    assert model.config.is_causal is False
    ids = random_ids((2, 8))
    ids_last_changed = ids.clone()
    ids_last_changed[:, -1] = (ids[:, -1] + 1) % VOCAB
    with torch.no_grad():
        logits, logits_changed = model(input_ids=ids).logits, model(input_ids=ids_last_changed).logits
    assert logits.shape == (2, 8, VOCAB)
    assert changed(logits[:, 0], logits_changed[:, 0])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_padding_is_respected(impl):
    model = tiny(LlamaForMaskedLM, impl)
    ids = random_ids((2, 8))
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 5:] = 0  # row 1: 5 real tokens, right padding
    ids_pad_changed = ids.clone()
    ids_pad_changed[1, 5:] = (ids[1, 5:] + 7) % VOCAB

    out = hidden(model, ids, attention_mask=attention_mask)
    out_pad_changed = hidden(model, ids_pad_changed, attention_mask=attention_mask)
    assert not changed(out[:, :5], out_pad_changed[:, :5])
    assert not changed(out[0], out_pad_changed[0])
    # the same change is seen when those positions are not padding (so the check above can fail)
    no_padding = torch.ones_like(ids)
    assert changed(hidden(model, ids, attention_mask=no_padding)[1, :5], hidden(model, ids_pad_changed)[1, :5])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_padding_free_batches_keep_documents_apart(impl):
    model = tiny(LlamaForMaskedLM, impl)
    doc_a, doc_b = random_ids((1, 5), seed=3), random_ids((1, 4), seed=4)
    packed = torch.cat([doc_a, doc_b], dim=1)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])

    alone_a, alone_b = hidden(model, doc_a), hidden(model, doc_b)
    together = hidden(model, packed, position_ids=position_ids)
    torch.testing.assert_close(together[:, :5], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[:, 5:], alone_b, atol=1e-5, rtol=1e-5)
    # without restarting positions the two documents are one sequence: they do see each other
    assert changed(hidden(model, packed)[:, :5], alone_a)


def test_packed_bidirectional_mask():
    assert packed_bidirectional_mask(torch.arange(6)[None]) is None
    mask = packed_bidirectional_mask(torch.tensor([[0, 1, 0, 1, 2]]))
    expected = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]])
    assert mask.shape == (1, 1, 5, 5) and torch.equal(mask[0, 0], expected.bool())
    additive = packed_bidirectional_mask(torch.tensor([[0, 1, 0, 1, 2]]), dtype=torch.float32, batch_size=3)
    assert additive.shape == (3, 1, 5, 5) and additive[0, 0, 0, 2] == torch.finfo(torch.float32).min


# --- loss ---------------------------------------------------------------------------------------------------------


def test_loss_is_unshifted_cross_entropy_at_masked_positions():
    model = tiny(LlamaForMaskedLM)
    ids = random_ids((3, 10))
    labels = mlm_labels(ids)
    attention_mask = torch.ones_like(ids)
    attention_mask[2, 7:] = 0
    labels[2, 7:] = -100
    with torch.no_grad():
        full_logits = model(input_ids=ids, attention_mask=attention_mask).logits
        out = model(input_ids=ids, attention_mask=attention_mask, labels=labels)
    selected = labels != -100
    expected = F.cross_entropy(full_logits[selected], labels[selected])
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-5)
    assert out.logits.shape == (int(selected.sum()), VOCAB)
    torch.testing.assert_close(out.logits, full_logits[selected], atol=1e-6, rtol=1e-5)
    # not the causal (shifted) loss
    shifted = F.cross_entropy(full_logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert not torch.allclose(out.loss, shifted)

    model.config.sparse_prediction = False
    with torch.no_grad():
        dense = model(input_ids=ids, attention_mask=attention_mask, labels=labels)
    assert dense.logits.shape == (3, 10, VOCAB)
    torch.testing.assert_close(dense.loss, out.loss, atol=1e-6, rtol=1e-6)


def test_masked_lm_loss_sparse_equals_dense_and_counts():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    states = torch.randn(2, 6, 8)
    labels = torch.tensor([[-100, 3, -100, -100, 5, -100], [1, -100, -100, 10, -100, -100]])
    sparse_loss, sparse_logits, n_sparse = masked_lm_loss(states, head, labels, sparse=True)
    dense_loss, dense_logits, n_dense = masked_lm_loss(states, head, labels, sparse=False)
    assert n_sparse.item() == n_dense.item() == 4
    assert sparse_logits.shape == (4, 11) and dense_logits.shape == (2, 6, 11)
    torch.testing.assert_close(sparse_loss, dense_loss)
    summed, _, _ = masked_lm_loss(states, head, labels, num_items_in_batch=8)
    torch.testing.assert_close(summed, sparse_loss / 2)
    assert masked_lm_loss(states, head, labels, return_logits=False)[1] is None


def test_num_items_in_batch_and_trainer_label_counting():
    model = tiny(LlamaForMaskedLM)
    ids = random_ids((2, 8))
    labels = mlm_labels(ids)
    labels[:, 0] = ids[:, 0]  # position 0 is a target: a causal (shifted) count would miss it
    num_predicted = int((labels != -100).sum())
    with torch.no_grad():
        mean = model(input_ids=ids, labels=labels).loss
        summed = model(input_ids=ids, labels=labels, num_items_in_batch=2 * num_predicted).loss
    torch.testing.assert_close(summed, mean / 2)
    # transformers.Trainer counts labels[..., 1:] for num_items_in_batch only when loss_type maps to ForCausalLMLoss
    assert model.loss_type == "ForMaskedLM"


@pytest.mark.parametrize("sparse", [True, False])
def test_no_masked_tokens_gives_zero_loss_with_a_grad_path(sparse):
    model = tiny(LlamaForMaskedLM, sparse_prediction=sparse).train()
    ids = random_ids((2, 6))
    out = model(input_ids=ids, labels=torch.full_like(ids, -100))
    assert torch.isfinite(out.loss) and out.loss.item() == 0.0
    out.loss.backward()
    assert model.lm_head.weight.grad is not None and torch.count_nonzero(model.lm_head.weight.grad) == 0


def test_masked_lm_accuracy_dense_and_sparse():
    labels = torch.tensor([[-100, 2, -100, 0], [1, -100, -100, 3]])
    dense = torch.full((2, 4, 5), -1.0)
    for (row, col), token in {(0, 1): 2, (0, 3): 4, (1, 0): 1, (1, 3): 3}.items():  # (0, 3) is wrong
        dense[row, col, token] = 1.0
    correct, total = masked_lm_accuracy(dense, labels)
    assert (correct.item(), total.item()) == (3, 4)
    sparse_correct, sparse_total = masked_lm_accuracy(dense[labels != -100], labels)
    assert (sparse_correct.item(), sparse_total.item()) == (3, 4)
    with pytest.raises(ValueError):
        masked_lm_accuracy(torch.zeros(3, 5), labels)


# --- checkpoints -------------------------------------------------------------------------------------------------


def test_causal_checkpoint_loads_into_masked_lm_and_back(tmp_path):
    causal = tiny(LlamaForCausalLM)
    causal.save_pretrained(tmp_path / "clm")
    masked, info = LlamaForMaskedLM.from_pretrained(tmp_path / "clm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert masked.config.is_causal is False
    causal_state, masked_state = causal.state_dict(), masked.state_dict()
    assert causal_state.keys() == masked_state.keys()
    assert all(torch.equal(causal_state[key], masked_state[key]) for key in causal_state)

    masked.save_pretrained(tmp_path / "mlm")
    back, info = LlamaForCausalLM.from_pretrained(tmp_path / "mlm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(torch.equal(back.state_dict()[key], masked_state[key]) for key in masked_state)


def test_from_causal_lm_shares_modules(tmp_path):
    causal = tiny(LlamaForCausalLM, "eager")
    masked = LlamaForMaskedLM.from_causal_lm(causal)
    assert masked.model is causal.model and masked.lm_head is causal.lm_head
    masked_params = dict(masked.named_parameters())
    for name, param in causal.named_parameters():
        assert masked_params[name].data_ptr() == param.data_ptr()
    assert not any(p.is_meta for p in masked.parameters())
    assert masked.config.is_causal is False and not masked.model.layers[0].self_attn.is_causal

    ids = random_ids((1, 6))
    ids_changed = ids.clone()
    ids_changed[0, -1] = (ids[0, -1] + 1) % VOCAB
    with torch.no_grad():
        assert changed(masked(input_ids=ids).logits[:, 0], masked(input_ids=ids_changed).logits[:, 0])

    masked.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    # Bidirectional by its class; no `is_causal: false` that would make a causal class reading the file bidirectional.
    assert config["architectures"] == ["LlamaForMaskedLM"] and "is_causal" not in config


# --- auto classes -------------------------------------------------------------------------------------------------


def _auto_round_trip_checkpoint(tmp_path):
    register_masked_llama()
    model = tiny(LlamaForMaskedLM)
    model.save_pretrained(tmp_path)
    ids = random_ids((2, 7))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return ids, logits


def test_auto_model_round_trip(tmp_path):
    ids, logits = _auto_round_trip_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {"AutoModelForMaskedLM": "modeling_masked_llama.LlamaForMaskedLM"}
    assert "is_causal" not in config and config["sparse_prediction"] is True
    copied = tmp_path / "modeling_masked_llama.py"
    assert copied.is_file()
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(ast.parse(copied.read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported - set(sys.stdlib_module_names) <= {"torch", "transformers"}, imported  # no hf_pretrain

    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert type(loaded) is LlamaForMaskedLM
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, logits)
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path, trust_remote_code=True)) is LlamaForMaskedLM
    # registering LlamaConfig for masked LM leaves causal LM alone
    assert type(AutoModelForCausalLM.from_config(tiny_llama_config())) is LlamaForCausalLM


def test_trust_remote_code_loads_the_copied_file_offline(tmp_path, monkeypatch):
    """What a Hub user without hf_pretrain gets: the class from the copied modeling file."""
    import transformers.dynamic_module_utils as dynamic_module_utils

    ids, logits = _auto_round_trip_checkpoint(tmp_path / "ckpt")
    # forget the local registration (restored after the test), and keep dynamic modules out of ~/.cache
    monkeypatch.delitem(AutoModelForMaskedLM._model_mapping._extra_content, LlamaConfig)
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(LlamaForMaskedLM, "_auto_class", LlamaForMaskedLM._auto_class)

    remote = AutoModelForMaskedLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)
    assert type(remote).__name__ == "LlamaForMaskedLM" and type(remote) is not LlamaForMaskedLM
    assert type(remote).__module__.startswith("transformers_modules")
    with torch.no_grad():
        torch.testing.assert_close(remote.eval()(input_ids=ids).logits, logits)


# --- training -----------------------------------------------------------------------------------------------------


def _mask_tokens(input_ids, mask_token_id, generator, rate=0.15):
    chosen = torch.rand(input_ids.shape, generator=generator) < rate
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    return input_ids.masked_fill(chosen, mask_token_id), labels


def test_mlm_loss_falls_with_training(tokenizer):
    text = "Masked language modelling hides tokens; the encoder restores them from both sides. "
    ids = torch.tensor(tokenizer(text * 3)["input_ids"][:48]).repeat(8, 1)
    torch.manual_seed(0)
    model = LlamaForMaskedLM(tiny_llama_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    eval_inputs, eval_labels = _mask_tokens(ids, tokenizer.mask_token_id, torch.Generator().manual_seed(123))

    def eval_loss():
        with torch.no_grad():
            return model(input_ids=eval_inputs, labels=eval_labels).loss.item()

    before = eval_loss()
    for _ in range(30):
        inputs, labels = _mask_tokens(ids, tokenizer.mask_token_id, generator)
        loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)


def test_lora_wraps_masked_lm_and_trains():
    peft = pytest.importorskip("peft")
    model = tiny(LlamaForMaskedLM).train()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type=None))
    frozen = model.lm_head.weight.detach().clone()
    lora_b = {n: p.detach().clone() for n, p in lora.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.requires_grad == ("lora_" in n) for n, p in lora.named_parameters())

    ids = random_ids((2, 8))
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    loss = lora(input_ids=ids, labels=mlm_labels(ids)).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert torch.equal(model.lm_head.weight, frozen)
    assert any(not torch.equal(p, lora_b[n]) for n, p in lora.named_parameters() if n in lora_b)
    set_bidirectional(lora, False)  # reaches the wrapped model's config through the PEFT wrapper
    assert model.config.is_causal is True and model.model.layers[0].self_attn.is_causal
