"""FSDP for any model: the layers the shipped config wraps come from the model, FSDP on a CPU stops with one line
instead of silently running DDP, and the FULL_STATE_DICT checkpoints round-trip (FSDP2 runs on CPU over gloo in
one process; Accelerate itself enables it on GPUs only)."""

import logging
import os
import subprocess
import sys
import types

import pytest
import torch
import yaml
from _runs import REPO
from _tiny import one_thread, tiny_llama_config  # noqa: F401  (one_thread: an autouse fixture)
from accelerate.utils import FullyShardedDataParallelPlugin
from transformers import AutoConfig, LlamaForCausalLM

from hf_pretrain.presets import preset_settings
from hf_pretrain.training.distributed import check_accelerate_config
from hf_pretrain.training.fsdp import check_fsdp, layer_classes_to_wrap, meta_model

FSDP_YAML = os.path.join(REPO, "configs", "accelerate", "fsdp.yaml")


@pytest.fixture
def launcher_env(monkeypatch):
    """The FSDP_* environment `accelerate launch --config_file configs/accelerate/fsdp.yaml` gives its processes
    (Accelerate's own launcher code; `Accelerator()` builds its plugin from it)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    parsed = launch_command_parser().parse_args(["--config_file", FSDP_YAML, "--num_processes", "1", "x.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(parsed)[0])
    env = {k: v for k, v in env.items() if k.startswith("FSDP_") or k == "ACCELERATE_USE_FSDP"}
    assert env["ACCELERATE_USE_FSDP"] == "true" and "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def preset_config(preset: str):
    settings = preset_settings(preset, {})
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


# The classes each family lists in _no_split_modules, and how many modules of the tiny preset they wrap.
@pytest.mark.parametrize(
    ("preset", "masked", "model_class", "wrapped", "count"),
    [
        ("llama-tiny", False, "LlamaForCausalLM", ["LlamaDecoderLayer"], 2),
        ("llama-tiny", True, "LlamaForMaskedLM", ["LlamaDecoderLayer"], 2),  # our masked decoder
        ("qwen2-tiny", False, "Qwen2ForCausalLM", ["Qwen2DecoderLayer"], 2),
        ("gpt2-tiny", False, "GPT2LMHeadModel", ["GPT2Block"], 2),
        ("t5-tiny", False, "T5ForConditionalGeneration", ["T5Block"], 4),  # 2 encoder + 2 decoder blocks
        ("bert-tiny", True, "BertForMaskedLM", ["BertEmbeddings", "BertLayer"], 3),
        ("modernbert-tiny", True, "ModernBertForMaskedLM", ["ModernBertEmbeddings", "ModernBertEncoderLayer"], 3),
    ],
)
def test_the_shipped_config_wraps_each_models_own_layers(launcher_env, preset, masked, model_class, wrapped, count):
    config = preset_config(preset)
    model = meta_model(config, masked)  # what check_fsdp inspects: no memory, no initialisation
    assert type(model).__name__ == model_class and next(model.parameters()).is_meta
    assert layer_classes_to_wrap(model, FullyShardedDataParallelPlugin()) == wrapped  # Accelerate's policy
    assert sum(type(module).__name__ in wrapped for module in model.modules()) == count
    gpu = types.SimpleNamespace(device=torch.device("cuda"), fsdp=None, fsdp_plugin_args=None)
    assert check_fsdp(gpu, config, masked_decoder=masked) == wrapped


def test_a_layer_class_the_model_lacks_is_one_line(launcher_env, monkeypatch):
    # What the config said before: Accelerate raised "Could not find the transformer layer class" inside prepare.
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "LlamaDecoderLayer")
    gpu = types.SimpleNamespace(device=torch.device("cuda"), fsdp=None, fsdp_plugin_args=None)
    with pytest.raises(ValueError) as error:
        check_fsdp(gpu, preset_config("qwen2-tiny"), masked_decoder=False)
    assert str(error.value) == (
        "fsdp_transformer_layer_cls_to_wrap=LlamaDecoderLayer: Qwen2ForCausalLM has no ['LlamaDecoderLayer'] module; "
        "remove the key to wrap the model's own layers (Qwen2DecoderLayer)."
    )
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "Qwen2DecoderLayer")  # named and present: fine
    assert check_fsdp(gpu, preset_config("qwen2-tiny"), masked_decoder=False) == ["Qwen2DecoderLayer"]


def test_a_model_without_layer_classes_is_refused(launcher_env, monkeypatch):
    from hf_pretrain.training import fsdp

    def without_layer_classes(config, masked_decoder):  # e.g. a remote-code model that lists none
        model = meta_model(config, masked_decoder)
        model._no_split_modules = None
        return model

    monkeypatch.setattr(fsdp, "meta_model", without_layer_classes)
    gpu = types.SimpleNamespace(device=torch.device("cuda"), fsdp=None, fsdp_plugin_args=None)
    with pytest.raises(ValueError, match="lists no layer class it contains in _no_split_modules"):
        check_fsdp(gpu, preset_config("llama-tiny"), masked_decoder=False)


def test_fsdp_on_a_cpu_is_refused_not_run_as_ddp(launcher_env, monkeypatch):
    cpu = types.SimpleNamespace(device=torch.device("cpu"), fsdp=None, fsdp_plugin_args=None)
    with pytest.raises(ValueError, match=r"FSDP was requested .* runs on 'cpu'.*would silently train plain DDP"):
        check_fsdp(cpu, preset_config("llama-tiny"), masked_decoder=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert check_fsdp(cpu, preset_config("llama-tiny"), masked_decoder=False) is None  # no FSDP: nothing to check
    trainer_fsdp = types.SimpleNamespace(device=torch.device("cpu"), fsdp=True, fsdp_plugin_args=None)
    with pytest.raises(ValueError, match="FSDP was requested"):  # the Trainer's own `fsdp` argument
        check_fsdp(trainer_fsdp, preset_config("llama-tiny"), masked_decoder=False)


def test_an_fsdp_config_with_use_cpu_is_refused(tmp_path):
    with open(FSDP_YAML) as handle:
        config = yaml.safe_load(handle)
    check_accelerate_config(FSDP_YAML)
    path = tmp_path / "fsdp_cpu.yaml"
    path.write_text(yaml.safe_dump({**config, "use_cpu": True}))
    with pytest.raises(ValueError, match="FSDP with use_cpu: true starts one process without FSDP"):
        check_accelerate_config(str(path))


@pytest.mark.slow
def test_the_fsdp_config_on_a_cpu_machine_stops_before_any_work(tmp_path):
    """End to end: `accelerate launch` with the shipped FSDP config on this GPU-less machine (Accelerate would run
    DDP) stops at the resolve step with our line; nothing is written."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file", FSDP_YAML,
               "--num_processes", "1", "--main_process_port", "29571", os.path.join(REPO, "recipes", "pretrain.py"),
               "--model_preset", "llama-tiny", "--max_steps", "2", "--output_dir", str(out)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0  # accelerate's 1 under -q (its child exits 2)
    assert (
        "pretrain.py: error: FSDP was requested (an FSDP accelerate config, ACCELERATE_USE_FSDP=true, or fsdp), "
        "but this process runs on 'cpu'" in done.stderr
    ), done.stderr[-3000:]
    assert not out.exists() or not any(out.iterdir())


# ---- checkpoints: FULL_STATE_DICT, gathered at save -------------------------------------------------------------


@pytest.fixture
def gloo_process_group():
    """A one-process gloo group: FSDP2 (fully_shard) shards over it on the CPU."""
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29573", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def sharded(model, plugin):
    """`model` sharded as Accelerate's fsdp2_prepare_model does: each policy-matched layer, then the root."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (1,))
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    for module in [m for m in model.modules() if policy(m)]:
        fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def test_full_state_dict_checkpoints_resume_and_load_with_from_pretrained(tmp_path, gloo_process_group, monkeypatch):
    from accelerate.utils import fsdp_utils
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    monkeypatch.setattr(fsdp_utils, "logger", logging.getLogger("fsdp_utils"))  # its own needs an Accelerator
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT")
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    torch.manual_seed(0)
    model = sharded(LlamaForCausalLM(tiny_llama_config()), plugin)
    assert isinstance(model.model.layers[0].mlp.up_proj.weight, DTensor)  # really sharded
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(input_ids=torch.arange(12).reshape(2, 6), labels=torch.arange(12).reshape(2, 6)).loss.backward()
    optimizer.step()  # the saved weights are trained ones, not a fresh init

    # The final model and every checkpoint's weights: Trainer._save_fsdp-style gathering (accelerator.get_state_dict
    # under FSDP2), written by save_pretrained.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    assert all(type(tensor) is torch.Tensor for tensor in full.values())  # plain tensors, not shards
    model.save_pretrained(tmp_path / "final", state_dict=dict(full))  # it empties the dict it is given
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "final")
    assert set(loaded.state_dict()) == set(full)
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, full[name], rtol=0, atol=0, msg=name)

    # Resuming: the FSDP model file the Trainer's checkpoint holds (accelerate's save_fsdp_model / load_fsdp_model),
    # loaded into a differently initialised sharded model.
    accelerator = types.SimpleNamespace(num_processes=1, process_index=0, is_main_process=True, is_fsdp2=True,
                                        wait_for_everyone=lambda: None)  # fmt: skip
    fsdp_utils.save_fsdp_model(plugin, accelerator, model, str(tmp_path / "checkpoint"))
    assert os.listdir(tmp_path / "checkpoint") == ["pytorch_model_fsdp.bin"]
    torch.manual_seed(1)
    other = sharded(LlamaForCausalLM(tiny_llama_config()), plugin)
    before = get_model_state_dict(other, options=options)
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], full["model.layers.0.mlp.up_proj.weight"])
    fsdp_utils.load_fsdp_model(plugin, accelerator, other, str(tmp_path / "checkpoint"))
    resumed = get_model_state_dict(other, options=options)
    for name, tensor in full.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)
