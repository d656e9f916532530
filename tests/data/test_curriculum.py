"""Sequence-length curriculum: stages resolved to whole steps, blocks split evenly, tokens per batch constant."""

import pytest
import torch

from hf_pretrain.collators import DataCollatorForCausalLM
from hf_pretrain.data.curriculum import CurriculumCollator, SequenceLengthCurriculum, check_curriculum


def test_stages_from_steps_fractions_and_tokens():
    by_steps = SequenceLengthCurriculum.build([128, 256], [100, 300], "steps", 512, 8, total_steps=1000)
    assert by_steps.stages == ((0, 128), (100, 256), (300, 512))
    by_fraction = SequenceLengthCurriculum.build([128, 256], [0.1, 0.3], "steps", 512, 8, total_steps=1000)
    assert by_fraction.stages == by_steps.stages
    # 8 blocks of 512 per step = 4096 tokens per step; 409,601 tokens are reached during step 101.
    by_tokens = SequenceLengthCurriculum.build([128], [409_601], "tokens", 512, 8, total_steps=1000)
    assert by_tokens.stages == ((0, 128), (101, 512))
    assert [by_steps.length_of_block(b) for b in (0, 799, 800, 2399, 2400)] == [128, 128, 256, 256, 512]


@pytest.mark.parametrize(
    "lengths, ends, unit, message",
    [
        ([128], [0.1, 0.2], "steps", "one end per shorter length"),
        ([256, 128], [1, 2], "steps", "must increase and stay below block_size"),
        ([512], [1], "steps", "must increase and stay below block_size"),
        ([100], [1], "steps", r"\[100\] do not divide block_size=512"),
        ([128, 256], [0.5, 20], "steps", "positive counts .* or all fractions"),
        ([128, 256], [20, 10], "steps", "must increase"),
        ([128], [10.5], "steps", "whole numbers"),
        ([128], [10], "epochs", "curriculum_unit must be one of"),
    ],
)
def test_bad_settings_name_the_field(lengths, ends, unit, message):
    with pytest.raises(ValueError, match=message):
        check_curriculum(lengths, ends, unit, 512)


def test_a_stage_that_ends_after_the_run_is_an_error():
    with pytest.raises(ValueError, match="resolve to steps \\[2000\\] of a 1000-step run"):
        SequenceLengthCurriculum.build([128], [2000], "steps", 512, 8, total_steps=1000)


def test_the_collator_splits_blocks_and_keeps_tokens_per_batch(tokenizer):
    curriculum = SequenceLengthCurriculum.build([4, 8], [2, 4], "steps", 16, blocks_per_step=2, total_steps=10)
    collator = CurriculumCollator(DataCollatorForCausalLM(tokenizer), curriculum)
    block = list(range(100, 116))

    def batch(indices):
        features = [{"input_ids": block, "block_index": i, "source_id": 1, "document_lengths": [16]} for i in indices]
        return collator(features)

    first = batch([0, 1])  # step 0: rows of 4
    assert first["input_ids"].shape == (8, 4) and first["input_ids"][1].tolist() == block[4:8]
    assert batch([4, 5])["input_ids"].shape == (4, 8)  # step 2: rows of 8
    assert batch([8, 9])["input_ids"].shape == (2, 16)  # step 4 onwards: whole blocks
    for indices in ([0, 1], [4, 5], [8, 9]):
        assert batch(indices)["attention_mask"].sum() == 32  # the same tokens in every batch
    assert batch([20, 21])["input_ids"].shape == (2, 16)  # global blocks 20, 21 (step 10): full length
    assert not hasattr(collator, "set_curriculum_epoch")  # the index carries the epoch: nothing to set
    evaluation = collator([{"input_ids": block, "source_id": 0}])  # no block_index: whole, metadata dropped
    assert evaluation["input_ids"].shape == (1, 16) and set(evaluation) == {"input_ids", "attention_mask", "labels"}
    assert torch.equal(evaluation["labels"], evaluation["input_ids"])
