import json

import pytest

from hf_pretrain import DataArguments, ModelArguments, PretrainingArguments, parse_config
from hf_pretrain.cli import RunRefused, format_config, one_line_errors

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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # argparse would match a prefix; the YAML path refuses a misspelt key, so the command line does too
        (["--learning_rat", "1e-3"], "Unknown option --learning_rat (options are never abbreviated). Did you mean "
                                     "--learning_rate?"),
        (["--hidden", "64"], "Unknown option --hidden"),
        # a negative number is a value, not an option ("expected one argument" before), then refused by its check
        (["--learning_rate", "-1e-3"], "learning_rate must be positive, got -0.001."),
        (["--max_steps", "-5"], "max_steps=-5 is negative"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be at least 1, got 0."),
        (["--learning_rate", "0"], "learning_rate=0 never changes the weights"),
        (["--objective", "mlm", "--mlm_probability", "0"], "mlm_probability=0 with objective 'mlm' masks no token"),
    ],
)  # fmt: skip
def test_command_line_mistakes_are_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(TYPES, [*argv, "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and message in err, err


def test_negative_numbers_parse_and_degenerate_values_pass_when_allowed(tmp_path):
    _, _, train = parse_config(TYPES, ["--seed", "-3", "--output_dir", str(tmp_path)])
    assert train.seed == -3
    _, _, train = parse_config(
        TYPES, ["--learning_rate", "0", "--mlm_probability", "0", "--allow_degenerate", "true", "--objective", "mlm"]
    )
    assert train.learning_rate == 0 and train.mlm_probability == 0
    _, _, train = parse_config(TYPES, ["--mlm_probability", "0"])  # clm masks nothing anyway: not refused
    assert train.mlm_probability == 0


def test_only_the_main_process_prints_and_it_tells_the_launcher(tmp_path, capsys, monkeypatch):
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_info:
        parse_config(TYPES, ["--max_steps", "0"])
    assert exit_info.value.code == 2 and capsys.readouterr().err == "" and not error_file.exists()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr("sys.argv", ["recipes/pretrain.py"])
    with pytest.raises(SystemExit):
        parse_config(TYPES, ["--max_steps", "0"])
    line = capsys.readouterr().err.strip()
    assert line.startswith("pretrain.py: error: max_steps=0 trains nothing")
    assert json.loads(error_file.read_text())["message"] == line  # torch elastic's report shows it as the cause


def test_a_refused_run_is_one_line_and_other_errors_keep_their_traceback(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["pretrain.py"])
    with pytest.raises(SystemExit) as exit_info, one_line_errors():
        raise RunRefused("block_size=4096 exceeds\nthe model's positions")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "pretrain.py: error: block_size=4096 exceeds the model's positions\n"
    with pytest.raises(ValueError, match="a bug"), one_line_errors():
        raise ValueError("a bug")  # not a check's refusal: the traceback is what a bug report needs
    monkeypatch.setenv("HF_PRETRAIN_TRACEBACK", "1")
    with pytest.raises(RunRefused), one_line_errors():
        raise RunRefused("shown with its traceback on request")
