"""Intrinsic evaluation of checkpoints on held-out text: CLM perplexity and bits per byte, MLM loss and accuracy.

Every checkpoint of a run, on exactly the blocks that run held out (rebuilt from its resolved_config.yaml, for
classic, mixed, prepared and streamed data; a CLM run's final clm_loss is its own eval_loss):
    python recipes/evaluate.py --model_name_or_path outputs/clm_wsd

Several runs or checkpoints on your own held-out file (validation_fraction 0: score all of it), MLM at 15%, each at
its run's block size (--block_size to choose one):
    python recipes/evaluate.py --model_name_or_path outputs/clm_wsd outputs/mlm_wsd/checkpoint-100 \
        --data_files heldout.txt --validation_fraction 0 --mlm_probability 0.15 --output_dir outputs/eval

Revisions of a Hub repository (tokens seen from each revision's trainer_state.json when it has one):
    python recipes/evaluate.py --model_name_or_path user/model --revisions step-1000 step-2000 main \
        --data_files heldout.txt --validation_fraction 0

Writes intrinsic.csv, intrinsic.json and intrinsic.png (each metric against tokens seen) to output_dir.
"""

from hf_pretrain import parse_config
from hf_pretrain.evaluation import IntrinsicArguments, run_intrinsic
from hf_pretrain.evaluation.intrinsic import EvaluationDataArguments


def main(argv=None):
    # EvaluationDataArguments: DataArguments whose block_size is IntrinsicArguments' (unset: each run's own).
    args, data_args = parse_config((IntrinsicArguments, EvaluationDataArguments), argv)
    rows, paths = run_intrinsic(args, data_args)
    print("\n".join(paths))
    return rows


if __name__ == "__main__":
    main()
