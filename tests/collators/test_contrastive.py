"""DataCollatorForContrastive and InfoNCE: pairs, keyed SimCSE-style views, duplicates, training an embedding model."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaModel, Trainer, TrainingArguments

from hf_pretrain.collators import DataCollatorForContrastive
from hf_pretrain.evaluation import BiEncoder
from hf_pretrain.losses import info_nce_loss, mean_pool


def test_supervised_pairs_are_padded_with_masks_and_negatives(tokenizer):
    pad = tokenizer.pad_token_id
    features = [
        {"query_input_ids": [300, 301, 302], "positive_input_ids": [310], "negative_input_ids": [320, 321]},
        {"query_input_ids": [303], "positive_input_ids": [311, 312], "negative_input_ids": [322]},
    ]
    batch = DataCollatorForContrastive(tokenizer)(features)
    assert batch["query_input_ids"].tolist() == [[300, 301, 302], [303, pad, pad]]
    assert batch["query_attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["positive_input_ids"].tolist() == [[310, pad], [311, 312]]
    assert batch["negative_input_ids"].tolist() == [[320, 321], [322, pad]]
    assert batch["negative_attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["duplicates"].shape == (2, 4) and not batch["duplicates"].any()
    truncated = DataCollatorForContrastive(tokenizer, max_length=2)(features)
    assert truncated["query_input_ids"].tolist() == [[300, 301], [303, pad]]


def test_duplicate_positives_and_negatives_are_flagged(tokenizer):
    features = [
        {"query_input_ids": [300], "positive_input_ids": [310, 311], "negative_input_ids": [312]},
        {"query_input_ids": [301], "positive_input_ids": [310, 311], "negative_input_ids": [313]},
        {"query_input_ids": [302], "positive_input_ids": [314], "negative_input_ids": [310, 311]},
    ]
    duplicates = DataCollatorForContrastive(tokenizer)(features)["duplicates"]
    # Documents: positives 0..2, then negatives 3..5. [310, 311] is positive 0, positive 1 and negative 5.
    assert duplicates.tolist() == [
        [False, True, False, False, False, True],
        [True, False, False, False, False, True],
        [False, False, False, False, False, False],
    ]


def test_views_are_keyed_by_the_sample_and_never_drop_special_tokens(tokenizer):
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    sample = {"input_ids": [bos, *range(300, 340), eos]}
    other = {"input_ids": [bos, *range(350, 360), eos]}
    collator = DataCollatorForContrastive(tokenizer, drop_probability=0.3, seed=7)
    alone = collator([sample])
    mixed = collator([other, sample])  # another batch composition and padding width
    for key in ("query", "positive"):
        row = mixed[f"{key}_input_ids"][1][mixed[f"{key}_attention_mask"][1] == 1]
        assert row.tolist() == alone[f"{key}_input_ids"][0].tolist()
    query, positive = alone["query_input_ids"][0].tolist(), alone["positive_input_ids"][0].tolist()
    assert query != positive  # two different views
    for view in (query, positive):
        assert view[0] == bos and view[-1] == eos
        assert 20 < len(view) < 42 and view[1:-1] == sorted(view[1:-1])  # about 30% deleted; order kept
    assert (
        DataCollatorForContrastive(tokenizer, drop_probability=0.3, seed=8)([sample])["query_input_ids"][0].tolist()
        != query
    )
    collator.set_epoch(1)
    assert collator([sample])["query_input_ids"][0].tolist() != query
    same = DataCollatorForContrastive(tokenizer, drop_probability=0.0)([sample])
    assert torch.equal(same["query_input_ids"], same["positive_input_ids"])


def test_invalid_settings_are_refused(tokenizer):
    with pytest.raises(ValueError, match="drop_probability"):
        DataCollatorForContrastive(tokenizer, drop_probability=1.0)
    with pytest.raises(ValueError, match="max_length"):
        DataCollatorForContrastive(tokenizer, max_length=0)


def test_info_nce_matches_a_hand_computed_value():
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    documents = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -1.0]])  # the third is a hard negative
    # Cosines: q0 → (1, 1/√2, 0), q1 → (0, 1/√2, -1); temperature 0.5 doubles them.
    s = 2 / math.sqrt(2)
    expected = (
        -math.log(math.exp(2) / (math.exp(2) + math.exp(s) + 1))
        - math.log(math.exp(s) / (1 + math.exp(s) + math.exp(-2)))
    ) / 2
    assert info_nce_loss(queries, documents, temperature=0.5).item() == pytest.approx(expected, rel=1e-5)
    # A duplicate of q0's positive leaves the denominator.
    duplicates = torch.tensor([[False, True, False], [False, False, False]])
    without = (
        -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(s) / (1 + math.exp(s) + math.exp(-2)))
    ) / 2
    assert info_nce_loss(queries, documents, 0.5, duplicates=duplicates).item() == pytest.approx(without, rel=1e-5)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0], [1, 1, 1]])).tolist() == [[2.0, 3.0], [7.0, 7.0]]


def _backbone():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    return LlamaModel(config)


def test_a_bi_encoder_learns_pairs_with_in_batch_negatives(tokenizer):
    # Each pair shares a "topic" token; the encoder must learn to match them against the batch's other passages.
    features = [{"query_input_ids": [300 + i, 400 + j], "positive_input_ids": [300 + i, 450 + j]}
                for i in range(8) for j in range(2)]  # fmt: skip
    model = BiEncoder(_backbone(), temperature=0.1)
    collator = DataCollatorForContrastive(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        batch = collator([features[(step * 8 + k) % len(features)] for k in range(8)])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_unsupervised_views_train_in_the_transformers_trainer(tokenizer, tmp_path):
    texts = [[tokenizer.bos_token_id, *range(300 + 5 * i, 330 + 5 * i), tokenizer.eos_token_id] for i in range(16)]
    model = BiEncoder(_backbone())
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, report_to="none",
                             remove_unused_columns=False, save_strategy="no", use_cpu=True, disable_tqdm=True)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": t} for t in texts],
                      data_collator=DataCollatorForContrastive(tokenizer, drop_probability=0.2, seed=0))  # fmt: skip
    result = trainer.train()
    assert result.global_step == 3 and math.isfinite(result.training_loss)
