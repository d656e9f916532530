"""The same seed gives the same initial weights on every backend (hf_pretrain.models.build_model).

In process, over a one-process gloo group: the ZeRO-3 build (partitioned by zero.Init, as transformers does under a
ZeRO-3 config whether or not zero3_init_flag is set) gathers to the weights of a whole build, while transformers'
own ZeRO-3 build does not; the FSDP build (FSDP_* launcher environment), sharded by FSDP2 and gathered, too.
The real 2-process DDP, ZeRO-2 and ZeRO-3 runs (with and without zero3_init_flag) check the same in
tests/test_launch.py (assert_same_start).
"""

import hashlib
import importlib

import pytest
import torch
from _tiny import one_thread  # noqa: F401  (one_thread: an autouse fixture)
from transformers import AutoConfig, set_seed

from hf_pretrain.models import build_model
from hf_pretrain.presets import preset_settings

deepspeed = pytest.importorskip("deepspeed")


def digest(model) -> str:
    """sha256 of the state dict (names and float32 bytes), ZeRO-3's partitioned parameters gathered first."""
    parameters = [p for p in model.parameters() if hasattr(p, "ds_id")]
    hashed = hashlib.sha256()
    with deepspeed.zero.GatheredParameters(parameters) if parameters else torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # an FSDP2 DTensor
            hashed.update(name.encode())
            hashed.update(tensor.detach().float().numpy().tobytes())
    return hashed.hexdigest()


def preset_config(preset: str):
    settings = preset_settings(preset, {})
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


@pytest.fixture(scope="module")
def process_group():
    """DeepSpeed's communication over a one-process gloo group (its CPU shared-memory op, a 4-minute compile, is
    only a speed-up for all-reduce: not built here)."""
    ds_torch = importlib.import_module("deepspeed.comm.torch")  # (`deepspeed.comm.torch` the attribute is torch)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ds_torch, "build_shm_op", lambda: None)
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
            patch.setenv(key, value)  # zero.Init reads them
        deepspeed.init_distributed(
            dist_backend="gloo", auto_mpi_discovery=False, init_method="tcp://127.0.0.1:29581", rank=0, world_size=1
        )
        try:
            yield
        finally:
            torch.distributed.destroy_process_group()


@pytest.fixture
def zero3():
    """A registered ZeRO-3 config: what TrainingArguments / accelerate's DeepSpeed plugin leave for transformers."""
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    try:
        yield config
    finally:
        unset_hf_deepspeed_config()


@pytest.mark.parametrize(("preset", "masked"), [("llama-tiny", False), ("llama-tiny", True), ("bert-tiny", True)])
def test_zero3_starts_from_the_weights_of_a_whole_build(process_group, zero3, preset, masked):
    from transformers.integrations import is_deepspeed_zero3_enabled

    from hf_pretrain.training.distributed import outside_zero3

    config = preset_config(preset)
    with outside_zero3():
        set_seed(42)
        whole = digest(build_model(config, masked_decoder=masked))  # DDP, ZeRO-2: every rank builds it whole
    assert is_deepspeed_zero3_enabled()
    set_seed(42)
    model = build_model(config, masked_decoder=masked)
    assert all(p.numel() == 0 for p in model.parameters())  # really partitioned (zero.Init)
    assert digest(model) == whole
    # transformers' own ZeRO-3 build draws other numbers: what made ZeRO-3 runs start elsewhere.
    set_seed(42)
    plain_zero3 = type(model)._from_config(config)
    assert digest(plain_zero3) != whole


def test_fsdp_starts_from_the_weights_of_a_whole_build(process_group, monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    config = preset_config("llama-tiny")
    set_seed(42)
    whole = digest(build_model(config))
    # the environment `accelerate launch` with configs/accelerate/fsdp.yaml gives its processes
    for key, value in {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
                       "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    set_seed(42)
    model = build_model(config)
    policy = fsdp2_prepare_auto_wrap_policy(FullyShardedDataParallelPlugin(), model)
    mesh = init_device_mesh("cpu", (1,))
    for module in [m for m in model.modules() if policy(m)]:
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert digest(model) == whole
