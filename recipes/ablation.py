"""An objective ablation in miniature (arXiv 2507.00994): CLM, MLM at several masking rates, CLM→MLM and CPT branches
pretrained at equal compute, scored on held-out text and fine-tuned on SC, TC, QA and IR tasks, in one command.

The default grid (8 models, 600 steps each, 4 tasks x 3 learning rates x 3 seeds) on a text file; on the 1.1 MB
tinyshakespeare it took 38 minutes on 2 CPU cores shared with other jobs (one torch thread each is faster there):
    OMP_NUM_THREADS=1 python recipes/ablation.py --data_files my_corpus.txt --output_dir outputs/ablation

A two-model smoke grid on the built-in corpus (a minute or two):
    python recipes/ablation.py --grid clm mlm --max_steps 20 --block_size 32 --max_characters 60000 \
        --task_sizes 48 24 24 --learning_rates 1e-3 --seeds 0 1 --early_fraction 0.5 --output_dir outputs/ablation_smoke

Every model shares the optimizer settings --weight_decay (0.1), --adam_beta2 (0.95) and --max_grad_norm (1.0).

Writes results.md and results.csv (one row per model: intrinsic metrics, each task's mean ± 95% CI, stability),
ablation.png (task scores with intervals), intrinsic.png (held-out metrics against tokens seen), the raw tables
and every run under output_dir/runs/. Finished runs are reused when run again into the same output_dir.
"""

from hf_pretrain import parse_config
from hf_pretrain.evaluation import AblationArguments, run_ablation


def main(argv=None):
    (args,) = parse_config((AblationArguments,), argv)
    result = run_ablation(args)
    print("\n".join([result["results"], *result["plots"]]))
    return result


if __name__ == "__main__":
    main()
