"""Check Accelerate launch configs (and the DeepSpeed JSONs they name) before launching a job.

    python recipes/check_launch_config.py configs/accelerate/deepspeed_zero3.yaml
    python recipes/check_launch_config.py configs/accelerate/*.yaml

Exits 1 with the reason when a config would launch the wrong number of processes, lacks a head address for
several machines, or carries a DeepSpeed JSON whose scheduler/optimizer block would replace the Trainer's.
"""

import sys

from hf_pretrain.training.distributed import check_accelerate_config


def main(paths=None) -> int:
    failed = 0
    for path in paths if paths is not None else sys.argv[1:]:
        try:
            check_accelerate_config(path)
            print(f"ok: {path}")
        except (ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
