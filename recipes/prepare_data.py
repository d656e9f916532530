"""Prepare pretraining data: weighted sources → filtered, deduplicated, tokenized, packed and mixed blocks.

    python recipes/prepare_data.py recipes/configs/prepare_example.yaml
    python recipes/prepare_data.py recipes/configs/prepare_example.yaml --near_dedup_threshold 0.7 --num_proc 8

Writes `output_dir`: the dataset (`save_to_disk`: train in training order, validation), `tokenizer/` and
`stats.json` (documents in and out per step and per source, tokens, duplicate clusters, packing efficiency).
Train on it with `--prepared_dataset_path <output_dir>`.
"""

import json
import logging

from hf_pretrain.cli import parse_config
from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus


def main(argv=None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = parse_config((PrepareArguments,), argv)
    stats = prepare_corpus(args)
    print(json.dumps(stats["totals"], indent=2))
    return stats


if __name__ == "__main__":
    main()
