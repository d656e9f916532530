"""Fine-tuning tasks: local files, Hub datasets, or tasks generated from any text (the tiny built-in ones included).

A task is a type and three splits (train, validation, test) in one schema per type:

| type | columns | metric |
|---|---|---|
| `sc` sequence classification | `text`, `label` (str or int), optional `text_pair` | accuracy (and macro F1) |
| `tc` token classification | `tokens` (list of words), `tags` (one label per word, str or int) | token-level micro F1 over labels other than `O` (id 0) |
| `qa` extractive QA | `question`, `context`, and `answers` (SQuAD: `{"text": [...], "answer_start": [...]}`) or `answer_text` + `answer_start` (character offset) | SQuAD F1 (and exact match) |
| `ir` retrieval | `query`, `positive` (the relevant passage), optional `negatives` (list of passages) | NDCG@10 over all passages of the split |

Specs (`load_task`): `sc` alone is the built-in tiny task of that type; `sc:PATH` is a local file (.csv, .json,
.jsonl; split 80/10/10) or a folder with `train.*`, `validation.*` (or `dev.*`) and `test.*`; `sc:NAME[:CONFIG]` is a
Hub dataset (a missing validation split is carved from train; a missing or unlabelled test split is replaced by
validation). `column_map` renames columns to the schema (`{"sentence": "text"}`). In CSV files, `tokens` and `tags`
are space-separated strings.

Generated tasks (`synthetic_task`) need no labels, only text, so the ablation derives all four from held-out text:
SC tells windows of 16 words in their original order from windows whose words were shuffled (the same bag of
words); TC finds the words replaced by random words of the text (20%); QA finds the two words that follow a
three-word quote in a 24-word context; IR retrieves, among all passages of the split, the 24-word passage an
8-word query quotes. Each split comes from its own contiguous region of the text.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import numpy as np
from datasets import ClassLabel, Dataset, List, Value, load_dataset

TASK_TYPES = ("sc", "tc", "qa", "ir")
SPLITS = ("train", "validation", "test")
MAIN_METRIC = {"sc": "accuracy", "tc": "f1", "qa": "f1", "ir": "ndcg@10"}
_REQUIRED = {
    "sc": ("text", "label"),
    "tc": ("tokens", "tags"),
    "qa": ("question", "context"),
    "ir": ("query", "positive"),
}
_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json"}
_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}


@dataclass
class Task:
    """A fine-tuning task in the schema above; `labels` names the class ids of `sc` and `tc` tasks (`O` first)."""

    name: str
    kind: str
    splits: dict[str, Dataset]
    labels: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.kind not in TASK_TYPES:
            raise ValueError(f"task type must be one of {TASK_TYPES}, got {self.kind!r}.")
        missing = [split for split in SPLITS if split not in self.splits]
        if missing:
            raise ValueError(f"task {self.name!r} lacks the split(s) {missing}.")

    @property
    def metric(self) -> str:
        return MAIN_METRIC[self.kind]


# ---- loading ------------------------------------------------------------------------------------------------------


def load_task(spec: str, column_map: dict | None = None, seed: int = 0) -> Task:
    """A task from a spec: `TYPE` (built-in), `TYPE:PATH` (local) or `TYPE:NAME[:CONFIG]` (Hub); see the module doc."""
    kind, _, source = spec.partition(":")
    if kind not in TASK_TYPES:
        raise ValueError(f"task spec {spec!r}: the type before ':' must be one of {TASK_TYPES}.")
    if not source:
        return builtin_task(kind)
    if os.path.exists(source):
        splits = _local_splits(source)
    else:
        name, _, config = source.partition(":")
        splits = dict(load_dataset(name, config or None))
    return normalize_task(source, kind, splits, column_map, seed)


def _read_file(path: str) -> Dataset:
    extension = os.path.splitext(path)[1].lower()
    if extension not in _FILE_BUILDERS:
        raise ValueError(f"task file {path!r}: use one of {sorted(_FILE_BUILDERS)}.")
    return load_dataset(_FILE_BUILDERS[extension], data_files=path, split="train")


def _local_splits(source: str) -> dict[str, Dataset]:
    if os.path.isfile(source):
        return {"train": _read_file(source)}
    splits = {}
    for split, names in _SPLIT_NAMES.items():
        found = [
            p
            for n in names
            for p in sorted(glob.glob(os.path.join(source, f"{n}.*")))
            if p.endswith(tuple(_FILE_BUILDERS))
        ]
        if found:
            splits[split] = _read_file(found[0])
    if "train" not in splits:
        raise ValueError(f"task folder {source!r} has no train.csv / train.json / train.jsonl.")
    return splits


def normalize_task(name: str, kind: str, splits: dict, column_map: dict | None = None, seed: int = 0) -> Task:
    """Rename columns, check the schema, map labels to ids and fill missing splits (80/10/10 of train)."""
    splits = {key: value for key, value in splits.items()}
    for split_name, names in _SPLIT_NAMES.items():  # Hub datasets name their splits in several ways
        for alias in names[1:]:
            if split_name not in splits and alias in splits:
                splits[split_name] = splits.pop(alias)
    splits = {key: splits[key] for key in SPLITS if key in splits}
    if "train" not in splits:
        raise ValueError(f"task {name!r} has no train split; it has {sorted(splits)}.")
    if column_map:
        splits = {
            key: data.rename_columns({k: v for k, v in column_map.items() if k in data.column_names})
            for key, data in splits.items()
        }
    for key, data in splits.items():
        missing = [c for c in _REQUIRED[kind] if c not in data.column_names]
        if kind == "qa" and not (
            {"answers"} <= set(data.column_names) or {"answer_text", "answer_start"} <= set(data.column_names)
        ):
            missing.append("answers (or answer_text and answer_start)")
        if missing:
            raise ValueError(
                f"task {name!r} ({kind}) split {key!r} lacks column(s) {missing}; it has {data.column_names}. "
                "Rename columns with column_map."
            )
    if "test" in splits and kind == "sc" and _unlabelled(splits["test"]):
        del splits["test"]  # GLUE-style hidden test labels (-1): the validation split becomes the test split
    if "test" not in splits and "validation" in splits:
        splits["test"] = splits.pop("validation")
    if "test" not in splits:
        parts = splits["train"].train_test_split(test_size=0.1, seed=seed)
        splits["train"], splits["test"] = parts["train"], parts["test"]
    if "validation" not in splits:
        parts = splits["train"].train_test_split(test_size=1 / 9, seed=seed)  # 10% of the whole
        splits["train"], splits["validation"] = parts["train"], parts["test"]
    labels: list[str] = []
    if kind in ("sc", "tc"):
        splits, labels = _label_ids(splits, "label" if kind == "sc" else "tags", kind == "tc")
    if kind == "tc":
        splits = {k: _split_words(v) if isinstance(v[0]["tokens"], str) else v for k, v in splits.items()}
    if kind == "qa":
        splits = {k: v.map(_squad_answers) if "answers" not in v.column_names else v for k, v in splits.items()}
    return Task(name, kind, splits, labels)


def _unlabelled(data: Dataset) -> bool:
    return len(data) == 0 or all(label == -1 for label in data["label"])


def _label_ids(splits: dict[str, Dataset], column: str, per_word: bool) -> tuple[dict[str, Dataset], list[str]]:
    """Integer label ids and their names: a ClassLabel's names, else the sorted string values (`O` first)."""
    feature = splits["train"].features[column]
    inner = getattr(feature, "feature", feature)  # the element type of a list feature
    if isinstance(inner, ClassLabel):
        return splits, list(inner.names)
    values = set()
    for data in splits.values():
        for value in data[column]:
            values.update((value.split() if isinstance(value, str) else value) if per_word else [value])
    if all(isinstance(v, int | np.integer) for v in values):
        return splits, [str(i) for i in range(max(values) + 1)]
    names = sorted(map(str, values), key=lambda v: (v != "O", v))
    index = {name: i for i, name in enumerate(names)}

    def to_ids(example):
        value = example[column]
        if per_word:
            words = value.split() if isinstance(value, str) else value
            return {column: [index[str(v)] for v in words]}
        return {column: index[str(value)]}

    def with_ids(data: Dataset) -> Dataset:
        features = data.features.copy()
        features[column] = List(Value("int64")) if per_word else Value("int64")  # else datasets keeps the string type
        return data.map(to_ids, features=features)

    return {key: with_ids(data) for key, data in splits.items()}, names


def _split_words(data: Dataset) -> Dataset:
    """CSV token columns hold space-separated words."""
    features = data.features.copy()
    features["tokens"] = List(Value("string"))
    return data.map(lambda row: {"tokens": row["tokens"].split()}, features=features)


def _squad_answers(example):
    return {"answers": {"text": [example["answer_text"]], "answer_start": [int(example["answer_start"])]}}


# ---- tasks generated from text --------------------------------------------------------------------------------------


def synthetic_task(
    kind: str, text: str, sizes: tuple[int, int, int] = (1000, 200, 200), seed: int = 0, name: str | None = None
) -> Task:
    """A task of `kind` generated from `text` (see the module doc); `sizes` are the (train, validation, test) counts.

    >>> task = synthetic_task("qa", " ".join(f"w{i}" for i in range(200)), sizes=(4, 2, 2))
    >>> row = task.splits["train"][0]
    >>> row["context"][row["answers"]["answer_start"][0]:].startswith(row["answers"]["text"][0])
    True
    """
    if kind not in TASK_TYPES:
        raise ValueError(f"task type must be one of {TASK_TYPES}, got {kind!r}.")
    words = text.split()
    bounds = np.cumsum([0, *sizes]) / sum(sizes) * len(words)
    rng = np.random.default_rng(seed)
    generate = {"sc": _shuffled_windows, "tc": _replaced_words, "qa": _next_words, "ir": _quoted_passages}[kind]
    splits = {}
    for split, count, start, stop in zip(SPLITS, sizes, bounds[:-1], bounds[1:]):
        region = words[int(start) : int(stop)]
        rows = generate(region, count, rng)
        if not rows:
            raise ValueError(f"The text is too short for a {kind} task: {len(region)} words for the {split} split.")
        splits[split] = Dataset.from_list(rows)
    labels = {"sc": ["original", "shuffled"], "tc": ["O", "replaced"]}.get(kind, [])
    return Task(name or f"{kind}-synthetic", kind, splits, labels)


def _starts(region: list[str], count: int, length: int, rng, overlap: bool = True) -> np.ndarray:
    if len(region) < length:
        return np.zeros(0, dtype=np.int64)
    if overlap:
        return rng.integers(0, len(region) - length + 1, count)
    return rng.permutation(np.arange(0, len(region) - length + 1, length))[:count]


def _shuffled_windows(region, count, rng, length=16):
    """Half the windows keep their order, half have all their words shuffled: the same bag of words either way."""
    rows = []
    for start in _starts(region, count, length, rng):
        window = list(region[start : start + length])
        shuffled = bool(rng.random() < 0.5)
        if shuffled:
            order = rng.permutation(length)
            if (order == np.arange(length)).all():
                order = np.roll(order, 1)
            window = [window[i] for i in order]
        rows.append({"text": " ".join(window), "label": int(shuffled)})
    return rows


def _replaced_words(region, count, rng, length=16, rate=0.2):
    rows = []
    for start in _starts(region, count, length, rng):
        window = list(region[start : start + length])
        replace = rng.random(length) < rate
        fillers = rng.integers(0, len(region), length)  # words of the text: unigram statistics give nothing away
        tags = []
        for i in range(length):
            new = region[fillers[i]] if replace[i] else window[i]
            tags.append(int(new != window[i]))
            window[i] = new
        rows.append({"tokens": window, "tags": tags})
    return rows


def _next_words(region, count, rng, length=24, question=3, answer=2):
    rows = []
    for start in _starts(region, count, length, rng):
        window = region[start : start + length]
        at = int(rng.integers(0, length - question - answer + 1))
        answer_at = at + question
        offset = len(" ".join(window[:answer_at])) + (1 if answer_at else 0)
        rows.append(
            {
                "question": " ".join(window[at:answer_at]),
                "context": " ".join(window),
                "answers": {"text": [" ".join(window[answer_at : answer_at + answer])], "answer_start": [offset]},
            }
        )
    return rows


def _quoted_passages(region, count, rng, length=24, quote=8):
    """Distinct (non-overlapping) passages, each with a query quoting 8 consecutive words of it."""
    rows = []
    for start in _starts(region, count, length, rng, overlap=False):
        window = region[start : start + length]
        at = int(rng.integers(0, length - quote + 1))
        rows.append({"query": " ".join(window[at : at + quote]), "positive": " ".join(window)})
    return rows


def builtin_task(kind: str) -> Task:
    """The tiny built-in task of `kind` (48/24/24 examples), generated from CPython's bundled reference text."""
    from hf_pretrain.data.sources import default_corpus

    text = "\n".join(default_corpus()["text"][:12])
    return synthetic_task(kind, text, sizes=(48, 24, 24), seed=0, name=f"{kind}-builtin")
