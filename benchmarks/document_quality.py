"""Quality at equal steps: the quickstart run (CLM) and its masked-LM twin, trained with `document_attention: shared`
and with `isolated`, each then scored on the same held-out documents, every document alone.

Both settings pack the same blocks of the same documents (same tokenizer, seed and order); they differ only in
whether a block's documents see each other during training. The held-out blocks are rebuilt once with their
`document_lengths` and scored by `hf_pretrain.evaluation.intrinsic`: CLM loss with each document alone (its first
token is context only), and for reference with the block's documents sharing attention; MLM loss and accuracy with
each document alone, on the same keyed masks for both runs.

    python benchmarks/document_quality.py [--max_steps 300] [--output_dir outputs/document_quality]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table  # noqa: E402

from hf_pretrain import DataArguments, ModelArguments, PretrainingArguments, parse_config  # noqa: E402
from hf_pretrain.data.build import held_out_blocks  # noqa: E402
from hf_pretrain.data.tokenizer import load_tokenizer  # noqa: E402
from hf_pretrain.evaluation.intrinsic import score_causal_blocks, score_masked_blocks  # noqa: E402
from hf_pretrain.pipeline import run_pretraining  # noqa: E402
from hf_pretrain.resolve import load_run_arguments  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "recipes", "configs", "quickstart.yaml")


def train(objective: str, attention: str, max_steps: int, output_dir: str) -> str:
    out = os.path.join(output_dir, f"{objective}-{attention}")
    if os.path.isfile(os.path.join(out, "eval_results.json")):
        return out  # already trained (rerunning the benchmark only scores)
    argv = [CONFIG, "--objective", objective, "--document_attention", attention, "--max_steps", str(max_steps)]
    argv += ["--output_dir", out, "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true"]
    run_pretraining(*parse_config((ModelArguments, DataArguments, PretrainingArguments), argv))
    return out


def held_out(run: str):
    """The run's held-out blocks with their document pieces (packed as in both settings), and its tokenizer."""
    _, data_args, training_args = load_run_arguments(run)
    tokenizer = load_tokenizer(run)
    isolated = dataclasses.replace(data_args, document_attention="isolated")
    blocks = held_out_blocks(isolated, tokenizer, training_args.seed)
    return list(blocks["input_ids"]), [list(p) for p in blocks["document_lengths"]], tokenizer


@torch.no_grad()
def score(objective: str, run: str) -> dict:
    blocks, pieces, tokenizer = held_out(run)
    if objective == "clm":
        model = AutoModelForCausalLM.from_pretrained(run).eval()
        alone, count = score_causal_blocks(model, blocks, 32, tokenizer.pad_token_id, pieces, tokenizer)
        shared, shared_count = score_causal_blocks(model, blocks, 32, tokenizer.pad_token_id)
        return {"alone": alone / count, "shared": shared / shared_count, "tokens": count}
    model = AutoModelForMaskedLM.from_pretrained(run).eval()
    nll, count, correct = score_masked_blocks(model, blocks, tokenizer, 32, 0.15, 0, pieces)
    return {"alone": nll / count, "accuracy": correct / count, "tokens": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--output_dir", default="outputs/document_quality")
    args = parser.parse_args()
    rows = []
    for objective in ("clm", "mlm"):
        results = {
            a: score(objective, train(objective, a, args.max_steps, args.output_dir)) for a in ("shared", "isolated")
        }
        for attention, result in results.items():
            rows.append(
                [
                    objective,
                    attention,
                    result["alone"],
                    result["alone"] - results["shared"]["alone"],
                    result.get("shared", float("nan")),
                    result.get("accuracy", float("nan")),
                    result["tokens"],
                ]
            )
    print(f"quickstart (llama-mini, block 128), {args.max_steps} steps per run, held-out documents scored alone")
    header = ["objective", "trained with", "loss alone", "Δ vs shared", "loss, block shared", "MLM accuracy", "tokens"]
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
