"""One parser for every recipe: a YAML file, then command-line overrides, then `--dry_run` to print the result.

    python recipes/pretrain.py recipes/configs/quickstart.yaml --learning_rate 3e-3 --max_steps 50 --dry_run

Keys are the dataclass field names. An unknown key, in the file or on the command line, is an error that names it
(and the closest known names), never silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
from collections.abc import Sequence

import yaml
from transformers import HfArgumentParser

DRY_RUN_FLAG = "--dry_run"
# The derived settings that resolved_config.yaml carries after the arguments (hf_pretrain.resolve): read back by
# evaluation and publishing, ignored when the file is given as a config.
RESOLVED_SECTION = "resolved_run"


def parse_mapping(value: dict | str | None, name: str) -> dict:
    """Dict fields come as dicts from YAML and as JSON strings from the command line."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} must be a mapping (YAML) or a JSON object string, got {value!r}: {error}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{name} must be a JSON object, got {value!r}.")
    return parsed


def _fail(message: str):
    print(f"{os.path.basename(sys.argv[0]) or 'hf_pretrain'}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _check_keys(config: dict, dataclass_types: Sequence[type], source: str) -> None:
    known = {f.name for cls in dataclass_types for f in dataclasses.fields(cls) if f.init}
    for key in config:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"Unknown config key {key!r} in {source}.{hint}")


def load_yaml_config(path: str, dataclass_types: Sequence[type]) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"Config file {path!r} does not exist.")
    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config, dict):
        raise ValueError(f"Config file {path!r} must hold a mapping of field: value, got {type(config).__name__}.")
    config.pop(RESOLVED_SECTION, None)
    _check_keys(config, dataclass_types, path)
    return config


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse `[config.yaml] [--field value ...] [--dry_run]` into one instance of each dataclass.

    Command-line values override the file's. With `--dry_run`, print the resolved config and exit.
    Validation errors (from the dataclasses' `__post_init__`) exit with status 2 and a one-line message.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    dry_run = DRY_RUN_FLAG in argv
    argv = [a for a in argv if a != DRY_RUN_FLAG]
    parser = HfArgumentParser(dataclass_types)
    parser.error = _fail  # one line naming the problem, instead of argparse's 200-line usage dump
    try:
        if argv and argv[0].endswith((".yaml", ".yml")):
            parser.set_defaults(**load_yaml_config(argv.pop(0), dataclass_types))
        parsed = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:
        _fail(str(error))
    if dry_run:
        print(format_config(parsed))
        sys.exit(0)
    return parsed


def config_dict(instance) -> dict:
    """Init fields of a dataclass as plain YAML-able values; secrets (`*_token`) are redacted."""
    values = instance.to_dict() if hasattr(instance, "to_dict") else dataclasses.asdict(instance)
    init_fields = {f.name for f in dataclasses.fields(instance) if f.init}
    out = {}
    for key, value in values.items():
        if key not in init_fields:
            continue
        if key.endswith("_token") and value is not None and not str(value).startswith("<"):
            value = "<redacted>"
        out[key] = value.value if hasattr(value, "value") else value
    return out


def format_config(instances: Sequence) -> str:
    """The resolved config as YAML, one section comment per dataclass; loadable again by `parse_config`."""
    sections = []
    for instance in instances:
        body = yaml.safe_dump(config_dict(instance), sort_keys=False, default_flow_style=None)
        sections.append(f"# {type(instance).__name__}\n{body}")
    return "\n".join(sections)
