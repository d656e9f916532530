"""Fine-tuning evaluation of checkpoints (the protocol of arXiv 2507.00994): SC, TC, QA and IR tasks, a learning-rate
grid × seeds, the best rate chosen on validation, test mean and 95% confidence interval per task.

The four tiny built-in tasks on one checkpoint (a smoke test of the protocol):
    python recipes/finetune_eval.py --model_name_or_path outputs/mlm_wsd --learning_rates 1e-3 --seeds 0 1

The study's protocol on your tasks (local CSV/JSON files or Hub datasets; schema in hf_pretrain/evaluation/tasks.py):
    python recipes/finetune_eval.py --model_name_or_path outputs/clm_wsd outputs/mlm_wsd \
        --tasks sc:data/reviews.csv qa:rajpurkar/squad ir:data/pairs.jsonl --column_map '{"sentence": "text"}' \
        --learning_rates 1e-5 2e-5 5e-5 1e-4 2e-4 5e-4 --seeds 0 1 2 3 4 --max_steps 1000

With a LoRA adapter instead of all weights:
    python recipes/finetune_eval.py --model_name_or_path outputs/mlm_wsd --lora_rank 16

Writes runs.csv/.json (every run) and summary.csv/.json/.md (one row per checkpoint × task) to output_dir.
"""

from hf_pretrain import parse_config
from hf_pretrain.evaluation import FinetuneArguments, run_finetuning, write_finetuning_results


def main(argv=None):
    (args,) = parse_config((FinetuneArguments,), argv)
    runs, summary = run_finetuning(args)
    print("\n".join(write_finetuning_results(runs, summary, args.output_dir)))
    return summary


if __name__ == "__main__":
    main()
