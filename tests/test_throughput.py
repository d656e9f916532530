"""MFU: the FLOPs-per-token count against FlopCounterMode (exact, on tiny models), PaLM and Chinchilla's published
figures, the peak table's matching, and the trainer's wiring of the run's facts (documents, sparse head)."""

import contextlib
import io

import datasets
import pytest
import torch
from _tiny import VOCAB, one_thread, tiny_llama_config  # noqa: F401  (one_thread: an autouse fixture)
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForMaskedLM, LlamaForCausalLM, ModernBertConfig, ModernBertForMaskedLM

from hf_pretrain.data.block_order import BlockOrderDataset
from hf_pretrain.data.curriculum import CurriculumCollator
from hf_pretrain.modeling_masked_llama import LlamaForMaskedLM
from hf_pretrain.models import build_config, build_model
from hf_pretrain.training.throughput import (
    ThroughputMeter,
    dataset_document_context,
    document_context,
    flop_counted_parameters,
    flops_per_token,
    peak_flops_per_device,
    sparse_head_parameters,
)

T = 16


def test_flops_per_token_is_six_n_plus_attention(tokenizer):
    config = build_config("llama-tiny", tokenizer)  # 2 layers, 4 heads of 16
    assert flops_per_token(config, 1000, 128) == 6 * 1000 + 12 * 2 * 4 * 16 * 128
    # a sparse head of 100 of those weights at 15% of the positions; a mean document context of 32
    assert flops_per_token(config, 1000, 32, head_parameters=100, predicted_fraction=0.15) == pytest.approx(
        6 * 900 + 6 * 100 * 0.15 + 12 * 2 * 64 * 32
    )


def test_flop_counted_parameters_are_the_matmul_weights(tokenizer):
    model = build_model(build_config("llama-tiny", tokenizer))
    total = sum(p.numel() for p in model.parameters())
    norms = (2 * 2 + 1) * 64  # two RMSNorms per layer and the final one: elementwise, no matmul
    assert flop_counted_parameters(model) == total - len(tokenizer) * 64 - norms  # the untied head still counts


# ---- PaLM and Chinchilla ------------------------------------------------------------------------------------------


def test_palm_540b_mfu_is_reproduced():
    # PaLM (Chowdhery et al. 2022), table 1: 118 layers, 48 heads of 256 (d_model 18,432), 540.35B parameters; table 3
    # and appendix B: 238.3K tokens/s at T = 2048 on 6144 TPU v4 chips of 275 TFLOP/s peak give 46.2% MFU.
    class Palm540b:
        num_hidden_layers, num_attention_heads, head_dim, hidden_size = 118, 48, 256, 18432

    mfu = 238.3e3 * flops_per_token(Palm540b, 540.35e9, 2048) / (6144 * 275e12)
    assert round(100 * mfu, 1) == 46.2
    # H·Q, not d_model: 12·L·d·T would overcount the attention by 1.5x and give 46.5%
    Palm540b.head_dim = None
    assert round(100 * 238.3e3 * flops_per_token(Palm540b, 540.35e9, 2048) / (6144 * 275e12), 1) == 46.5


# Chinchilla (Hoffmann et al. 2022), appendix F, table A4: layers, d_model, ffw_size, heads, k/q size, and the ratio of
# their detailed FLOPs count to 6ND, at seq_len 2048 and vocabulary 32,000.
CHINCHILLA_A4 = [
    (10, 640, 2560, 10, 64, 1.03),  # 73M
    (20, 1024, 4096, 16, 64, 1.10),  # 305M
    (24, 1280, 5120, 10, 128, 1.08),  # 552M
    (26, 1792, 7168, 14, 128, 1.04),  # 1.1B
    (28, 2048, 8192, 16, 128, 1.03),  # 1.6B
    (40, 3584, 14336, 28, 128, 0.99),  # 6.8B
]


@pytest.mark.parametrize(("layers", "d", "ffw", "heads", "kq", "ratio"), CHINCHILLA_A4)
def test_chinchilla_table_a4_is_reproduced(layers, d, ffw, heads, kq, ratio):
    seq, vocab = 2048, 32000

    class Config:
        num_hidden_layers, num_attention_heads, head_dim, hidden_size = layers, heads, kq, d

    # Their N (as in the parameters column): per layer q, k, v, relative-position and output projections, the MLP and
    # the layer norms, plus the final norm and the output layer. The 6ND side uses it.
    per_layer = 3 * d * d + 3 * d + d * d + 2 * d + d * d + d + 2 * d * ffw + ffw + d + 4 * d
    parameters = layers * per_layer + 2 * d + d * vocab
    # Their detailed count = our matmuls (4·d·H·Q + 2·d·ffw weights per layer) and attention term, plus the softmax
    # they also count (3·H·T² per layer forward, x3 with the backward: elementwise, not a model FLOP here). Embeddings
    # and logits are left out of their table despite the text (a known erratum: with them 73M would be 1.58).
    matmuls = layers * (4 * d * heads * kq + 2 * d * ffw)
    softmax = 3 * 3 * layers * heads * seq
    assert round((flops_per_token(Config, matmuls, seq) + softmax) / (6 * parameters), 2) == ratio


# ---- against FlopCounterMode: forward + backward on tiny models, on CPU ------------------------------------------


def counted_flops(model, **inputs) -> int:
    """FLOPs FlopCounterMode counts for one forward + backward: mm/addmm/bmm/sdpa only (no norms, softmax, loss)."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(**inputs).loss.backward()
    return counter.get_total_flops()


def llama(cls=LlamaForCausalLM, **overrides):
    # eager: its attention is matmuls that FlopCounterMode sees (on CPU, sdpa's kernel has no flop formula there)
    torch.manual_seed(0)
    return cls(tiny_llama_config(**overrides)).train()


def eager(model):
    model.config._attn_implementation = "eager"
    return model


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, VOCAB, (2, T), generator=torch.Generator().manual_seed(0))


def test_causal_llama_matches_flop_counter_exactly(ids):
    model = eager(llama())
    # FlopCounterMode counts the full T x T scores of the causal mask too, as PaLM's accounting does
    expected = flops_per_token(model.config, flop_counted_parameters(model), T) * ids.numel()
    assert counted_flops(model, input_ids=ids, labels=ids) == expected


def test_bidirectional_encoder_matches_flop_counter_exactly(ids):
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    model = BertForMaskedLM(config).train()
    # BERT's position and token-type embeddings are lookups too; its head's transform (a d x d dense) is a matmul
    assert flop_counted_parameters(model) == 2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32 + 32 * VOCAB
    expected = flops_per_token(model.config, flop_counted_parameters(model), T) * ids.numel()
    assert counted_flops(model, input_ids=ids, labels=ids) == expected


def test_sparse_masked_llama_head_counts_the_masked_positions_only(ids):
    model = eager(llama(LlamaForMaskedLM))
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]  # 8 of 32 positions predicted
    head = sparse_head_parameters(model)
    assert head == 32 * VOCAB  # lm_head
    per_token = flops_per_token(model.config, flop_counted_parameters(model), T, head_parameters=head,
                                predicted_fraction=0.25)  # fmt: skip
    assert counted_flops(model, input_ids=ids, labels=labels) == per_token * ids.numel()
    model.config.sparse_prediction = False  # the dense head: every position, and the plain count
    assert sparse_head_parameters(model) == 0
    dense = flops_per_token(model.config, flop_counted_parameters(model), T) * ids.numel()
    assert counted_flops(model, input_ids=ids, labels=labels) == dense


def test_modernbert_sparse_head_counts_its_dense_and_decoder_on_the_masked_positions(ids):
    config = ModernBertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=64, global_attn_every_n_layers=2,
                              local_attention=64, sparse_prediction=True, pad_token_id=0, bos_token_id=1,
                              eos_token_id=2, cls_token_id=1, sep_token_id=2, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(config).train()
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    assert sparse_head_parameters(model) == 32 * 32 + 32 * VOCAB  # head.dense and decoder
    per_token = flops_per_token(model.config, flop_counted_parameters(model), T,
                                head_parameters=sparse_head_parameters(model), predicted_fraction=0.25)  # fmt: skip
    assert counted_flops(model, input_ids=ids, labels=labels) == per_token * ids.numel()


def test_isolated_documents_cost_what_the_documents_cost_alone(ids):
    model = eager(llama())
    pieces = [12, 4]  # one packed row of two documents
    row = ids[:1]
    # What flash attention with cu_seq_lens executes: each document over itself, counted here by running them apart.
    alone = sum(counted_flops(model, input_ids=part, labels=part) for part in torch.split(row, pieces, dim=1))
    context = document_context([pieces])
    assert context == (12 * 12 + 4 * 4) / 16
    assert alone == flops_per_token(model.config, flop_counted_parameters(model), context) * T
    # A block-diagonal 4D mask (eager / sdpa) executes the full T x T: more work than the model needs, not counted
    allowed = torch.zeros(T, T, dtype=torch.bool)
    allowed[:12, :12] = allowed[12:, 12:] = True
    mask = torch.where(allowed.tril(), 0.0, torch.finfo(torch.float32).min)[None, None]
    positions = torch.cat([torch.arange(12), torch.arange(4)])[None]
    executed = counted_flops(model, input_ids=row, labels=row, attention_mask=mask, position_ids=positions)
    assert executed == flops_per_token(model.config, flop_counted_parameters(model), T) * T > alone


def test_dataset_document_context_reads_the_blocks_through_their_wrapper():
    data = datasets.Dataset.from_dict({"input_ids": [[0] * 8] * 3, "document_lengths": [[8], [4, 4], [6, 2]]})
    expected = (64 + 16 + 16 + 36 + 4) / 24
    assert dataset_document_context(data) == dataset_document_context(BlockOrderDataset(data)) == expected
    assert dataset_document_context(data, rows=2) == document_context([[8], [6, 2]])  # evenly spaced: first, last
    assert dataset_document_context(data.remove_columns("document_lengths")) is None
    assert dataset_document_context(iter([])) is None  # a stream: unknown


# ---- the peak table ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [("NVIDIA H100 80GB HBM3", "bf16", 989e12), ("NVIDIA H100 PCIe", "bf16", 756e12),
     ("NVIDIA H100 NVL", "bf16", 835e12), ("H100", "bf16", 989e12), ("NVIDIA H200", "bf16", 989e12),
     ("NVIDIA A100-SXM4-80GB", "bf16", 312e12), ("NVIDIA A100-PCIE-40GB", "bf16", 312e12),
     ("NVIDIA A100 80GB PCIe", "bf16", 312e12), ("NVIDIA A10", "bf16", 125e12), ("NVIDIA L40S", "bf16", 362e12),
     ("NVIDIA L40", "bf16", 181e12), ("NVIDIA L4", "bf16", 121e12), ("NVIDIA GeForce RTX 4090", "fp16", 165.2e12),
     ("Tesla V100-SXM2-32GB", "fp16", 125e12),
     ("Tesla V100-SXM2-32GB", "bf16", None),  # no bf16 on a V100
     ("NVIDIA H100 80GB HBM3", "fp32", None),  # fp32 or TF32 is torch's global setting: no guess
     ("NVIDIA A10G", "bf16", None),  # no datasheet
     ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "bf16", None),  # a slice of a GPU
     ("NVIDIA H800", "bf16", None), ("NVIDIA A100X", "bf16", None), ("Some CPU", "bf16", None)],
)  # fmt: skip
def test_peak_flops_by_device_name(name, precision, peak):
    assert peak_flops_per_device(name, precision) == peak


# ---- the meter and the trainer -------------------------------------------------------------------------------------


def test_meter_reports_the_interval_not_the_run(monkeypatch):
    now = iter([10.0, 12.0, 13.0, 14.0])
    monkeypatch.setattr("hf_pretrain.training.throughput.time.perf_counter", lambda: next(now))
    meter = ThroughputMeter(flops_per_token=1e9, peak_flops=1e12)
    assert meter.update(1000) == {}  # the first call only starts the clock
    assert meter.update(5000) == pytest.approx({"tokens_per_second": 2000.0, "mfu": 2.0})
    assert meter.update(6000) == pytest.approx({"tokens_per_second": 1000.0, "mfu": 1.0})
    meter.flops_per_token = None  # isolated documents of a stream: their context is unknown
    assert meter.update(7000) == pytest.approx({"tokens_per_second": 1000.0})


def test_trainer_counts_the_runs_documents_and_sparse_head(tmp_path):
    from hf_pretrain import PretrainingArguments, PretrainingTrainer

    model = llama(LlamaForMaskedLM)
    data = datasets.Dataset.from_dict({"input_ids": [[5] * T] * 2, "document_lengths": [[8, 8], [16]]})
    args = PretrainingArguments(output_dir=str(tmp_path), objective="mlm", max_steps=2, eval_strategy="no",
                                use_cpu=True, mlm_probability=0.3, peak_flops_per_device=1e12, bf16=False)  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = PretrainingTrainer(model=model, args=args, train_dataset=BlockOrderDataset(data), sequence_length=T)
    trainer.data_collator = CurriculumCollator(trainer.data_collator, None, documents=True)
    trainer._throughput_metrics()
    context = (64 + 64 + 256) / 32
    expected = flops_per_token(model.config, flop_counted_parameters(model), context,
                               head_parameters=32 * VOCAB, predicted_fraction=0.3)  # fmt: skip
    assert trainer._throughput.context == context
    assert trainer._throughput.flops_per_token == pytest.approx(expected)
    assert trainer._throughput.peak_flops == 1e12
