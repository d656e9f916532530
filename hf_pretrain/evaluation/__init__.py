"""Evaluation of pretrained checkpoints: intrinsic metrics, the fine-tuning protocol, and objective ablations."""

from hf_pretrain.evaluation.ablation import AblationArguments, GridEntry, run_ablation
from hf_pretrain.evaluation.encoders import BiEncoder, MeanPoolingClassifier, is_masked_lm, load_task_model
from hf_pretrain.evaluation.finetune import (
    FinetuneArguments,
    run_finetuning,
    summarize,
    write_finetuning_results,
)
from hf_pretrain.evaluation.intrinsic import (
    IntrinsicArguments,
    evaluate_checkpoint,
    evaluate_checkpoints,
    run_intrinsic,
)
from hf_pretrain.evaluation.metrics import (
    accuracy,
    bits_per_byte,
    f1_score,
    mean_confidence_interval,
    ndcg_at_k,
    perplexity,
    squad_exact_match,
    squad_f1,
)
from hf_pretrain.evaluation.tasks import TASK_TYPES, Task, builtin_task, load_task, synthetic_task

__all__ = [
    "TASK_TYPES",
    "AblationArguments",
    "BiEncoder",
    "FinetuneArguments",
    "GridEntry",
    "IntrinsicArguments",
    "MeanPoolingClassifier",
    "Task",
    "accuracy",
    "bits_per_byte",
    "builtin_task",
    "evaluate_checkpoint",
    "evaluate_checkpoints",
    "f1_score",
    "is_masked_lm",
    "load_task",
    "load_task_model",
    "mean_confidence_interval",
    "ndcg_at_k",
    "perplexity",
    "run_ablation",
    "run_finetuning",
    "run_intrinsic",
    "squad_exact_match",
    "squad_f1",
    "summarize",
    "synthetic_task",
    "write_finetuning_results",
]
