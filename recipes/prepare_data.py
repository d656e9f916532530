"""Prepare pretraining data: weighted sources → filtered, deduplicated, tokenized, packed shards and a mixture index.

    python recipes/prepare_data.py recipes/configs/prepare_example.yaml                       # local, 1 worker
    python recipes/prepare_data.py recipes/configs/prepare_example.yaml --workers 8           # local processes
    python recipes/prepare_data.py recipes/configs/prepare_example.yaml --executor ray --ray_address auto
    python recipes/prepare_data.py recipes/configs/prepare_slurm.yaml --dry_run true          # print sbatch scripts

Runs as datatrove pipeline stages (see hf_pretrain/data/prepare.py); rerun the same command to resume after a
failure. Writes `output_dir`: shards (train/, validation/), index.json + train_order.npy (the training order of the
weighted mixture), `tokenizer/` and `stats.json` (written last). Train on it with `--prepared_dataset_path`.
"""

import json
import logging

from hf_pretrain.cli import parse_config
from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus


def main(argv=None) -> dict | None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = parse_config((PrepareArguments,), argv)
    stats = prepare_corpus(args)
    if stats and "totals" in stats:
        print(json.dumps({"tokens": stats["tokens"], "totals": stats["totals"]}, indent=2))
    elif args.executor == "slurm" and not args.dry_run:
        print(f"Submitted; the dataset is complete when {args.output_dir}/stats.json appears.")
    return stats


if __name__ == "__main__":
    main()
