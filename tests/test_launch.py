"""The launch setup: global batch resolution and the config checks that run before training."""

import pytest

from hf_pretrain.launch import check_deepspeed_config, resolve_global_batch


@pytest.mark.parametrize(
    ("world", "per_device", "length", "tokens", "sequences", "accumulation"),
    [
        (1, 8, 128, 2048, None, 2),
        (64, 8, 4096, 4 * 2**20, None, 2),
        (4, 4, 512, None, 64, 4),
        (8, 12, 2048, 2_359_296, None, 12),  # 8 x 12 x 2048 x 12
    ],
)
def test_accumulation_makes_the_global_batch_exact(world, per_device, length, tokens, sequences, accumulation):
    got = resolve_global_batch(world, per_device, length, tokens=tokens, sequences=sequences)
    assert got == accumulation
    assert world * per_device * got * (length if tokens else 1) == (tokens or sequences)


def test_an_unreachable_global_batch_names_the_reachable_ones():
    # 2,373,120 tokens (a published global batch) is not a multiple of 2 x 8 x 4096 = 65,536.
    with pytest.raises(ValueError, match=r"global_batch_tokens=2373120 is not reachable.*multiple of 65536"):
        resolve_global_batch(2, 8, 4096, tokens=2_373_120)
    with pytest.raises(ValueError, match="not both"):
        resolve_global_batch(1, 1, 1, tokens=1, sequences=1)


def test_deepspeed_config_file_checks(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2}, "scheduler": {"type": "WarmupDecayLR"}}')
    with pytest.raises(ValueError, match="'scheduler' block"):
        check_deepspeed_config(str(path))
    with pytest.raises(ValueError, match="no such config file"):
        check_deepspeed_config(str(tmp_path / "missing.json"))
