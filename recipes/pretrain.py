"""Pretrain (or continue pretraining) a language model.

One process, CPU or one GPU:
    python recipes/pretrain.py recipes/configs/quickstart.yaml
    accelerate launch recipes/pretrain.py recipes/configs/quickstart.yaml

Override any field on the command line, print the resolved config without running:
    accelerate launch recipes/pretrain.py recipes/configs/quickstart.yaml --max_steps 50 --dry_run

Data-parallel on 2 CPU processes, on 8 GPUs, with DeepSpeed ZeRO-3 (see configs/accelerate/ and the README):
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml recipes/pretrain.py recipes/configs/quickstart.yaml
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml recipes/pretrain.py my_config.yaml
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml recipes/pretrain.py my_config.yaml

Resume an interrupted run from its newest checkpoint:
    accelerate launch recipes/pretrain.py recipes/configs/quickstart.yaml --resume_from_checkpoint true
"""

import sys

import torch

from hf_pretrain import DataArguments, ModelArguments, PretrainingArguments, parse_config, run_pretraining
from hf_pretrain.cli import DRY_RUN_FLAG
from hf_pretrain.pipeline import describe_resolved_run


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    dry_run = DRY_RUN_FLAG in argv
    types = (ModelArguments, DataArguments, PretrainingArguments)
    model_args, data_args, training_args = parse_config(types, [a for a in argv if a != DRY_RUN_FLAG])
    if dry_run:  # the resolved run, as resolved_config.yaml would say it; nothing is read, built or written
        print(describe_resolved_run(model_args, data_args, training_args))
        return None
    try:
        return run_pretraining(model_args, data_args, training_args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # without it, multi-process exits crash now and then


if __name__ == "__main__":
    main()
