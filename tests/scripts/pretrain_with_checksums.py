"""Run recipes/pretrain.py, then write each rank's parameter checksum to <output_dir>/params-rank<r>.txt.

Launched by tests/test_launch.py with `accelerate launch` to prove that every rank ends with identical weights.
"""

import hashlib
import os
import sys

import torch
from transformers import TrainerCallback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "recipes"))

import pretrain  # noqa: E402

import hf_pretrain.pipeline  # noqa: E402


class ParameterChecksum(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        digest = hashlib.sha256()
        for name, parameter in sorted(model.named_parameters()):
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
        rank = int(os.environ.get("RANK", "0"))
        with open(os.path.join(args.output_dir, f"params-rank{rank}.txt"), "w") as handle:
            handle.write(
                f"{digest.hexdigest()} {torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1}\n"
            )


class ChecksumTrainer(hf_pretrain.pipeline.PretrainingTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(ParameterChecksum())


hf_pretrain.pipeline.PretrainingTrainer = ChecksumTrainer

if __name__ == "__main__":
    pretrain.main()
