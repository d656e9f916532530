"""Document isolation in packed rows: the mask's exact tensors, and packed logits equal to each document run alone."""

import pytest
import torch
from _tiny import tiny_llama_config
from transformers import BertConfig, BertForMaskedLM, LlamaForCausalLM

from hf_pretrain.modeling_masked_llama import set_bidirectional
from hf_pretrain.training.document_mask import (
    document_attention_mask,
    document_position_ids,
    isolate_documents,
    supports_document_mask,
)

# Row 0: documents of lengths [3, 1, 4] filling T = 8. Row 1: documents [2, 3] (the last cut mid-document by the
# block end is still one document here) then 3 padding tokens.
DOCUMENTS = torch.tensor([[0, 0, 0, 1, 2, 2, 2, 2], [0, 0, 1, 1, 1, -1, -1, -1]])
PADDING = (DOCUMENTS >= 0).long()


def _expected(causal: bool) -> torch.Tensor:
    """The (2, 1, 8, 8) bool pattern, written out by hand (1 = attend)."""
    bi_row0 = [
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]
    bi_row1 = [
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 0],  # padded queries: their own key only (finite softmax), no document
        [0, 0, 0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],
    ]
    mask = torch.tensor([bi_row0, bi_row1], dtype=torch.bool)[:, None]
    return mask & torch.ones(8, 8, dtype=torch.bool).tril() if causal else mask


@pytest.mark.parametrize("causal", [True, False])
def test_mask_tensors_by_hand(causal):
    expected = _expected(causal)
    sdpa = document_attention_mask(DOCUMENTS, PADDING, causal=causal, implementation="sdpa")
    assert sdpa.dtype == torch.bool and torch.equal(sdpa, expected)
    eager = document_attention_mask(DOCUMENTS, PADDING, causal=causal, implementation="eager", dtype=torch.bfloat16)
    assert eager.dtype == torch.bfloat16 and eager.shape == (2, 1, 8, 8)
    assert torch.equal(eager == 0, expected)
    assert bool((eager[~expected] == torch.finfo(torch.bfloat16).min).all())
    # padding from attention_mask alone (document ids not marked) gives the same mask
    unmarked = DOCUMENTS.clamp(min=0)
    assert torch.equal(document_attention_mask(unmarked, PADDING, causal=causal, implementation="sdpa"), expected)


def test_padded_rows_finite_under_sdpa():
    mask = document_attention_mask(DOCUMENTS, PADDING, causal=True, implementation="sdpa")
    q = torch.linspace(-1, 1, 2 * 2 * 8 * 4).reshape(2, 2, 8, 4)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    assert torch.isfinite(out).all()


def test_position_ids_restart():
    expected = torch.tensor([[0, 1, 2, 0, 0, 1, 2, 3], [0, 1, 0, 1, 2, 0, 1, 2]])
    assert torch.equal(document_position_ids(DOCUMENTS), expected)


def test_isolate_documents_inputs():
    batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "attention_mask": PADDING, "labels": PADDING}
    assert isolate_documents(batch, causal=True, implementation="sdpa") is batch  # nothing to isolate
    out = isolate_documents({**batch, "document_ids": DOCUMENTS}, causal=True, implementation="sdpa")
    assert "document_ids" not in out and out["labels"] is PADDING
    assert torch.equal(out["attention_mask"], _expected(True))
    assert torch.equal(out["position_ids"], document_position_ids(DOCUMENTS))  # derived when the batch has none
    given = torch.arange(8).expand(2, 8)
    kept = isolate_documents(
        {**batch, "document_ids": DOCUMENTS, "position_ids": given}, causal=False, implementation="eager"
    )
    assert kept["position_ids"] is given and kept["attention_mask"].dtype == torch.float32
    # flash: no mask at all, varlen kwargs over the 16 flattened tokens (row 1's padding is a segment of its own)
    flash = isolate_documents({**batch, "document_ids": DOCUMENTS}, causal=True, implementation="flash_attention_2")
    assert "attention_mask" not in flash and flash["cu_seq_lens_q"].tolist() == [0, 3, 4, 8, 10, 13, 16]
    assert flash["max_length_q"] == flash["max_length_k"] == 4
    with pytest.raises(ValueError, match="prefix_mask.*flash"):
        prefixed = {**batch, "document_ids": DOCUMENTS, "prefix_mask": PADDING.bool()}
        isolate_documents(prefixed, causal=True, implementation="flash_attention_2")
    with pytest.raises(ValueError, match="sdpa"):
        isolate_documents({**batch, "document_ids": DOCUMENTS}, causal=True, implementation="paged_attention")


# ---- exactness on tiny models ------------------------------------------------------------------------------------

LENGTHS = [3, 1, 4]  # one packed row, T = 8


def _llama(implementation, bidirectional):
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=64, max_position_embeddings=32)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation(implementation)
    if bidirectional:
        set_bidirectional(model, True)
    return model


def _bert(implementation):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
    )
    model = BertForMaskedLM(config).eval()
    model.set_attn_implementation(implementation)
    return model


MODELS = {
    "llama-clm": (lambda impl: _llama(impl, False), True),
    "llama-mlm": (lambda impl: _llama(impl, True), False),
    "bert-mlm": (_bert, False),
}


# flex_attention: the BlockMask path, forward only (torch 2.13 has no flex backward on CPU). Each new sequence
# length recompiles transformers' compiled flex kernel on CPU (~43 s for each Llama case, measured), so the suite
# runs the BERT case (~5 s); Llama and Qwen2, causal and with a prefix, passed the same check through the probe.
CASES = [(name, impl) for name in MODELS for impl in ("eager", "sdpa")] + [("bert-mlm", "flex_attention")]


@pytest.mark.parametrize("name, implementation", CASES)
@torch.no_grad()
def test_packed_logits_equal_documents_alone(name, implementation):
    build, causal = MODELS[name]
    model = build(implementation)
    ids = ((torch.arange(8) * 5 + 7) % 63)[None, :]  # (1, 8)
    document_ids = torch.repeat_interleave(torch.arange(len(LENGTHS)), torch.tensor(LENGTHS))[None, :]
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None, :]  # restarting per document
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": positions}
    inputs = isolate_documents(
        {**batch, "document_ids": document_ids}, causal=causal, implementation=implementation, dtype=torch.float32
    )
    isolated = model(**inputs).logits  # (1, 8, V)
    shared = model(**batch).logits  # plain padding mask: documents see each other
    start, differs = 0, []
    for n in LENGTHS:
        alone = model(input_ids=ids[:, start : start + n]).logits  # (1, n, V), the model's own positions
        torch.testing.assert_close(isolated[:, start : start + n], alone, atol=1e-5, rtol=0)
        differs.append(float((shared[:, start : start + n] - alone).abs().max()))
        start += n
    # shared attention: under causal attention the first document is unaffected, every later one must move
    assert all(gap > 1e-4 for gap in differs[1:]) and (causal or differs[0] > 1e-4)
    assert supports_document_mask(model) is True


def test_supports_refuses_flash():
    model = _llama("eager", False)
    model.config._attn_implementation = "flash_attention_2"  # only the name is read: no kernel runs
    result = supports_document_mask(model)
    assert isinstance(result, str) and "flash_attention_2" in result
