"""Pre-flight: the inputs a run reads, checked cheaply before any work (tokenizer training, data reading, model
building), so that a bad path or file is one line naming the field, not a traceback minutes later.

    parse (cli.py, __post_init__) → check_inputs → resolve_run → resolved_config.yaml, data, model, training

`checked_run` is that sequence after parsing: every `ValueError` of the checks and of the resolve step becomes a
`RunRefused`, which the recipes print as one line with exit status 2 (`cli.one_line_errors`). The checks read
headers, first records and schemas only: a file is never loaded whole here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
import json
import os
import re
from collections.abc import Iterator

from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import CONFIG_MAPPING, AutoConfig
from transformers.utils import cached_file

from hf_pretrain.cli import RunRefused
from hf_pretrain.data.sources import file_format, parse_sources
from hf_pretrain.presets import preset_settings
from hf_pretrain.resolve import ResolvedRun, resolve_run
from hf_pretrain.training.checkpoints import safetensors_problem
from hf_pretrain.training.distributed import load_deepspeed_config

# Config switches our own code reads from a model's config (on top of what the config class declares).
OWN_CONFIG_KEYS = frozenset({"sparse_prediction", "is_causal"})
_KWARGS_READ = re.compile(r"kwargs\.(?:get|pop)\(\s*[\"'](\w+)[\"']")
_FIRST_RECORD_BYTES = 1 << 20  # a JSON-lines file's first record is looked for in its first MiB


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """A `ValueError` raised inside is a bad input: re-raised as `RunRefused` (the traceback kept as its cause)."""
    try:
        yield
    except RunRefused:
        raise
    except ValueError as error:
        raise RunRefused(str(error)) from error


def checked_run(model_args, data_args, training_args) -> ResolvedRun:
    """The checks of the inputs, then the resolve step; a bad input raises `RunRefused` before anything is written."""
    with refusals():
        check_inputs(model_args, data_args, training_args)
        return resolve_run(model_args, data_args, training_args)


def check_inputs(model_args, data_args, training_args) -> None:
    """Everything a run will read or write, checked without reading any of it whole."""
    check_output_dir(training_args.output_dir)
    # the JSON `accelerate launch` passes on (a `--deepspeed` file is checked when the argument is parsed)
    load_deepspeed_config(os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None)
    if training_args.cooldown_from:
        check_model_source(training_args.cooldown_from, "cooldown_from")
    if model_args.model_name_or_path:
        check_model_source(model_args.model_name_or_path, "model_name_or_path")
    if model_args.tokenizer_name_or_path:
        check_tokenizer_source(model_args.tokenizer_name_or_path)
    check_config_overrides(model_args, training_args.cooldown_from)
    check_data_files(data_args)


def check_output_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"output_dir={path!r} is a file, not a folder: choose another output_dir.")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ValueError(f"output_dir={path!r} lies under {parent!r}, which is a file: choose another output_dir.")


def _is_local(name: str) -> bool:
    """A name that can only be a folder: a Hub id is 'name' or 'namespace/name', never absolute or relative."""
    if os.path.isdir(name) or os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _hub_file(name: str, filenames: tuple[str, ...], field_name: str) -> None:
    """A Hub id: one of its files must be reachable (in the cache when offline); the error names the field."""
    first = ""
    for filename in filenames:
        try:
            cached_file(name, filename)
            return
        except OSError as error:  # not found, not cached while offline, no connection: all OSErrors
            first = first or (str(error).strip().splitlines() or [type(error).__name__])[0]
    raise ValueError(f"{field_name}={name!r} is no local folder and cannot be fetched from the Hub: {first}")


def check_model_source(name: str, field_name: str) -> None:
    """A checkpoint folder with its config and intact weights, or a Hub id that can be fetched."""
    if not _is_local(name):
        _hub_file(name, ("config.json",), field_name)
        return
    if not os.path.isdir(name):
        raise ValueError(f"{field_name}={name!r}: no such folder (nor a Hub id 'namespace/name').")
    if not os.path.isfile(os.path.join(name, "config.json")):
        raise ValueError(f"{field_name}={name!r} has no config.json: it is not a saved model.")
    for filename in sorted(os.listdir(name)):
        if filename.endswith(".safetensors"):
            problem = safetensors_problem(os.path.join(name, filename))  # from the header and the size alone
            if problem:
                raise ValueError(f"{field_name}={name!r}: {problem}; save or copy the model again.")


def check_tokenizer_source(name: str) -> None:
    if not _is_local(name):
        _hub_file(name, ("tokenizer_config.json", "tokenizer.json"), "tokenizer_name_or_path")
        return
    if not os.path.isdir(name):
        raise ValueError(f"tokenizer_name_or_path={name!r}: no such folder (nor a Hub id 'namespace/name').")
    if not any(os.path.isfile(os.path.join(name, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"tokenizer_name_or_path={name!r} has no tokenizer.json or tokenizer_config.json.")


def config_keys(config_class) -> set[str]:
    """Every key a config class knows: its fields and __init__ arguments, their aliases (`attribute_map`, e.g.
    GPT-2's hidden_size for n_embd), the attributes a default instance has, and its properties. `PretrainedConfig`
    stores any other keyword as a new attribute, which is how a misspelt override used to vanish. Keys that a config
    reads from its **kwargs (legacy names) are found in its source."""
    keys = set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs", "args"}
    if dataclasses.is_dataclass(config_class):
        keys |= {f.name for f in dataclasses.fields(config_class)}
    keys |= set(getattr(config_class, "attribute_map", {}))
    with contextlib.suppress(Exception):  # a config class that cannot be built with defaults keeps the keys above
        keys |= set(vars(config_class()))
    keys |= {name for name in dir(config_class) if isinstance(getattr(config_class, name, None), property)}
    for cls in config_class.__mro__:  # legacy keys read from **kwargs (ModernBERT's global_attn_every_n_layers)
        if cls.__module__.startswith("transformers"):
            with contextlib.suppress(OSError, TypeError):
                keys |= set(_KWARGS_READ.findall(inspect.getsource(cls)))
    return {key for key in keys if not key.startswith("_")} | OWN_CONFIG_KEYS


def _model_type(model_args, cooldown_from: str | None) -> str | None:
    source = model_args.model_name_or_path or cooldown_from
    if not source:
        return preset_settings(model_args.model_preset, {}).get("model_type")
    config_file = os.path.join(source, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as handle:
            try:
                return json.load(handle).get("model_type")
            except json.JSONDecodeError as error:
                raise ValueError(f"model_name_or_path={source!r}: config.json is not valid JSON: {error}") from None
    return getattr(AutoConfig.from_pretrained(source), "model_type", None)


def check_config_overrides(model_args, cooldown_from: str | None = None) -> None:
    """Each key of config_overrides is a field of the model type's config class, or an error with a did-you-mean."""
    if not model_args.config_overrides:
        return
    overrides = dict(model_args.config_overrides)
    model_type = overrides.get("model_type") or _model_type(model_args, cooldown_from)
    if model_type not in CONFIG_MAPPING:
        return  # unknown to transformers: from_config / from_pretrained names it
    known = config_keys(CONFIG_MAPPING[model_type]) | {"model_type"}
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"config_overrides: {key!r} is not a field of the {model_type} config.{hint}")


def _first_json_record(path: str):
    """The first record of a JSON-lines file (None for a JSON array file, or one whose first line is too long)."""
    with open(path, "rb") as handle:
        head = handle.read(_FIRST_RECORD_BYTES)
    for line in head.splitlines():
        if line.strip():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                return record if isinstance(record, dict) else None
            return None
    return None


def _columns(path: str, builder: str) -> list[str] | None:
    if builder == "text":
        return ["text"]  # datasets' text builder: one 'text' column
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as error:  # pyarrow raises its own ArrowInvalid for a file that is not parquet
            raise ValueError(f"{path!r} is not a readable parquet file: {error}") from None
    record = _first_json_record(path)
    return None if record is None else list(record)


def _is_blank(path: str) -> bool:
    """Nothing but whitespace (an empty file included): datasets fails on it with no word of which file."""
    if os.path.getsize(path) > _FIRST_RECORD_BYTES:
        return False
    with open(path, "rb") as handle:
        return not handle.read().strip()


def _check_files(paths: list[str], column: str, field_name: str) -> None:
    builder = file_format(paths, field_name)
    for path in paths:
        if _is_blank(path):
            raise ValueError(f"{field_name}: {path!r} is empty: give a file with documents, or remove it.")
        columns = _columns(path, builder)
        if columns is not None and column not in columns:
            raise ValueError(f"text_column={column!r} is not a column of {path!r} ({field_name}); it has {columns}.")


def check_data_files(data_args) -> None:
    """Local data files: a known format, not empty, with the text column in their first record or schema."""
    for field_name in ("data_files", "validation_files"):
        paths = getattr(data_args, field_name)
        if paths:
            _check_files(paths, data_args.text_column, field_name)
    for source in parse_sources(data_args.data_sources):
        if source.data_files:
            _check_files(source.data_files, source.text_column, f"data_sources {source.name!r} data_files")


__all__ = ["check_inputs", "checked_run", "config_keys", "refusals"]
