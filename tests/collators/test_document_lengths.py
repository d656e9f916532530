"""Document isolation in packed blocks: `document_lengths` → position_ids, document_ids, boundary labels.

Hand-checked layouts of the compact (device) form, `attention_on_device=True` (a row of 3 documents [3, 1, 4], a
row ending mid-document, padding), the causal boundary labels in the shifted (model) and unshifted (CLM→MLM)
conventions, MLM masks unchanged in both forms, padding-free splitting, errors, and exactness: a tiny Llama fed the
collator's output with a block-diagonal causal mask built here from document_ids gives every document the logits
and loss it gets alone. The default form (the batch isolating documents by itself) is `test_drop_in_documents`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import tiny_llama_config
from transformers import LlamaForCausalLM

from hf_pretrain.collators import DataCollatorForCausalLM, DataCollatorForMaskedLM
from hf_pretrain.collators._documents import document_starts
from hf_pretrain.objective_views import MultiObjectiveCollator

IDS_A = [10, 11, 12, 13, 14, 15, 16, 17]  # three documents [3, 1, 4]
IDS_B = [20, 21, 22, 23, 24]  # [2, 3]: its second document continues in the next block
IDS_C = [30, 31, 32]  # one document, padded


def blocks() -> list[dict]:
    return [
        {"input_ids": IDS_A, "document_lengths": [3, 1, 4]},
        {"input_ids": IDS_B, "document_lengths": [2, 3]},
        {"input_ids": IDS_C, "document_lengths": [3]},
    ]


POSITIONS = [[0, 1, 2, 0, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6, 7]]
DOCUMENTS = [[0, 0, 0, 1, 2, 2, 2, 2], [0, 0, 1, 1, 1, -1, -1, -1], [0, 0, 0, -1, -1, -1, -1, -1]]
ON_DEVICE = {"attention_on_device": True}  # the compact form PretrainingTrainer takes


def test_causal_padded_columns_and_boundary_labels(tokenizer):
    batch = DataCollatorForCausalLM(tokenizer, **ON_DEVICE)(blocks())
    assert sorted(batch) == ["attention_mask", "document_ids", "input_ids", "labels", "position_ids"]
    assert batch["position_ids"].tolist() == POSITIONS
    assert batch["document_ids"].tolist() == DOCUMENTS
    assert batch["position_ids"].dtype == batch["document_ids"].dtype == torch.int64
    assert batch["labels"].tolist() == [
        [10, 11, 12, -100, -100, 15, 16, 17],  # 13 and 14 start documents: not predicted from the one before
        [20, 21, -100, 23, 24, -100, -100, -100],
        [30, 31, 32, -100, -100, -100, -100, -100],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1] * 5 + [0] * 3, [1] * 3 + [0] * 5]


def test_pad_to_multiple_of_and_numpy(tokenizer):
    batch = DataCollatorForCausalLM(tokenizer, pad_to_multiple_of=4, return_tensors="np", **ON_DEVICE)(blocks()[1:])
    assert isinstance(batch["document_ids"], np.ndarray)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6, 7]]
    assert batch["document_ids"].tolist() == [[0, 0, 1, 1, 1, -1, -1, -1], [0, 0, 0, -1, -1, -1, -1, -1]]


def test_given_attention_mask_zeros_belong_to_no_document(tokenizer):
    feature = {"input_ids": [5, 6, 7, 8], "attention_mask": [1, 1, 1, 0], "document_lengths": [1, 3]}
    batch = DataCollatorForCausalLM(tokenizer, **ON_DEVICE)([feature])
    assert batch["document_ids"].tolist() == [[0, 1, 1, -1]]
    assert batch["position_ids"].tolist() == [[0, 0, 1, 2]]
    assert batch["labels"].tolist() == [[5, -100, 7, -100]]


def test_single_document_rows_get_default_positions(tokenizer):
    batch = DataCollatorForCausalLM(tokenizer)([{"input_ids": IDS_A, "document_lengths": [8]}])
    plain = DataCollatorForCausalLM(tokenizer)([{"input_ids": IDS_A}])
    assert batch["position_ids"].tolist() == [list(range(8))]
    assert batch["labels"].tolist() == plain["labels"].tolist()


def test_unshifted_targets_drop_each_documents_last_token(tokenizer):
    # CLM→MLM: the masked decoder's CLM phase compares position t with token t + 1 (objective_views).
    causal = DataCollatorForCausalLM(tokenizer, **ON_DEVICE)
    masked = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, seed=0, **ON_DEVICE)
    batch = MultiObjectiveCollator(masked, causal)(blocks())
    assert batch["clm_unshifted::labels"].tolist() == [
        [11, 12, -100, -100, 15, 16, 17, -100],  # 12 and 13 end documents: 13 and 14 start new ones
        [21, -100, 23, 24, -100, -100, -100, -100],
        [31, 32, -100, -100, -100, -100, -100, -100],
    ]
    for view in ("clm_unshifted", "mlm"):
        assert batch[f"{view}::position_ids"].tolist() == POSITIONS
        assert batch[f"{view}::document_ids"].tolist() == DOCUMENTS
    assert "mlm::document_lengths" not in batch and "clm_unshifted::document_lengths" not in batch


def test_document_starts_torch_and_numpy():
    ids = np.array(DOCUMENTS)
    expected = [[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0], [0] * 8]
    assert document_starts(ids).astype(int).tolist() == expected
    assert document_starts(torch.from_numpy(ids)).astype(int).tolist() == expected


@pytest.mark.parametrize("attention_on_device", [True, False])
@pytest.mark.parametrize(
    "options",
    [{}, {"whole_word_mask": True}, {"exact_count": True}, {"pad_to_multiple_of": 8, "mlm_probability": 0.4}],
)
def test_masked_lm_masks_unchanged(tokenizer, options, attention_on_device):
    collator = DataCollatorForMaskedLM(
        tokenizer, **{"mlm_probability": 0.5, "seed": 3, **options}, attention_on_device=attention_on_device
    )
    text = tokenizer(["masked language modelling hides tokens", "causal language modelling"])["input_ids"]
    features = [
        {"input_ids": text[0], "document_lengths": [2, len(text[0]) - 2]},
        {"input_ids": text[1], "document_lengths": [len(text[1])]},
    ]
    with_documents = collator(features)
    without = collator([{"input_ids": f["input_ids"]} for f in features])
    assert with_documents["position_ids"][0, :3].tolist() == [0, 1, 0]
    if attention_on_device:
        assert sorted(with_documents) == sorted([*without, "position_ids", "document_ids"])
        assert with_documents["document_ids"][0, :3].tolist() == [0, 0, 1]
    else:  # the padding mask becomes the (B, 1, T, T) document mask; everything else is the same
        assert sorted(with_documents) == sorted([*without, "position_ids"])
        mask = with_documents.pop("attention_mask")[:, 0] == 0  # (B, T, T) allowed: the additive default form
        padding = without.pop("attention_mask").bool()  # (B, T)
        assert mask[0, :2, :2].all() and not mask[0, :2, 2:].any() and not mask[0, 2:, :2].any()
        assert torch.equal(mask[1], (padding[1][:, None] & padding[1][None, :]) | torch.eye(mask.shape[-1]).bool())
    for key in without:
        assert torch.equal(with_documents[key], without[key]), key


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_padding_free_splits_blocks_into_documents(tokenizer, kind):
    if kind == "causal":
        collator = DataCollatorForCausalLM(tokenizer, padding_free=True)
    else:
        collator = DataCollatorForMaskedLM(tokenizer, padding_free=True, mlm_probability=0.5, seed=1)
    features = [{**f, "source_id": i} for i, f in enumerate(blocks())]
    batch = collator(features)
    # Each piece is a document of its own, exactly as if the pieces were features.
    pieces = []
    for i, f in enumerate(blocks()):
        starts = np.cumsum([0, *f["document_lengths"]])
        pieces += [{"input_ids": f["input_ids"][a:b], "source_id": i} for a, b in zip(starts[:-1], starts[1:])]
    alone = collator(pieces)
    assert sorted(batch) == sorted(alone)
    for key, value in alone.items():
        assert torch.equal(torch.as_tensor(batch[key]), torch.as_tensor(value)), key
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 4, 8, 10, 13, 16]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 2, 3, 0, 1, 0, 1, 2, 0, 1, 2]]
    assert batch["source_id"].tolist() == [0, 0, 0, 1, 1, 2]  # per-example values: one per document
    assert batch["max_length_q"] == 4
    if kind == "causal":
        assert batch["labels"][0, [0, 3, 4, 8, 10, 13]].tolist() == [-100] * 6


def test_padding_free_masking_schedule_per_document(tokenizer):
    collator = DataCollatorForMaskedLM(tokenizer, padding_free=True, seed=0)
    collator.set_masking_schedule(lambda step: 1.0 if step else 0.0)  # block 0: nothing masked; block 1: all
    ids = tokenizer(["masked language modelling hides tokens"])["input_ids"][0]
    features = [{"input_ids": ids, "document_lengths": [3, len(ids) - 3], "block_index": i} for i in (0, 1)]
    labels = collator(features)["labels"][0]
    maskable = ~torch.from_numpy(collator._special[np.array(ids)])
    assert (labels[: len(ids)] == -100).all()
    assert torch.equal(labels[len(ids) :] != -100, maskable)


@pytest.mark.parametrize("attention_on_device", [False, True])
def test_without_document_lengths_nothing_new(tokenizer, attention_on_device):
    for build in (DataCollatorForCausalLM, DataCollatorForMaskedLM):
        batch = build(tokenizer, attention_on_device=attention_on_device)([{"input_ids": IDS_A}, {"input_ids": IDS_B}])
        assert "position_ids" not in batch and "document_ids" not in batch
        assert batch["attention_mask"].tolist() == [[1] * 8, [1] * 5 + [0] * 3]  # the (B, T) padding mask


@pytest.mark.parametrize("padding_free", [False, True])
@pytest.mark.parametrize(
    ("feature", "message"),
    [
        ({"input_ids": [5, 6, 7], "document_lengths": [1, 1]}, "sum to 2, not to its input_ids length 3"),
        ({"input_ids": [5, 6, 7], "document_lengths": [4, -1]}, "must be positive"),
        ({"input_ids": [5, 6, 7], "document_lengths": [3], "document_ids": [0, 0, 0]}, "both 'document_lengths'"),
    ],
)
def test_errors(tokenizer, feature, message, padding_free):
    for collator in (
        DataCollatorForCausalLM(tokenizer, padding_free=padding_free),
        DataCollatorForMaskedLM(tokenizer, padding_free=padding_free),
    ):
        with pytest.raises(ValueError, match=message):
            collator([feature])
        with pytest.raises(ValueError, match="Only some features"):
            collator([{"input_ids": [5, 6]}, {"input_ids": [5], "document_lengths": [1]}])


def test_padded_position_ids_conflict(tokenizer):
    with pytest.raises(ValueError, match="both 'document_lengths' and 'position_ids'"):
        DataCollatorForCausalLM(tokenizer)([{"input_ids": [5, 6], "document_lengths": [2], "position_ids": [0, 1]}])


def _document_mask(document_ids: torch.Tensor, additive: bool) -> torch.Tensor:
    """(B, 1, T, T) block-diagonal causal mask: query i sees key j iff same document, j <= i; padding sees itself
    (a query that sees nothing is NaN under sdpa; its outputs are ignored)."""
    width = document_ids.shape[1]
    same = (document_ids[:, :, None] == document_ids[:, None, :]) & (document_ids[:, None, :] >= 0)
    allowed = (same & torch.ones(width, width, dtype=torch.bool).tril()) | torch.eye(width, dtype=torch.bool)
    allowed = allowed[:, None]
    if not additive:
        return allowed
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_tiny_llama_documents_are_isolated(tokenizer, attention):
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=64, max_position_embeddings=64)
    config._attn_implementation = attention
    model = LlamaForCausalLM(config).eval()
    features = blocks()
    batch = DataCollatorForCausalLM(tokenizer, **ON_DEVICE)(features)
    mask = _document_mask(batch["document_ids"], additive=attention == "eager")
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=batch["position_ids"],
            labels=batch["labels"],
        )
        losses, weights = [], []
        for row, feature in enumerate(features):
            start = 0
            for length in feature["document_lengths"]:
                ids = torch.tensor([feature["input_ids"][start : start + length]])
                alone = model(input_ids=ids, labels=ids)
                torch.testing.assert_close(out.logits[row, start : start + length], alone.logits[0], atol=1e-5, rtol=0)
                if length > 1:
                    losses.append(alone.loss)
                    weights.append(length - 1)  # the targets of a document: every token but its first
                start += length
    expected = (torch.stack(losses) * torch.tensor(weights, dtype=torch.float32)).sum() / sum(weights)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0)
    assert int((batch["labels"][:, 1:] != -100).sum()) == sum(weights)
