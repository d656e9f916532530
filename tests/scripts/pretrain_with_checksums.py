"""Run recipes/pretrain.py, then write each rank's parameter checksum to <output_dir>/params-rank<r>.txt.

Launched by tests/test_launch.py with `accelerate launch` to prove that every rank ends with identical weights.
With INITIAL_DIGEST=<prefix> set, each rank also writes <prefix>-rank<r>.txt: the digest of the model's state dict as
`prepare_model` returns it (gathered under ZeRO-3), to prove that every backend starts from the same weights.
"""

import contextlib
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


def state_digest(model) -> str:
    """sha256 of the state dict (names, float32 bytes), the partitioned ZeRO-3 parameters gathered first."""
    parameters = list(model.parameters())
    gathered = contextlib.nullcontext()
    if any(hasattr(parameter, "ds_id") for parameter in parameters):
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(parameters)  # a collective: every rank gathers
    digest = hashlib.sha256()
    with gathered:
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


_prepare_model = hf_pretrain.pipeline.prepare_model


def prepare_model_and_digest(model_args, tokenizer, run):
    model = _prepare_model(model_args, tokenizer, run)
    if os.environ.get("INITIAL_DIGEST"):
        digest = state_digest(model)
        with open(f"{os.environ['INITIAL_DIGEST']}-rank{os.environ.get('RANK', '0')}.txt", "w") as handle:
            handle.write(f"{digest}\n")
    return model


class ChecksumTrainer(hf_pretrain.pipeline.PretrainingTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(ParameterChecksum())


hf_pretrain.pipeline.PretrainingTrainer = ChecksumTrainer
hf_pretrain.pipeline.prepare_model = prepare_model_and_digest

if __name__ == "__main__":
    pretrain.main()
