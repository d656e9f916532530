"""PretrainingTrainer keeps documents apart when the features carry `document_lengths`: with
`attention_on_device=True` (the recipe) the collators send `document_ids` / `position_ids` and the trainer builds
the (B, 1, T, T) mask on the device at the step; the default collators' own isolation gives it the same loss."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_pretrain import PretrainingArguments, PretrainingTrainer
from hf_pretrain.collators import DataCollatorForCausalLM, DataCollatorForMaskedLM
from hf_pretrain.modeling_masked_llama import LlamaForMaskedLM

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip


def documents(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 60, (n,), generator=generator).tolist() for n in lengths]


def trainer_for(model, collator, eval_dataset, tmp_path, objective="clm"):
    args = PretrainingArguments(
        output_dir=str(tmp_path),
        objective=objective,
        per_device_eval_batch_size=8,
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,  # else the Trainer drops document_lengths (no model input) before the collator
    )
    return PretrainingTrainer(model=model, args=args, eval_dataset=eval_dataset, data_collator=collator)


@pytest.mark.parametrize("attention_on_device", [True, False])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_packed_row_scores_like_its_documents_alone(tokenizer, tmp_path, attn, attention_on_device):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY, attn_implementation=attn)).eval()
    collator = DataCollatorForCausalLM(tokenizer, attention_on_device=attention_on_device)
    lengths = [5, 1, 7, 3]  # a one-token document included
    docs = documents(lengths)
    packed = [{"input_ids": sum(docs, []), "document_lengths": lengths}]
    isolated = trainer_for(model, collator, packed, tmp_path).evaluate()["eval_loss"]
    # Each document alone: CLM predicts n - 1 tokens of a document of n; the row's loss is their token-weighted mean.
    alone = [
        (trainer_for(model, collator, [{"input_ids": d}], tmp_path).evaluate()["eval_loss"], len(d) - 1)
        for d in docs
        if len(d) > 1
    ]
    expected = sum(loss * n for loss, n in alone) / sum(n for _, n in alone)
    assert isolated == pytest.approx(expected, abs=1e-5)
    shared = trainer_for(model, collator, [{"input_ids": sum(docs, [])}], tmp_path).evaluate()["eval_loss"]
    assert abs(shared - expected) > 1e-3  # the same row without its document lengths: documents see each other


def test_masked_lm_on_packed_rows_trains_with_isolated_documents(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = LlamaForMaskedLM(LlamaConfig(**TINY, attn_implementation="sdpa"))
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.3, seed=0, attention_on_device=True)
    rows = [{"input_ids": sum(documents([6, 2, 8], seed), []), "document_lengths": [6, 2, 8]} for seed in range(16)]
    args = PretrainingArguments(
        output_dir=str(tmp_path), objective="mlm", max_steps=3, per_device_train_batch_size=4, report_to=[],
        use_cpu=True, eval_strategy="no", save_strategy="no", logging_steps=1, learning_rate=1e-3,
        remove_unused_columns=False,
    )  # fmt: skip
    trainer = PretrainingTrainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    trainer.train()
    assert trainer._documents_probed == "bidirectional"  # the isolation was probed on the model, then used
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
