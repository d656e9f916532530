"""Every family through the recipe: MLM on encoders (BERT, ModernBERT, EuroBERT, ...), CLM on other decoders (GPT-2,
Qwen2, Mistral), CLM→MLM on a non-Llama decoder, continued pretraining of an encoder with its own WordPiece
tokenizer; and the registry's answers (kinds, presets that carry only their own fields, one-line errors)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from _runs import log_history, pretrain, train_logs, wordpiece_bert
from transformers import AutoConfig, AutoModelForMaskedLM, BertForMaskedLM, BertTokenizerFast

from hf_pretrain.model_families import DECODER, ENCODER, ENCODER_DECODER, family_of
from hf_pretrain.models import build_config
from hf_pretrain.presets import MODEL_PRESETS, preset_settings

# A corpus with much repetition, so that a tiny model learns to fill masks within a few dozen steps.
CORPUS = [
    "the cat sat on the mat and the dog sat on the rug.",
    "the quick brown fox jumps over the lazy dog every day.",
    "a bird in the hand is worth two in the bush, they say.",
    "the sun rises in the east and sets in the west.",
] * 30

SMALL = [
    "--tokenizer_vocab_size", "600", "--block_size", "32", "--per_device_train_batch_size", "16",
    "--learning_rate", "3e-3", "--warmup_steps", "5", "--logging_steps", "10", "--eval_strategy", "no",
    "--save_strategy", "no", "--seed", "0", "--mlm_probability", "0.3", "--validation_fraction", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("families") / "corpus.txt"
    path.write_text("\n\n".join(CORPUS))
    return str(path)


def saved_config(output_dir) -> dict:
    with open(os.path.join(output_dir, "config.json")) as handle:
        return json.load(handle)


def first_last(output_dir, key="loss"):
    values = [entry[key] for entry in train_logs(output_dir).values()]
    return values[0], values[-1]


# ---- the registry -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type, kind, masked_lm",
    [
        ("bert", ENCODER, "native"),
        ("roberta", ENCODER, "native"),
        ("distilbert", ENCODER, "native"),
        ("deberta-v2", ENCODER, "native"),
        ("modernbert", ENCODER, "native"),
        ("eurobert", ENCODER, "native"),
        ("llama", DECODER, "masked_decoder"),
        ("qwen2", DECODER, "masked_decoder"),
        ("mistral", DECODER, "masked_decoder"),
        ("gpt2", DECODER, "masked_decoder"),  # GPT-2's attention honours is_causal=False in transformers 5.x
        ("gpt_neo", DECODER, None),  # its attention stays causal: measured by the probe
        ("t5", ENCODER_DECODER, None),
    ],
)
def test_families_are_decided_by_capability(model_type, kind, masked_lm):
    family = family_of(AutoConfig.for_model(model_type))
    assert (family.kind, family.masked_lm) == (kind, masked_lm)


def test_token_type_ids_follow_the_architecture():
    assert family_of(AutoConfig.for_model("bert")).token_type_ids
    assert not family_of(AutoConfig.for_model("distilbert")).token_type_ids
    assert not family_of(AutoConfig.for_model("modernbert")).token_type_ids


@pytest.mark.parametrize("preset", ["gpt2-tiny", "bert-tiny", "modernbert-tiny", "distilbert-tiny"])
def test_presets_carry_only_their_own_architectures_fields(tokenizer, preset):
    config = build_config(preset, tokenizer)
    saved = config.to_diff_dict()
    assert not {"rms_norm_eps", "num_key_value_heads"} & set(saved), saved
    assert config.vocab_size == len(tokenizer) and config.pad_token_id == tokenizer.pad_token_id


def test_a_model_type_override_replaces_the_preset_and_keeps_the_users_fields(tokenizer):
    config = build_config("llama-tiny", tokenizer, {"model_type": "bert", "hidden_act": "gelu_new", "hidden_size": 32})
    assert config.model_type == "bert" and config.hidden_act == "gelu_new" and config.hidden_size == 32
    assert not hasattr(config, "rms_norm_eps") and not hasattr(config, "num_key_value_heads")
    assert preset_settings("llama-tiny", {"hidden_act": "gelu"})["hidden_act"] == "gelu"  # same family: kept


def test_every_preset_builds_with_the_tokenizers_special_tokens(tokenizer):
    for preset in [p for p in MODEL_PRESETS if p.endswith("-tiny")]:
        config = build_config(preset, tokenizer)
        if hasattr(config, "mask_token_id"):
            assert config.mask_token_id == tokenizer.mask_token_id, preset


GPT_NEO = '{"model_type": "gpt_neo", "hidden_size": 64, "num_layers": 2, "num_heads": 4, "attention_types": [[["global"], 2]]}'

# ---- one-line errors, before any work ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--model_preset", "bert-tiny", "--objective", "clm"], "objective='clm' needs a decoder-only model; bert is an encoder"),
        (["--model_preset", "bert-tiny", "--objective", "clm_then_mlm"], "bert is an encoder; an encoder trains with objective: mlm"),
        (["--model_preset", "t5-tiny", "--objective", "mlm"], "t5 is an encoder-decoder"),
        (["--model_preset", "deberta-v2-tiny", "--objective", "mlm", "--attn_implementation", "sdpa"], "no sdpa attention for deberta-v2"),
        (["--config_overrides", GPT_NEO, "--objective", "clm_then_mlm"], "gpt_neo cannot have one .*ignores is_causal"),
    ],
)  # fmt: skip
def test_what_a_family_cannot_do_stops_with_one_line(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message) as error:
        pretrain.main([*SMALL, *arguments, "--output_dir", str(tmp_path), "--max_steps", "2"])
    assert "\n" not in str(error.value)


def test_a_tokenizer_without_a_mask_token_stops_an_mlm_run(tmp_path, corpus_file):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>").save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match="The tokenizer lacks mask_token, which objective 'mlm' needs") as error:
        pretrain.main(
            [*SMALL, "--model_preset", "bert-tiny", "--objective", "mlm", "--data_files", corpus_file]
            + [
                "--tokenizer_name_or_path",
                str(tmp_path / "tok"),
                "--output_dir",
                str(tmp_path / "o"),
                "--max_steps",
                "8",
            ]
        )
    assert "\n" not in str(error.value)


# ---- encoders train MLM from scratch ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["bert-tiny", "modernbert-tiny", "eurobert-tiny"])
def test_encoders_train_mlm_and_load_with_transformers_alone(tmp_path, corpus_file, preset):
    out = str(tmp_path / preset)
    pretrain.main(
        [*SMALL, "--model_preset", preset, "--objective", "mlm", "--data_files", corpus_file, "--max_steps", "60"]
        + ["--output_dir", out]
    )
    (loss_0, loss_1), (accuracy_0, accuracy_1) = first_last(out), first_last(out, "mlm_accuracy")
    print(f"{preset}: loss {loss_0:.3f} -> {loss_1:.3f}, mlm_accuracy {accuracy_0:.3f} -> {accuracy_1:.3f}")
    assert loss_1 < loss_0 - 1.0 and accuracy_1 > accuracy_0 + 0.1, (loss_0, loss_1, accuracy_0, accuracy_1)
    assert saved_config(out)["model_type"] == preset.removesuffix("-tiny")

    # A fresh process without hf_pretrain: AutoModelForMaskedLM and pipeline("fill-mask") on "The <mask> ...".
    script = (
        "import sys, transformers\n"
        "model = transformers.AutoModelForMaskedLM.from_pretrained(sys.argv[1])\n"
        "fill = transformers.pipeline('fill-mask', model=sys.argv[1])\n"
        "out = fill('the cat sat on the <mask>.')\n"
        "assert 'hf_pretrain' not in sys.modules\n"
        "print(type(model).__name__, out[0]['token_str'].strip())\n"
    )
    result = subprocess.run([sys.executable, "-c", script, out], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    name, word = result.stdout.split()[-2:]
    assert name.endswith("ForMaskedLM")
    corpus_tokens = set(" ".join(CORPUS).replace(".", " . ").replace(",", " , ").split())
    assert word in corpus_tokens, result.stdout  # a token of the text it learned, not a special or byte piece


@pytest.mark.parametrize("preset", ["roberta-tiny", "distilbert-tiny", "deberta-v2-tiny"])
def test_more_encoders_train_mlm(tmp_path, corpus_file, preset):
    out = str(tmp_path / preset)
    pretrain.main(
        [*SMALL, "--model_preset", preset, "--objective", "mlm", "--data_files", corpus_file, "--max_steps", "30"]
        + ["--output_dir", out]
        + (["--document_attention", "shared"] if preset == "deberta-v2-tiny" else [])  # it takes no 4D mask
    )
    (loss_0, loss_1), (accuracy_0, accuracy_1) = first_last(out), first_last(out, "mlm_accuracy")
    print(f"{preset}: loss {loss_0:.3f} -> {loss_1:.3f}, mlm_accuracy {accuracy_0:.3f} -> {accuracy_1:.3f}")
    assert loss_1 < loss_0 - 1.0 and accuracy_1 > accuracy_0, (loss_0, loss_1, accuracy_0, accuracy_1)
    assert type(AutoModelForMaskedLM.from_pretrained(out)).__name__.lower().startswith(preset.split("-")[0])


# ---- continued pretraining of an encoder with its own tokenizer -----------------------------------------------


def test_continued_pretraining_of_a_bert_checkpoint_keeps_its_tokenizer(tmp_path, corpus_file):
    source = tmp_path / "bert"
    tokenizer = wordpiece_bert(source, CORPUS)
    before = BertForMaskedLM.from_pretrained(source).state_dict()
    out = str(tmp_path / "dapt")
    pretrain.main(
        [*SMALL, "--model_name_or_path", str(source), "--objective", "mlm", "--whole_word_mask", "true"]
        + ["--data_files", corpus_file, "--max_steps", "30", "--output_dir", out]
    )
    after = AutoModelForMaskedLM.from_pretrained(out)
    assert isinstance(after, BertForMaskedLM) and after.config.vocab_size == len(tokenizer)
    changed = [name for name, value in after.state_dict().items() if not torch.equal(value, before[name])]
    assert "bert.encoder.layer.0.attention.self.query.weight" in changed
    saved = BertTokenizerFast.from_pretrained(out)
    assert saved.get_vocab() == tokenizer.get_vocab() and saved.all_special_tokens == tokenizer.all_special_tokens
    loss_0, loss_1 = first_last(out)
    print(f"bert CPT (WordPiece, whole words): loss {loss_0:.3f} -> {loss_1:.3f}")
    assert loss_1 < loss_0


def test_a_wordpiece_corpus_is_framed_and_masked_by_whole_words(tmp_path):
    from hf_pretrain.collators import DataCollatorForMaskedLM
    from hf_pretrain.data.packing import encode_documents

    tokenizer = wordpiece_bert(tmp_path, ["unbelievable things happen", "believable things"] * 5)
    flat, lengths = encode_documents(tokenizer, ["unbelievable things", "things"])
    tokens = tokenizer.convert_ids_to_tokens(flat.tolist())
    assert tokens[0] == "[CLS]" and tokens[lengths[0] - 1] == "[SEP]" and tokens[-1] == "[SEP]", tokens
    collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, whole_word_mask=True, seed=0)
    ids = tokenizer(["unbelievable things unbelievable"] * 64, add_special_tokens=False)["input_ids"]
    labels = collator([{"input_ids": row} for row in ids])["labels"]
    pieces = tokenizer.convert_ids_to_tokens(ids[0])
    words = torch.tensor([0] + [int(not p.startswith("##")) for p in pieces[1:]]).cumsum(0)  # word of each piece
    for row in labels != -100:  # every word is selected whole or not at all
        for word in words.unique():
            assert row[words == word].all() or not row[words == word].any(), pieces


# ---- decoders other than Llama ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["gpt2-tiny", "qwen2-tiny", "mistral-tiny"])
def test_other_decoders_train_clm(tmp_path, corpus_file, preset):
    out = str(tmp_path / preset)
    pretrain.main(
        [*SMALL, "--model_preset", preset, "--data_files", corpus_file, "--max_steps", "30", "--output_dir", out]
    )
    loss_0, loss_1 = first_last(out)
    print(f"{preset} CLM: loss {loss_0:.3f} -> {loss_1:.3f}")
    assert loss_1 < loss_0 - 1.0
    assert saved_config(out)["model_type"] == preset.removesuffix("-tiny")


def test_clm_then_mlm_on_qwen2_probes_the_attention_at_the_switch(tmp_path, corpus_file, caplog):
    out = str(tmp_path / "qwen2")
    with caplog.at_level("INFO", logger="hf_pretrain"):
        pretrain.main(
            [*SMALL, "--model_preset", "qwen2-tiny", "--objective", "clm_then_mlm", "--switch_fraction", "0.5"]
            + ["--data_files", corpus_file, "--max_steps", "20", "--output_dir", out]
        )
    probes = [r.getMessage() for r in caplog.records if "attention (" in r.getMessage() and "probe" in r.getMessage()]
    assert any("Step 0: causal" in m for m in probes) and any("Step 10: bidirectional" in m for m in probes), probes
    logs = log_history(out)
    assert any("mlm_accuracy" in entry for entry in logs)
    losses = [entry["loss"] for entry in train_logs(out).values()]
    print(f"qwen2-tiny CLM->MLM: loss {losses[0]:.3f} (CLM, step 10) -> {losses[-1]:.3f} (MLM, step 20)")
    assert saved_config(out)["architectures"] == ["Qwen2ForMaskedLM"]


def test_lora_continued_pretraining_of_an_encoder_saves_the_merged_encoder(tmp_path, corpus_file):
    source = tmp_path / "bert"
    wordpiece_bert(source, CORPUS)
    out = str(tmp_path / "lora")
    pretrain.main(
        [*SMALL, "--model_name_or_path", str(source), "--objective", "mlm", "--lora_rank", "4"]
        + ["--data_files", corpus_file, "--max_steps", "8", "--output_dir", out]
    )
    merged, base = AutoModelForMaskedLM.from_pretrained(out), BertForMaskedLM.from_pretrained(source)
    assert isinstance(merged, BertForMaskedLM)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(merged.state_dict()[name], base.state_dict()[name])  # the adapter, merged in
    assert torch.equal(
        merged.state_dict()["bert.embeddings.word_embeddings.weight"],
        base.state_dict()["bert.embeddings.word_embeddings.weight"],
    )
    with open(os.path.join(out, "adapter", "adapter_config.json")) as handle:
        assert json.load(handle)["base_model_name_or_path"] == os.path.abspath(source)


# ---- one loss normalisation for every masked-LM head -----------------------------------------------------------


# BERT's own dropout would draw differently for a batch of 8 and two of 4: switched off to compare exactly.
NO_DROPOUT = {"bert-tiny": '{"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}', "llama-tiny": "{}"}


@pytest.mark.parametrize("preset", ["bert-tiny", "llama-tiny"])
def test_masked_lm_with_accumulation_trains_like_the_whole_batch(tmp_path, corpus_file, preset):
    # BERT's head returns a local mean and ignores num_items_in_batch although its forward takes **kwargs: left to
    # the Trainer, 2 accumulated micro-batches would log (and step with) twice the loss of the whole batch.
    runs = {}
    for name, batch, accumulation in (("whole", "8", "1"), ("accumulated", "4", "2")):
        out = str(tmp_path / name)
        sgd = ["--optim", "sgd", "--learning_rate", "0.5", "--warmup_steps", "0", "--decay_steps", "1"]
        pretrain.main(
            [*SMALL, "--model_preset", preset, "--objective", "mlm", "--data_files", corpus_file, "--max_steps", "3"]
            + ["--config_overrides", NO_DROPOUT[preset], "--per_device_train_batch_size", batch]
            + ["--gradient_accumulation_steps", accumulation, "--logging_steps", "1", *sgd, "--output_dir", out]
        )  # fmt: skip
        runs[name] = [entry["loss"] for entry in train_logs(out).values()]
    assert runs["accumulated"] == pytest.approx(runs["whole"], rel=1e-4), runs


def test_dense_logits_switch_gives_compute_metrics_b_t_v_logits(tokenizer):
    from transformers import TrainingArguments  # noqa: F401  (the trainer's own arguments class is ours)

    from hf_pretrain import PretrainingArguments, PretrainingTrainer
    from hf_pretrain.collators import DataCollatorForMaskedLM
    from hf_pretrain.models import build_model

    shapes = []

    def compute_metrics(prediction):
        shapes.append(prediction.predictions.shape)
        return {}

    blocks = [{"input_ids": tokenizer(text)["input_ids"][:12]} for text in CORPUS[:8]]
    for sparse in (True, False):
        config = build_config("llama-tiny", tokenizer, {"sparse_prediction": sparse})
        model = build_model(config, masked_decoder=True)
        args = PretrainingArguments(
            output_dir="/tmp/unused", objective="mlm", per_device_eval_batch_size=8, report_to=[], use_cpu=True
        )
        collator = DataCollatorForMaskedLM(tokenizer, mlm_probability=0.5, seed=0)
        trainer = PretrainingTrainer(
            model=model, args=args, eval_dataset=blocks, data_collator=collator, compute_metrics=compute_metrics
        )
        metrics = trainer.evaluate()
        assert 0.0 <= metrics["eval_mlm_accuracy"] <= 1.0
    sparse_shape, dense_shape = shapes
    assert len(sparse_shape) == 2 and dense_shape == (8, 12, len(tokenizer)), shapes  # (M, V), then (B, T, V)
