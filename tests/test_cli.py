import pytest

from hf_pretrain import DataArguments, ModelArguments, PretrainingArguments, parse_config
from hf_pretrain.cli import format_config

TYPES = (ModelArguments, DataArguments, PretrainingArguments)


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_then_command_line_overrides(tmp_path):
    config = write(tmp_path, "model_preset: llama-tiny\nblock_size: 64\nlearning_rate: 1.0e-3\nmax_steps: 7\n")
    model, data, train = parse_config(TYPES, [config, "--learning_rate", "5e-4", "--output_dir", str(tmp_path)])
    assert model.model_preset == "llama-tiny"
    assert data.block_size == 64
    assert train.learning_rate == 5e-4  # the command line wins over the file
    assert train.max_steps == 7
    assert train.include_num_input_tokens_seen == "non_padding"  # our default, not transformers'


def test_dict_fields_from_yaml_and_json(tmp_path):
    config = write(tmp_path, "config_overrides: {hidden_size: 32}\n")
    model, _, _ = parse_config(TYPES, [config, "--output_dir", str(tmp_path)])
    assert model.config_overrides == {"hidden_size": 32}
    model, _, _ = parse_config(
        TYPES, ["--config_overrides", '{"num_hidden_layers": 1}', "--output_dir", str(tmp_path)]
    )
    assert model.config_overrides == {"num_hidden_layers": 1}


@pytest.mark.parametrize(
    ("text", "argv", "message"),
    [
        ("learning_rat: 1.0\n", [], "Unknown config key 'learning_rat'"),
        ("", ["--bogus", "1"], "--bogus"),
        ("model_preset: gpt-9\n", [], "model_preset='gpt-9' is unknown"),
        ("data_files: [missing.txt]\n", [], "data_files: no such file 'missing.txt'"),
        ("validation_fraction: 1.5\n", [], "validation_fraction must be in [0, 1)"),
        ("objective: telepathy\n", [], "objective must be one of"),
        ("- a list\n", [], "must hold a mapping"),
    ],
)
def test_bad_config_exits_with_a_message_naming_the_field(tmp_path, capsys, text, argv, message):
    config = write(tmp_path, text)
    with pytest.raises(SystemExit) as exit_info:
        parse_config(TYPES, [config, *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_dry_run_prints_a_config_that_parses_back(tmp_path, capsys):
    config = write(tmp_path, f"block_size: 48\nmax_steps: 3\noutput_dir: {tmp_path}\nhub_token: hf_secret123\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_config(TYPES, [config, "--dry_run"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "block_size: 48" in printed
    assert "hf_secret123" not in printed  # secrets never reach logs or saved configs
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(printed.replace("hub_token: <HUB_TOKEN>", "hub_token: null"))
    _, data, train = parse_config(TYPES, [str(resolved)])
    assert data.block_size == 48 and train.max_steps == 3


def test_format_config_redacts_tokens(tmp_path):
    train = PretrainingArguments(output_dir=str(tmp_path), hub_token="hf_abc")
    assert "hf_abc" not in format_config([train])
