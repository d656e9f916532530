"""Pretrain (or continue pretraining) a language model.

One process, CPU or one GPU:
    python recipes/pretrain.py recipes/configs/quickstart.yaml
    accelerate launch recipes/pretrain.py recipes/configs/quickstart.yaml

Override any field on the command line, print the resolved config without running:
    accelerate launch recipes/pretrain.py recipes/configs/quickstart.yaml --max_steps 50 --dry_run

Resume an interrupted run from its newest checkpoint:
    accelerate launch recipes/pretrain.py recipes/configs/quickstart.yaml --resume_from_checkpoint true
"""

from hf_pretrain import DataArguments, ModelArguments, PretrainingArguments, parse_config, run_pretraining


def main(argv=None):
    model_args, data_args, training_args = parse_config((ModelArguments, DataArguments, PretrainingArguments), argv)
    return run_pretraining(model_args, data_args, training_args)


if __name__ == "__main__":
    main()
