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

A bad input (a misspelt key, a missing file, a value that trains nothing, ...) stops the run before any work with
one line `pretrain.py: error: <what to fix>` and exit status 2; `accelerate launch -q` keeps the launcher's own
traceback from following it. With push_to_hub, a run that trained and saved everything but could not publish it
all exits with status 3 (output_dir/hub_status.json says what is missing).
"""

import sys

import torch

from hf_pretrain import DataArguments, ModelArguments, PretrainingArguments, parse_config, run_pretraining
from hf_pretrain.cli import DRY_RUN_FLAG, RunRefused, one_line_errors
from hf_pretrain.hub.publisher import command_line_token_error
from hf_pretrain.hub.run import HUB_INCOMPLETE_EXIT_CODE, HubPublishingIncomplete
from hf_pretrain.pipeline import describe_resolved_run


def main(argv=None):
    """Run the recipe; a bad input raises `ValueError` (`RunRefused`), which `cli` prints as one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if (token_error := command_line_token_error(argv)) is not None:  # never echoes the token
        raise RunRefused(token_error)
    dry_run = DRY_RUN_FLAG in argv
    types = (ModelArguments, DataArguments, PretrainingArguments)
    model_args, data_args, training_args = parse_config(types, [a for a in argv if a != DRY_RUN_FLAG])
    if dry_run:  # the resolved run, as resolved_config.yaml would say it; nothing is read, built or written
        print(describe_resolved_run(model_args, data_args, training_args))
        return None
    try:
        return run_pretraining(model_args, data_args, training_args)
    except HubPublishingIncomplete as error:  # trained and saved; job scripts learn it from the exit status
        print(f"pretrain.py: {error}", file=sys.stderr)
        sys.exit(HUB_INCOMPLETE_EXIT_CODE)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # without it, multi-process exits crash now and then


def cli(argv=None):
    """The command: `main`, with a bad input printed as one line and exit status 2 instead of a traceback."""
    with one_line_errors():
        return main(argv)


if __name__ == "__main__":
    cli()
