"""One parser for every recipe: a YAML file, then command-line overrides, then `--dry_run` to print the result.

    python recipes/pretrain.py recipes/configs/quickstart.yaml --learning_rate 3e-3 --max_steps 50 --dry_run

Keys are the dataclass field names. An unknown key, in the file or on the command line, is an error that names it
(and the closest known names), never silently ignored; a flag is never matched by its prefix (`--learning_rat` is
refused, as `learning_rat:` in the file is). Negative numbers are values (`--learning_rate -1e-3`, then refused by
the field's check).

A bad input stops the run with ONE line on stderr, `pretrain.py: error: <message naming the field>`, and exit
status 2: errors of parsing and of the fields' `__post_init__` here, `RunRefused` (raised by the checks of
`hf_pretrain.preflight` and the resolve step, before any work) through `one_line_errors`. Under a multi-process
launch only the main process prints it, and it goes into torch elastic's error file, so the launcher's failure
report names it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence

import yaml
from transformers import HfArgumentParser

DRY_RUN_FLAG = "--dry_run"
# The derived settings that resolved_config.yaml carries after the arguments (hf_pretrain.resolve): read back by
# evaluation and publishing, ignored when the file is given as a config.
RESOLVED_SECTION = "resolved_run"
# argparse takes "-1e-3" (and "-.5e2") for an option, not a number: such values are glued to their flag.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class RunRefused(ValueError):
    """A run stopped by its checks before any work (a bad input): its message is the one line the user sees."""


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


def _is_main_process() -> bool:
    """Rank 0 of a launch (torchrun, accelerate, deepspeed and Slurm scripts export RANK), or a lone process."""
    return int(os.environ.get("RANK", "0")) == 0


def error_line(message: str) -> str:
    """What the user sees: one line, however the message was built."""
    program = os.path.basename(sys.argv[0]) or "hf_pretrain"
    return f"{program}: error: {' '.join(str(message).split())}"


def _record_for_launcher(line: str) -> None:
    """torch elastic (accelerate launch on several processes, torchrun) reports a failed worker after it exits; its
    report shows the message of the worker's error file (TORCHELASTIC_ERROR_FILE) as the root cause, instead of
    'To enable traceback see ...'. Only the main process writes it: the root cause is the earliest error file."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as handle:
        json.dump({"message": line, "timestamp": int(time.time())}, handle)


def _fail(message: str):
    """Exit with status 2 after one line on stderr, printed by the main process only (every rank fails alike)."""
    if _is_main_process():
        line = error_line(message)
        print(line, file=sys.stderr, flush=True)
        _record_for_launcher(line)
    sys.exit(2)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """A recipe's entry point: a `RunRefused` (a bad input, found before any work) becomes one line and exit status
    2; every other error keeps its traceback (a bug to report). HF_PRETRAIN_TRACEBACK=1 shows the checks' too."""
    try:
        yield
    except RunRefused as error:
        if os.environ.get("HF_PRETRAIN_TRACEBACK", "0") not in ("", "0"):
            raise
        _fail(str(error))


def _values_glued(argv: list[str]) -> list[str]:
    """`--flag -1e-3` → `--flag=-1e-3`: argparse would take the negative number for an unknown option."""
    out: list[str] = []
    for arg in argv:
        if _NEGATIVE_NUMBER.match(arg) and out and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _check_keys(config: dict, dataclass_types: Sequence[type], source: str) -> None:
    known = {f.name for cls in dataclass_types for f in dataclasses.fields(cls) if f.init}
    for key in config:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"Unknown config key {key!r} in {source}.{hint}")


def _refuse_unknown_flags(remaining: Sequence[str], dataclass_types: Sequence[type]) -> None:
    """The first unknown option, with the closest field names (an abbreviation gets its full name this way)."""
    flags = [arg for arg in remaining if arg.startswith("-")]
    if not flags:
        raise ValueError(f"Unexpected value(s) {list(remaining)}: each value follows its --field.")
    name = flags[0].lstrip("-").split("=", 1)[0]
    bools = {f"no_{f.name}" for cls in dataclass_types for f in dataclasses.fields(cls) if f.init}
    known = {f.name for cls in dataclass_types for f in dataclasses.fields(cls) if f.init} | bools
    close = difflib.get_close_matches(name, sorted(known), n=3)
    prefixed = sorted(key for key in known if key.startswith(name) and key not in bools)
    hint = f" Did you mean {', '.join('--' + key for key in (prefixed[:3] or close))}?" if prefixed or close else ""
    raise ValueError(f"Unknown option {flags[0].split('=', 1)[0]} (options are never abbreviated).{hint}")


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
    argv = _values_glued([a for a in argv if a != DRY_RUN_FLAG])
    # No prefix matching (argparse's default): `--learning_rat 1e-3` is an error, as `learning_rat:` in the YAML is.
    parser = HfArgumentParser(dataclass_types, allow_abbrev=False)
    parser.error = _fail  # one line naming the problem, instead of argparse's 200-line usage dump
    try:
        if argv and argv[0].endswith((".yaml", ".yml")):
            parser.set_defaults(**load_yaml_config(argv.pop(0), dataclass_types))
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if remaining:
            _refuse_unknown_flags(remaining, dataclass_types)
        parsed = tuple(parsed)
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
