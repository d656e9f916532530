"""Training state that changes during a run (masking rate, curriculum length) is a function of each sample's global
block index, which travels with the sample: DataLoader workers (persistent or not, any number) and a resumed run
apply exactly the state of the step that trains on the block (see hf_pretrain/data/block_order.py)."""

import json
import math
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _runs import pretrain

from hf_pretrain.collators import DataCollatorForCausalLM, DataCollatorForMaskedLM
from hf_pretrain.collators.masked import special_token_table
from hf_pretrain.data.block_order import BlockOrderDataset, BlockOrderSampler
from hf_pretrain.data.curriculum import CurriculumCollator, SequenceLengthCurriculum
from hf_pretrain.training import setup
from hf_pretrain.training.callbacks import MaskingRateCallback

WORDS = ["the", "a", "of", "and", "to", "river", "stone", "light", "quiet", "north", "wind", "carries", "seeds", "over", "old", "walls", "fields"]  # fmt: skip
RUN = [
    "--model_preset", "llama-tiny", "--tokenizer_vocab_size", "600", "--block_size", "32", "--objective", "mlm",
    "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--logging_steps", "1", "--seed", "0",
    "--eval_strategy", "no", "--report_to", "none", "--validation_fraction", "0", "--num_train_epochs", "3",
    # a third of the run at length 8, a third at 16, then whole blocks: one stage per epoch
    "--curriculum_lengths", "8", "16", "--curriculum_ends", "0.3333333333", "0.6666666667",
]  # fmt: skip


def masking_rate(step: int) -> float:  # module level: picklable for any DataLoader start method
    return 0.6 if step % 2 == 0 else 0.1


def run(tmp, name, *extra, resume_from=None):
    """One recipe run (classic data, shuffled by the Trainer's sampler); every trained batch, by global step."""
    out = str(tmp / name)
    if resume_from is not None:  # the same run, "interrupted" after this checkpoint
        os.makedirs(out)
        for keep in (resume_from, "tokenizer"):
            shutil.copytree(os.path.join(str(tmp / "full"), keep), os.path.join(out, keep))
        extra = (*extra, "--resume_from_checkpoint", "true")
    seen = SimpleNamespace(batches={})
    attach = setup.attach  # the real one: each run instruments it afresh

    def instrumented(trainer, *args, **kwargs):
        attach(trainer, *args, **kwargs)
        trainer.add_callback(MaskingRateCallback(trainer.data_collator, masking_rate))  # a user's schedule
        seen.blocks, seen.special = len(trainer.train_dataset), special_token_table(trainer.processing_class)
        training_step = trainer.training_step

        def record(model, inputs, num_items_in_batch=None):
            seen.batches[trainer.state.global_step] = {k: inputs[k].clone() for k in ("input_ids", "labels")}
            return training_step(model, inputs, num_items_in_batch)

        trainer.training_step = record

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(setup, "attach", instrumented)
        pretrain.main([*RUN, "--data_files", str(tmp / "docs.jsonl"), "--output_dir", out, *extra])
    return seen


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("block_order")
    rng = np.random.default_rng(0)
    with open(tmp / "docs.jsonl", "w") as handle:
        for _ in range(36):
            handle.write(json.dumps({"text": " ".join(rng.choice(WORDS, rng.integers(4, 12)))}) + "\n")
    workers = ("--dataloader_num_workers", "2", "--dataloader_persistent_workers", "true")
    full = run(tmp, "full", *workers, "--save_steps", "4")
    in_process = run(tmp, "in_process", "--save_strategy", "no")
    resumed = run(tmp, "resumed", *workers, "--save_strategy", "no", resume_from="checkpoint-4")
    return full, in_process, resumed


def steps_per_epoch(seen) -> int:
    return math.ceil(seen.blocks / 4)


def test_the_runs_span_three_epochs_with_a_partial_last_step(runs):
    full, _, _ = runs
    assert full.blocks % 4 and steps_per_epoch(full) == 3  # 4 (resume) is in the middle of epoch 1
    assert sorted(full.batches) == list(range(9))


def test_the_curriculum_length_follows_the_epoch_in_persistent_workers(runs):
    full, _, _ = runs
    per_epoch = steps_per_epoch(full)
    for step, batch in full.batches.items():
        blocks = 4 if step % per_epoch < per_epoch - 1 else full.blocks - 4 * (per_epoch - 1)
        length = (8, 16, 32)[step // per_epoch]
        assert batch["input_ids"].shape == (blocks * 32 // length, length), step


def test_the_scheduled_masking_rate_is_applied_to_every_batch(runs):
    full, _, _ = runs
    for step, batch in full.batches.items():
        labels = batch["labels"]
        original = torch.where(labels != -100, labels, batch["input_ids"])
        maskable = int((~torch.from_numpy(full.special[original.numpy()])).sum())
        masked, rate = int((labels != -100).sum()), masking_rate(step)
        bound = 4 * math.sqrt(maskable * rate * (1 - rate)) + 1
        assert abs(masked - maskable * rate) <= bound, (step, masked / maskable, rate)


def test_the_masks_do_not_depend_on_the_worker_processes(runs):
    full, in_process, _ = runs
    assert sorted(in_process.batches) == sorted(full.batches)
    for step, batch in full.batches.items():
        for key in ("input_ids", "labels"):
            assert torch.equal(in_process.batches[step][key], batch[key]), (step, key)


def test_a_resumed_run_trains_the_same_batches_as_the_uninterrupted_one(runs):
    full, _, resumed = runs
    assert sorted(resumed.batches) == list(range(4, 9))
    for step, batch in resumed.batches.items():
        for key in ("input_ids", "labels"):
            assert torch.equal(full.batches[step][key], batch[key]), (step, key)


# ---- the parts, without a run ---------------------------------------------------------------------------------


def test_the_sampler_numbers_positions_over_epochs_and_pads_each_epoch_to_whole_steps():
    rows = [{"input_ids": [row]} for row in range(10)]
    dataset = BlockOrderDataset(rows)
    sampler = BlockOrderSampler(torch.utils.data.RandomSampler(range(10)), 10, epoch_stride=12)
    sampler.set_epoch(1)
    order = list(sampler)
    assert [g for g, _ in order] == list(range(12, 22)) and sorted(row for _, row in order) == list(range(10))
    assert [dataset[index]["block_index"] for index in order] == list(range(12, 22))
    assert [dataset[index]["input_ids"] for index in order] == [[row] for _, row in order]
    assert dataset[13] == {"input_ids": [3], "block_index": 13}  # a plain index g: row g % N


def test_a_schedule_installed_through_the_curriculum_wrapper_reaches_the_masked_collator(tokenizer):
    curriculum = SequenceLengthCurriculum.build([8], [2], "steps", 16, blocks_per_step=2, total_steps=4)
    masked = DataCollatorForMaskedLM(tokenizer, seed=0)
    collator = CurriculumCollator(masked, curriculum)
    callback = MaskingRateCallback(collator, lambda step: 1.0 if step == 3 else 0.0, update_epoch=False)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1, world_size=1)
    callback.on_train_begin(args, SimpleNamespace(global_step=0), None)
    words = tokenizer("river stone light quiet north wind carries seeds over old walls fields")["input_ids"]
    features = [{"input_ids": words[:16], "block_index": g, "source_id": 0} for g in (6, 7)]  # step 3
    batch = collator(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape == (2, 16)
    assert bool((batch["labels"] == torch.tensor(features[0]["input_ids"])).all())  # rate 1.0, set by the step
    assert bool((collator([{**features[0], "block_index": 0}])["labels"] == -100).all())  # step 0: rate 0.0
    assert masked.mlm_probability == 0.0  # no block index: the rate the callback sets at every step
    causal = CurriculumCollator(DataCollatorForCausalLM(tokenizer), curriculum)(features)
    assert set(causal) == {"input_ids", "attention_mask", "labels"}  # the block index never reaches the model


def test_mask_tokens_takes_one_rate_per_row(tokenizer):
    collator = DataCollatorForMaskedLM(tokenizer, seed=1)
    ids = tokenizer(" ".join(WORDS * 3))["input_ids"][:40]
    batch = collator.collate([{"input_ids": ids}] * 3)
    labels = collator.mask_tokens(batch, mlm_probability=np.array([0.0, 1.0, 0.5]))["labels"]
    assert (labels[0] == -100).all() and (labels[1] != -100).sum() == (~torch.from_numpy(collator._special[ids])).sum()
    same = collator.mask_tokens(batch, mlm_probability=0.5)["labels"][2]
    assert torch.equal(labels[2], same)  # a row's mask depends on its own rate only
