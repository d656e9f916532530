"""Plan a pretraining run's compute from the command line (Chinchilla-optimal tokens, FLOPs, steps, wall time).

python -m hf_pretrain.planning --parameters 70e9
python -m hf_pretrain.planning --flops 1e23 --global_batch_tokens 4e6 --gpus 512 --gpu H100 --mfu 0.4
python -m hf_pretrain.planning --parameters 1e9 --tokens 1e12          # how far from compute-optimal?
"""

from __future__ import annotations

from hf_pretrain.cli import parse_config
from hf_pretrain.planning import PlanArguments, plan_compute


def main(argv=None) -> str:
    (args,) = parse_config((PlanArguments,), argv)
    text = plan_compute(args).describe()
    print(text)
    return text


if __name__ == "__main__":
    main()
