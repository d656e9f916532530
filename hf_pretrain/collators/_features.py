"""Features → padded or packed (padding-free) batches, shared by the masked and causal LM collators.

Both layouts come from the same rules: `input_ids` is required; a given `attention_mask` marks padding with zeros
(never the pad id, which may equal eos); the collator's own per-token columns (`special_tokens_mask`, `word_ids`,
`labels`) must have the same length as `input_ids` and are padded or flattened alongside it. The padding itself is
`_padding`'s; `column` (one entry of every feature) is shared by all collators. The packed layout (positions
restarting per document, `cu_seq_lens`) is built and taken apart here too (`unpack`, `packed_lengths`).

Features may be plain sequences of token ids (lists, tuples, numpy arrays, tensors) instead of dicts, as
transformers' collators accept (`as_features`). Nothing a feature carries is dropped silently: every other key is
passed through (`_extra_column`), as transformers' `tokenizer.pad` does, so BERT-style `token_type_ids` and
`next_sentence_label` reach the model:

* a column with one value per token (a sequence as long as the feature's `input_ids`, in every feature) is padded
  like `input_ids`, with `pad_values[key]` (0 by default), or flattened to (1, N) when padding-free;
* any other value is one per example (an int, a float, or a sequence of the same shape in every feature): stacked
  to (B, ...), or (D, ...) one per document when padding-free;
* values that are no numbers (strings, None) or ragged sequences of neither kind raise a ValueError naming the key.

Numbers become int64 (ints), float32 (floats, torch's default) or bool, as `torch.tensor` makes them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import torch

from ._documents import DOCUMENT_COLUMNS, DOCUMENT_KEY, PADDING_DOCUMENT_ID, document_pieces, padded_document_columns
from ._padding import _flatten_int32_lists, flatten, lengths_of, pad_flat, pad_rows

# Optional columns that may hold None (a fast tokenizer's `word_ids()` marks special tokens with None): they are
# converted through float64, where numpy turns None into NaN, and NaN becomes -1.
_NULLABLE = frozenset({"word_ids"})

# Keys the padding-free layout builds itself; a feature that carried one would have it overwritten.
PACKED_KEYS = ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")

# What `return_tensors` may be: the container of the outputs. The masking math is the same for both.
RETURN_TENSORS = ("pt", "np")
_SEQUENCE_TYPES = (list, tuple, np.ndarray, torch.Tensor)


def check_return_tensors(value) -> None:
    if value == "tf":
        raise ValueError(
            "return_tensors='tf' is not supported (transformers 5 has no TensorFlow); use 'pt' (torch tensors) "
            "or 'np' (numpy arrays)."
        )
    if value not in RETURN_TENSORS:
        raise ValueError(f"return_tensors must be one of {RETURN_TENSORS}, got {value!r}.")


def to_return_tensors(batch: Mapping, return_tensors: str) -> dict:
    """The batch with its arrays as torch tensors ("pt") or numpy arrays ("np"); other values (the Python ints
    `max_length_q/k`) unchanged. Free: tensors and arrays share memory both ways."""
    if return_tensors == "np":
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return {
        k: torch.from_numpy(v) if isinstance(v, np.ndarray) and v.dtype.kind in "biuf" else v for k, v in batch.items()
    }


def as_features(features: Sequence) -> Sequence[Mapping]:
    """Features as dicts. A plain sequence of token ids (list, tuple, numpy array or tensor), which transformers'
    collators accept too, is the feature {"input_ids": ids}.

    >>> as_features([[5, 6], (7,)])
    [{'input_ids': [5, 6]}, {'input_ids': (7,)}]
    """
    if not len(features):
        raise ValueError("The collator received an empty list of features.")
    if all(isinstance(f, dict) for f in features) or all(isinstance(f, Mapping) for f in features):
        return features  # the dict test first: ~10x cheaper than the Mapping ABC's, and what datasets hands over
    if all(isinstance(f, _SEQUENCE_TYPES) for f in features):
        return [{"input_ids": f} for f in features]
    kinds = sorted({type(f).__name__ for f in features})
    raise ValueError(
        f"Features must be dicts (e.g. {{'input_ids': [...]}}) or sequences of token ids, all of one kind; "
        f"got {', '.join(kinds)}."
    )


def column(features: Sequence[Mapping], key: str, *, required: bool = True) -> list | None:
    """The `key` entry of every feature, or None when no feature has it. Raises a clear error on partial presence."""
    if not features:
        raise ValueError("The collator received an empty list of features.")
    if not isinstance(features[0], Mapping):
        raise ValueError(f"Features must be dicts (e.g. {{'input_ids': [...]}}), got {type(features[0]).__name__}.")
    present = [key in f for f in features]
    if not any(present):
        if required:
            raise ValueError(f"Features have no '{key}' entry; found keys {sorted(features[0].keys())}.")
        return None
    if not all(present):
        raise ValueError(f"Only some features have a '{key}' entry; give it for all of them or for none.")
    return [f[key] for f in features]


def _optional_rows(features: Sequence[Mapping], key: str, lengths: np.ndarray) -> list | None:
    rows = column(features, key, required=False)
    if rows is None:
        return None
    if not np.array_equal(lengths_of(rows), lengths):
        raise ValueError(f"Each feature's '{key}' must have the same length as its 'input_ids'.")
    if key in _NULLABLE:
        rows = [np.asarray(row, dtype=np.float64) for row in rows]  # loop over features, not tokens
    return rows


def _nullable_to_int(array: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(array), -1, array).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Pass-through of every other key
# ---------------------------------------------------------------------------------------------------------------


def _is_sequence(value) -> bool:
    if isinstance(value, list | tuple):
        return True
    return isinstance(value, np.ndarray | torch.Tensor) and value.ndim >= 1


def _as_array(value) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _numeric(key: str, array: np.ndarray) -> np.ndarray:
    """`array` as int64, float32 or bool (what `torch.tensor` makes of Python ints, floats and bools)."""
    kind = array.dtype.kind
    if kind == "b":
        return array
    if kind in "iu":
        return array.astype(np.int64, copy=False)
    if kind == "f":
        return array.astype(np.float32, copy=False)
    if kind in "US":
        _not_batchable(key, "strings")
    _not_batchable(
        key, "None" if kind == "O" and any(v is None for v in array.reshape(-1)) else f"{array.dtype} values"
    )


def _not_batchable(key: str, what: str):
    raise ValueError(
        f"Feature '{key}' holds {what}, which cannot be batched into a tensor; remove the column before collating "
        f"(e.g. dataset.remove_columns('{key}'))."
    )


def _per_token(key: str, values: list, lengths: np.ndarray) -> np.ndarray:
    """The rows of a per-token column concatenated (N, ...); one conversion per feature, not per token."""
    if all(isinstance(v, list) for v in values) and not any(v and isinstance(v[0], bool | float) for v in values):
        # Lists of ints (token_type_ids): struct reads them ~2x faster than numpy converts them row by row; None
        # when a value is no int (a float further in, None, a nested list) or beyond int32.
        flat = _flatten_int32_lists(values, lengths)
        if flat is not None:
            return flat.astype(np.int64)
    try:
        arrays = [_as_array(v) for v in values]
        nonempty = [a for a in arrays if a.size] or arrays[:1]  # an empty list is float64 in numpy: must not promote
        flat = np.concatenate(nonempty)
    except ValueError:  # ragged nesting within a row, or rows whose tokens have different shapes
        raise ValueError(f"Feature '{key}' has per-token values of different shapes.") from None
    if not flat.size and flat.dtype.kind == "f" and all(isinstance(v, list | tuple) for v in values):
        flat = flat.astype(np.int64)  # only empty lists: nothing says float
    return _numeric(key, flat)


def _per_example(key: str, values: list, lengths: np.ndarray) -> np.ndarray:
    """One value per example stacked (B, ...)."""
    if any(v is None for v in values):
        _not_batchable(key, "None")
    try:
        array = np.asarray([_as_array(v) for v in values])
    except ValueError:  # numpy refuses ragged nesting
        array = None
    if array is None or array.dtype.kind == "O":
        if all(_is_sequence(v) for v in values):
            found = (
                f"its lengths {[len(v) for v in values][:8]} differ from the input_ids lengths {lengths[:8].tolist()}"
            )
        else:
            found = f"it holds {', '.join(sorted({type(v).__name__ for v in values}))}"
        raise ValueError(
            f"Feature '{key}' is neither one value per token nor one value of the same shape per example ({found})."
        )
    return _numeric(key, array)


def _extra_column(features: Sequence[Mapping], key: str, lengths: np.ndarray) -> tuple[bool, np.ndarray]:
    """(per_token, values): the flat per-token values (N, ...) of a column as long as `input_ids` in every
    feature, else the per-example values (B, ...)."""
    values = column(features, key)
    if all(_is_sequence(v) for v in values) and np.array_equal(lengths_of(values), lengths):
        return True, _per_token(key, values, lengths)
    return False, _per_example(key, values, lengths)


def _extra_keys(features: Sequence[Mapping], handled: Collection[str]) -> list[str]:
    """Every key some feature carries that the caller does not handle, in order of first appearance."""
    return [key for key in dict.fromkeys(key for f in features for key in f) if key not in handled]


def collate_padded(
    features: Sequence[Mapping],
    pad_id: int,
    pad_to_multiple_of: int | None,
    optional: Mapping[str, int],
    pad_values: Mapping[str, int] | None = None,
    exclude: Collection[str] = (),
    documents: bool = False,
) -> dict[str, torch.Tensor]:
    """Right-padded batch: `input_ids` (B, T) int64, `attention_mask` (B, T) int64 and every `optional` column that
    the features carry, padded with the value `optional` gives for it. Every other key but those in `exclude`
    passes through (see the module docstring): per-token columns padded to (B, T, ...) with `pad_values[key]`
    (default 0), per-example values stacked to (B, ...).

    With `documents=True`, features' `document_lengths` are consumed into `position_ids` and `document_ids`
    (B, T) int64 (`_documents`); document_ids is -1 wherever attention_mask is 0."""
    features = as_features(features)
    rows = column(features, "input_ids")
    input_ids, lengths = pad_rows(rows, pad_id, pad_to_multiple_of)  # (B, T), (B,)
    width = input_ids.shape[1]
    attention = np.arange(width) < lengths[:, None]  # (B, T) bool: real tokens
    given = _optional_rows(features, "attention_mask", lengths)
    if given is not None:
        attention &= pad_rows(given, 0, pad_to_multiple_of)[0] != 0
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention.astype(np.int64))}
    document_rows = _document_rows(features) if documents else None
    if document_rows is not None:
        pieces, counts = document_pieces(document_rows, lengths)  # (P,), (B,)
        position_ids, document_ids = padded_document_columns(pieces, counts, lengths, pad_to_multiple_of)  # (B, T)
        if given is not None:  # tokens a given mask hides belong to no document
            document_ids = np.where(attention, document_ids, PADDING_DOCUMENT_ID)
        batch["position_ids"], batch["document_ids"] = torch.from_numpy(position_ids), torch.from_numpy(document_ids)
        exclude = (*exclude, DOCUMENT_KEY)
    for key, pad_value in optional.items():
        key_rows = _optional_rows(features, key, lengths)
        if key_rows is None:
            continue
        if key in _NULLABLE:
            values = _nullable_to_int(pad_rows(key_rows, pad_value, pad_to_multiple_of, dtype=np.float64)[0])
        else:
            values = pad_rows(key_rows, pad_value, pad_to_multiple_of)[0]
        batch[key] = torch.from_numpy(values)
    pad_values = pad_values or {}
    for key in _extra_keys(features, {"input_ids", "attention_mask", *optional, *exclude}):
        per_token, values = _extra_column(features, key, lengths)
        if per_token:
            values = pad_flat(values, lengths, pad_values.get(key, 0), pad_to_multiple_of)  # (B, T, ...)
        batch[key] = torch.from_numpy(values)
    return batch


def collate_packed(
    features: Sequence[Mapping], optional: Sequence[str], exclude: Collection[str] = (), documents: bool = False
) -> dict[str, torch.Tensor | int]:
    """Padding-free batch, the convention of transformers' `DataCollatorWithFlattening(return_flash_attn_kwargs=True)`:
    `input_ids` and `position_ids` (1, N) int64 with positions restarting at 0 for each document, `cu_seq_lens_q/k`
    (D + 1,) int32 and `max_length_q/k` Python ints; no attention_mask. `optional` columns come back as (1, N).
    Every other key but those in `exclude` passes through: per-token columns flattened to (1, N, ...) like
    `input_ids`, per-example values stacked to (D, ...), one per document (a packed row has no per-row slot).

    Tokens whose given `attention_mask` is 0 (pre-padded features) are dropped, so a right-padded feature packs
    exactly like its unpadded self.

    With `documents=True`, a feature's `document_lengths` split it: each piece is a document of its own (in
    `cu_seq_lens`, `position_ids`, and its per-example values, repeated), exactly as if the pieces were features.
    """
    features = as_features(features)
    rows = column(features, "input_ids")
    flat, lengths = flatten(rows)  # (N,), (D,)
    document_rows = _document_rows(features) if documents else None
    if document_rows is not None:
        exclude = (*exclude, DOCUMENT_KEY)
    columns = {}
    for key in optional:
        key_rows = _optional_rows(features, key, lengths)
        if key_rows is not None:
            values = flatten(key_rows, dtype=np.float64 if key in _NULLABLE else np.int64)[0]
            columns[key] = _nullable_to_int(values) if key in _NULLABLE else values
    per_example = {}
    for key in _extra_keys(features, {"input_ids", "attention_mask", *optional, *exclude}):
        if key in PACKED_KEYS:
            raise ValueError(f"Features carry '{key}', which padding_free=True builds itself; remove it from them.")
        per_token, values = _extra_column(features, key, lengths)
        (columns if per_token else per_example)[key] = values
    given = _optional_rows(features, "attention_mask", lengths)
    if document_rows is not None:
        lengths, counts = document_pieces(document_rows, lengths)  # (D,) = (P,) pieces, (B,) pieces per feature
        per_example = {key: np.repeat(values, counts, axis=0) for key, values in per_example.items()}
    if given is not None:
        keep = flatten(given)[0] != 0  # (N,)
        if not keep.all():
            document = np.repeat(np.arange(len(lengths)), lengths)  # (N,) document index of each token
            lengths = np.bincount(document[keep], minlength=len(lengths)).astype(np.int64)
            flat = flat[keep]
            columns = {key: values[keep] for key, values in columns.items()}
    lengths_t = torch.from_numpy(lengths)
    bounds = cu_seq_lens(lengths_t)  # (D + 1,) int32
    max_length = int(lengths.max()) if len(lengths) else 0
    batch: dict[str, torch.Tensor | int] = {
        "input_ids": torch.from_numpy(flat)[None],
        "position_ids": flat_position_ids(lengths_t)[None],
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds.clone(),
        "max_length_q": max_length,
        "max_length_k": max_length,
    }
    for key, values in columns.items():
        batch[key] = torch.from_numpy(values)[None]
    for key, values in per_example.items():
        batch[key] = torch.from_numpy(values)
    return batch


def _document_rows(features: Sequence[Mapping]) -> list | None:
    """The features' `document_lengths`, or None; refuses features that also carry a column built from them."""
    rows = column(features, DOCUMENT_KEY, required=False)
    if rows is not None:
        for key in DOCUMENT_COLUMNS:
            if any(key in f for f in features):
                raise ValueError(f"Features carry both 'document_lengths' and '{key}', which is built from it.")
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The packed (padding-free) layout
# ---------------------------------------------------------------------------------------------------------------


def flat_position_ids(lengths: torch.Tensor) -> torch.Tensor:
    """Positions restarting at 0 for each document of a flattened row: lengths [3, 2] → [0, 1, 2, 0, 1]."""
    total = int(lengths.sum())
    starts = torch.cumsum(lengths, 0) - lengths  # (D,)
    return torch.arange(total) - torch.repeat_interleave(starts, lengths)


def cu_seq_lens(lengths: torch.Tensor) -> torch.Tensor:
    """Cumulative sequence boundaries (D + 1,) int32, the flash-attention varlen convention: [0, l0, l0 + l1, ...]."""
    return torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))


def packed_lengths(batch: Mapping) -> torch.Tensor:
    """Document lengths (D,) of a padding-free batch, from its `cu_seq_lens_q`."""
    return torch.diff(torch.as_tensor(batch["cu_seq_lens_q"]).long())


def is_packed(batch: Mapping) -> bool:
    return "cu_seq_lens_q" in batch


def unpack(flat: np.ndarray, lengths: np.ndarray, fill) -> tuple[np.ndarray, np.ndarray]:
    """Lay a flat (N,) row out as (D, L) right-padded rows, one per document; also return the (D, L) real mask.

    numpy, not torch: boolean-mask indexing is ~10x faster there (0.03 vs 0.3 ms for 32k tokens). The rows may
    share memory with `flat` (equal-length documents): treat them as read-only.
    """
    rows = pad_flat(flat, lengths, fill)  # (D, L)
    return rows, np.arange(rows.shape[1])[None, :] < lengths[:, None]
