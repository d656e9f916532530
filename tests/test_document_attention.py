"""`document_attention` in the recipe: decided and probed once, kept by the collator wrapper, used in training and
evaluation alike; a run's held-out loss is exactly the loss of its documents scored each alone."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from _runs import pretrain
from transformers import AutoModelForCausalLM

import hf_pretrain.pipeline
from hf_pretrain.arguments import DataArguments
from hf_pretrain.data.curriculum import CurriculumCollator, split_document_lengths
from hf_pretrain.data.tokenizer import train_tokenizer
from hf_pretrain.resolve import load_resolved

WORDS = ["the", "a", "of", "and", "to", "river", "stone", "light", "quiet", "north", "wind", "carries", "seeds", "over", "old", "walls", "fields"]  # fmt: skip
TINY = [
    "--model_preset", "llama-tiny", "--block_size", "32", "--per_device_train_batch_size", "4",
    "--per_device_eval_batch_size", "64", "--learning_rate", "3e-3", "--logging_steps", "1", "--seed", "0",
    "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no", "--warmup_steps", "0",
    "--decay_steps", "1",
]  # fmt: skip


def _texts(count, seed, low=3, high=30):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(low, high))) for _ in range(count)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Short documents (a few to a few dozen tokens, so blocks of 32 hold several), one source, one tokenizer."""
    root = tmp_path_factory.mktemp("documents")
    path = root / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in _texts(160, 1)))
    tokenizer = train_tokenizer(_texts(200, 3), vocab_size=400)
    tokenizer.save_pretrained(root / "tokenizer")
    sources = json.dumps([{"name": "docs", "data_files": [str(path)], "weight": 1.0}])
    return {"argv": ["--data_sources", sources, "--tokenizer_name_or_path", str(root / "tokenizer")]}


class Recorder(hf_pretrain.pipeline.PretrainingTrainer):
    """The run's trainer, and every batch its steps received on the device."""

    last = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []
        Recorder.last = self

    def _prepare_inputs(self, inputs):
        self.batches.append({key: value for key, value in inputs.items() if torch.is_tensor(value)})
        return super()._prepare_inputs(inputs)


# --- resolved once ---------------------------------------------------------------------------------------------------


def test_isolated_is_the_default_and_written_to_the_resolved_config(corpus, tmp_path, capsys):
    assert DataArguments().document_attention == "isolated"
    pretrain.main([*TINY, *corpus["argv"], "--max_steps", "2", "--output_dir", str(tmp_path / "run"), "--dry_run"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["document_attention"] == "isolated"
    assert printed["resolved_run"]["document_attention"] == "isolated"
    assert printed["remove_unused_columns"] is False  # document_lengths must reach the collator wrapper


@pytest.mark.parametrize(
    "preset, extra, message",
    [
        ("t5-tiny", ["--objective", "span_corruption"], "t5 is an encoder-decoder"),
        ("deberta-v2-tiny", ["--objective", "mlm"], "rejects the mask"),
    ],
)
def test_a_model_that_cannot_isolate_stops_before_any_data_is_read(corpus, tmp_path, preset, extra, message):
    argv = [*TINY, *corpus["argv"], "--model_preset", preset, *extra, "--max_steps", "2"]
    with pytest.raises(ValueError, match="document_attention: isolated is not possible") as error:
        pretrain.main([*argv, "--output_dir", str(tmp_path / "run")])
    assert message in str(error.value) and "Set document_attention: shared" in str(error.value)
    assert not (tmp_path / "run" / "tokenizer").exists()
    pretrain.main([*argv, "--document_attention", "shared", "--output_dir", str(tmp_path / "shared"), "--dry_run"])


def test_padding_free_needs_one_row_per_batch(corpus, tmp_path):
    argv = [*TINY, *corpus["argv"], "--packing", "false", "--max_tokens_per_batch", "128", "--max_steps", "2"]
    with pytest.raises(ValueError, match="set per_device_train_batch_size: 1"):
        pretrain.main([*argv, "--output_dir", str(tmp_path / "run"), "--dry_run"])


# --- the collator wrapper ----------------------------------------------------------------------------------------


def test_curriculum_rows_carry_their_own_document_pieces():
    assert split_document_lengths([3, 6, 3], 4) == [[3, 1], [4], [1, 3]]
    assert split_document_lengths([8], 4) == [[4], [4]]
    seen = []
    wrapper = CurriculumCollator(seen.extend, curriculum=None, documents=True)
    wrapper([{"input_ids": [1, 2, 3], "document_lengths": [2, 1], "source_id": 0, "block_index": 7}])
    assert seen == [{"input_ids": [1, 2, 3], "document_lengths": [2, 1]}]
    shared = []
    CurriculumCollator(shared.extend, curriculum=None)([{"input_ids": [1, 2], "document_lengths": [2]}])
    assert shared == [{"input_ids": [1, 2]}]


# --- the run ---------------------------------------------------------------------------------------------------------


def _documents_alone_loss(model, blocks):
    """Token-mean next-token loss of every document piece of `blocks` run on its own (no other document in sight)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, pieces in zip(blocks["input_ids"], blocks["document_lengths"]):
            ids = torch.tensor(ids)
            for piece in torch.split(ids, list(pieces)):
                if len(piece) < 2:
                    continue
                logits = model(input_ids=piece[None]).logits[0, :-1]
                total += F.cross_entropy(logits.float(), piece[1:], reduction="sum").item()
                count += len(piece) - 1
    return total / count


def _shared_loss(model, blocks):
    ids = torch.tensor(blocks["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten()).item()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_an_isolated_run_trains_and_evaluates_each_document_alone(corpus, tmp_path, monkeypatch, attn):
    monkeypatch.setattr(hf_pretrain.pipeline, "PretrainingTrainer", Recorder)
    out = tmp_path / "run"
    argv = [*TINY, *corpus["argv"], "--attn_implementation", attn, "--max_steps", "2"]
    metrics = pretrain.main([*argv, "--output_dir", str(out)])
    trainer = Recorder.last
    first = trainer.batches[0]
    # Documents reached the device as compact columns: no (T, T) mask came out of the DataLoader.
    assert first["document_ids"].max() > 0 and first["position_ids"].shape == first["input_ids"].shape
    assert all(value.dim() <= 2 for value in first.values())
    blocks = trainer.eval_dataset[:]
    model = AutoModelForCausalLM.from_pretrained(out, attn_implementation=attn).eval()
    alone = _documents_alone_loss(model, blocks)
    assert metrics["eval_loss"] == pytest.approx(alone, rel=1e-5, abs=1e-6)
    assert abs(_shared_loss(model, blocks) - alone) > 1e-3  # sharing attention would have scored otherwise
    _, derived = load_resolved(str(out))
    assert derived["document_attention"] == "isolated"


def test_shared_attention_is_todays_packing(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_pretrain.pipeline, "PretrainingTrainer", Recorder)
    out = tmp_path / "run"
    argv = [*TINY, *corpus["argv"], "--document_attention", "shared", "--max_steps", "2"]
    metrics = pretrain.main([*argv, "--output_dir", str(out)])
    trainer = Recorder.last
    assert "document_ids" not in trainer.batches[0] and "position_ids" not in trainer.batches[0]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    blocks = trainer.eval_dataset[:]
    assert metrics["eval_loss"] == pytest.approx(_shared_loss(model, blocks), rel=1e-5)


# --- packed blocks and padding-free rows of the same documents -----------------------------------------------------


def _tiling_corpus(folder, tokenizer, blocks: int, block_size: int, seed: int = 0) -> str:
    """Documents whose framed lengths (tokens + EOS) tile blocks of `block_size` exactly, so packed blocks and
    padding-free rows hold the same whole documents in the same order."""
    from hf_pretrain.data.packing import encode_documents

    rng = np.random.default_rng(seed)
    pool = [" ".join(rng.choice(WORDS, rng.integers(1, 5))) for _ in range(600)]
    by_length = {}
    for text, length in zip(pool, encode_documents(tokenizer, pool)[1].tolist()):
        by_length.setdefault(length, []).append(text)
    assert {2, 3} <= set(by_length)  # any remainder >= 2 can be filled
    texts = []
    for _ in range(blocks):
        remaining = block_size
        while remaining:
            fits = [n for n in by_length if n <= remaining and remaining - n != 1]
            n = remaining if remaining in by_length else int(rng.choice(fits))
            texts.append(by_length[n][int(rng.integers(len(by_length[n])))])
            remaining -= n
    path = folder / "tiling.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return str(path)


def test_packed_isolated_blocks_train_exactly_like_padding_free_rows(tmp_path):
    from hf_pretrain.data.tokenizer import load_tokenizer

    tokenizer = train_tokenizer(_texts(200, 3), vocab_size=400)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    data = _tiling_corpus(tmp_path, load_tokenizer(str(tmp_path / "tokenizer")), blocks=8, block_size=32)
    common = [
        "--model_preset", "llama-tiny", "--block_size", "32", "--data_files", data, "--validation_fraction", "0",
        "--tokenizer_name_or_path", str(tmp_path / "tokenizer"), "--train_sampling_strategy", "sequential",
        "--learning_rate", "3e-3", "--logging_steps", "1", "--seed", "0", "--report_to", "none",
        "--save_strategy", "no", "--eval_strategy", "no", "--warmup_steps", "0", "--decay_steps", "1",
        "--max_steps", "2", "--attn_implementation", "eager",
    ]  # fmt: skip
    packed = tmp_path / "packed"
    pretrain.main([*common, "--per_device_train_batch_size", "2", "--output_dir", str(packed)])
    free = tmp_path / "free"
    pretrain.main(
        [*common, "--packing", "false", "--max_tokens_per_batch", "64", "--per_device_train_batch_size", "1"]
        + ["--per_device_eval_batch_size", "1", "--output_dir", str(free)]
    )
    from _runs import train_logs

    packed_losses = [entry["loss"] for _, entry in sorted(train_logs(packed).items())]
    free_losses = [entry["loss"] for _, entry in sorted(train_logs(free).items())]
    assert len(packed_losses) == len(free_losses) == 2
    assert free_losses == pytest.approx(packed_losses, rel=1e-5)
    shared = tmp_path / "shared"
    pretrain.main([*common, "--per_device_train_batch_size", "2", "--document_attention", "shared"]
                  + ["--output_dir", str(shared)])  # fmt: skip
    shared_losses = [entry["loss"] for _, entry in sorted(train_logs(shared).items())]
    assert abs(shared_losses[0] - packed_losses[0]) > 1e-4  # the documents of a block did see each other there
