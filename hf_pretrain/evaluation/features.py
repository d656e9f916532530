"""Task examples → model features and batches, and model outputs → the task's metrics.

- `sc`: the text (and `text_pair`) tokenized; the label.
- `tc`: the words joined by spaces and tokenized once (so words get the same tokens as in running text, which a
  byte-level BPE needs: a word alone would lose its leading-space token); the first token of each word carries the
  word's tag, the others -100. Word boundaries come from the fast tokenizer's character offsets.
- `qa`: question tokens, a separator (sep, else eos), then the context tokens, truncated to `max_length`; start and
  end token of the first gold answer. Training drops examples whose answer was truncated away; evaluation keeps them
  (they count as misses). The predicted span is the best start ≤ end within the context, at most 30 tokens long.
- `ir`: query and positive token ids (pairs for `DataCollatorForContrastive`); evaluation embeds every distinct
  passage of the split (positives and negatives) and ranks them for each query.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hf_pretrain.collators import IGNORE_INDEX, pad_rows
from hf_pretrain.evaluation.metrics import accuracy, f1_score, ndcg_at_k, squad_exact_match, squad_f1
from hf_pretrain.evaluation.tasks import Task

MAX_ANSWER_TOKENS = 30


def featurize(task: Task, split: str, tokenizer, max_length: int) -> list[dict]:
    """The features of one split of `task`; each is a dict of Python lists and ints."""
    data = task.splits[split]
    if task.kind == "sc":
        pairs = list(data["text_pair"]) if "text_pair" in data.column_names else None
        encoded = tokenizer(list(data["text"]), pairs, truncation=True, max_length=max_length)["input_ids"]
        return [{"input_ids": ids, "labels": label} for ids, label in zip(encoded, data["label"])]
    if task.kind == "tc":
        return [_tag_words(tokenizer, words, tags, max_length) for words, tags in zip(data["tokens"], data["tags"])]
    if task.kind == "qa":
        features = [_qa_feature(tokenizer, row, max_length) for row in data]
        return [f for f in features if f["answerable"]] if split == "train" else features
    queries = tokenizer(list(data["query"]), truncation=True, max_length=max_length)["input_ids"]
    positives = tokenizer(list(data["positive"]), truncation=True, max_length=max_length)["input_ids"]
    return [{"query_input_ids": q, "positive_input_ids": p} for q, p in zip(queries, positives)]


def _offsets(tokenizer, text: str, max_length: int | None) -> tuple[list[int], np.ndarray]:
    if not tokenizer.is_fast:
        raise ValueError("token classification and QA need a fast tokenizer (character offsets).")
    encoded = tokenizer(
        text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        truncation=max_length is not None,
        max_length=max_length,
    )
    return encoded["input_ids"], np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)


def _tag_words(tokenizer, words: Sequence[str], tags: Sequence[int], max_length: int) -> dict:
    text = " ".join(words)
    starts = np.cumsum([0, *[len(w) + 1 for w in words[:-1]]])  # (W,) character start of each word
    ids, offsets = _offsets(tokenizer, text, max_length)
    # Each token belongs to the word of its last character (a byte-level token starts with the space before it).
    word = np.searchsorted(starts, np.maximum(offsets[:, 1] - 1, 0), side="right") - 1  # (N,)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = word[1:] != word[:-1]
    labels = np.where(first & (offsets[:, 1] > offsets[:, 0]), np.asarray(tags)[word], IGNORE_INDEX)
    return {"input_ids": ids, "labels": labels.tolist()}


def _qa_feature(tokenizer, row: dict, max_length: int) -> dict:
    # A leading space: a byte-level BPE then gives the question's words the tokens they have inside the context.
    question = tokenizer(" " + row["question"].lstrip(), add_special_tokens=False)["input_ids"]
    separator = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    question = question[: max_length // 2]
    context, offsets = _offsets(tokenizer, row["context"], max_length - len(question) - 1)
    first = len(question) + 1  # position of the first context token
    answer_start = row["answers"]["answer_start"][0]
    answer_end = answer_start + len(row["answers"]["text"][0])
    inside = (offsets[:, 1] > answer_start) & (offsets[:, 0] < answer_end)  # tokens overlapping the answer
    answerable = bool(inside.any()) and bool(offsets[-1, 1] >= answer_end)  # the whole answer survived truncation
    positions = np.flatnonzero(inside) + first
    start, end = (int(positions[0]), int(positions[-1])) if answerable else (0, 0)
    return {
        "input_ids": [*question, separator, *context],
        "start_positions": start,
        "end_positions": end,
        "answerable": answerable,
        "context_start": first,
        "offsets": offsets,
        "context": row["context"],
        "answers": list(row["answers"]["text"]),
    }


def collate(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and the labels of sc (`labels`), tc (`labels`, -100 padded) or qa."""
    input_ids, lengths = map(torch.from_numpy, pad_rows([f["input_ids"] for f in features], pad_id))  # (B, T), (B,)
    batch = {"input_ids": input_ids, "attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()}
    if "labels" in features[0]:
        labels = [f["labels"] for f in features]
        per_token = isinstance(labels[0], list)
        batch["labels"] = torch.from_numpy(pad_rows(labels, IGNORE_INDEX)[0]) if per_token else torch.tensor(labels)
    if "start_positions" in features[0]:
        batch["start_positions"] = torch.tensor([f["start_positions"] for f in features])
        batch["end_positions"] = torch.tensor([f["end_positions"] for f in features])
    return batch


def _batches(features: Sequence[dict], batch_size: int):
    for start in range(0, len(features), batch_size):
        yield features[start : start + batch_size]


@torch.no_grad()
def evaluate_task(
    model, task: Task, split: str, features: Sequence[dict], tokenizer, batch_size: int, max_length: int, device
) -> dict[str, float]:
    """The task's metrics on one split: accuracy and macro F1 (sc), micro F1 (tc), F1 and exact match (qa),
    NDCG@10 (ir)."""
    model.eval()
    pad_id = tokenizer.pad_token_id
    if task.kind == "ir":
        return _evaluate_retrieval(model, task.splits[split], features, tokenizer, batch_size, max_length, device)
    predictions, references = [], []
    for chunk in _batches(features, batch_size):
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items() if k in ("input_ids", "attention_mask")}
        output = model(**batch)
        if task.kind == "qa":
            predictions += [
                _best_span(f, s, e) for f, s, e in zip(chunk, output.start_logits.cpu(), output.end_logits.cpu())
            ]
            references += [f["answers"] for f in chunk]
            continue
        logits = output.logits.argmax(-1).cpu()
        if task.kind == "sc":
            predictions += logits.tolist()
            references += [f["labels"] for f in chunk]
        else:  # tc: the first token of every word
            for row, feature in zip(logits, chunk):
                labels = np.asarray(feature["labels"])
                keep = labels != IGNORE_INDEX
                predictions += row[: len(labels)].numpy()[keep].tolist()
                references += labels[keep].tolist()
    if task.kind == "qa":
        return {"f1": squad_f1(predictions, references), "exact_match": squad_exact_match(predictions, references)}
    if task.kind == "sc":
        return {"accuracy": accuracy(predictions, references), "macro_f1": f1_score(predictions, references, "macro")}
    return {"f1": f1_score(predictions, references, "micro"), "accuracy": accuracy(predictions, references)}


def _best_span(feature: dict, start_logits: torch.Tensor, end_logits: torch.Tensor) -> str:
    first, offsets = feature["context_start"], feature["offsets"]
    if len(offsets) == 0:
        return ""
    start, end = start_logits[first : first + len(offsets)], end_logits[first : first + len(offsets)]
    scores = start[:, None] + end[None, :]  # (C, C): score of the span [i, j]
    i, j = torch.meshgrid(torch.arange(len(start)), torch.arange(len(end)), indexing="ij")
    scores[(j < i) | (j - i >= MAX_ANSWER_TOKENS)] = -torch.inf
    best = int(scores.argmax())
    i, j = divmod(best, len(end))
    return feature["context"][offsets[i, 0] : offsets[j, 1]]


def _evaluate_retrieval(
    model, data, features, tokenizer, batch_size: int, max_length: int, device
) -> dict[str, float]:
    negatives = [p for row in data["negatives"] for p in row] if "negatives" in data.column_names else []
    passages = list(dict.fromkeys([*data["positive"], *negatives]))  # distinct passages, first-seen order
    index = {text: i for i, text in enumerate(passages)}
    corpus = tokenizer(passages, truncation=True, max_length=max_length)["input_ids"]
    queries = [f["query_input_ids"] for f in features]

    def embed(rows):
        parts = []
        for chunk in _batches(rows, batch_size):
            batch = {
                k: v.to(device) for k, v in collate([{"input_ids": r} for r in chunk], tokenizer.pad_token_id).items()
            }
            parts.append(torch.nn.functional.normalize(model.encode(**batch).float(), dim=-1).cpu())
        return torch.cat(parts)

    scores = embed(queries) @ embed(corpus).T  # (Q, D) cosine similarities
    relevance = np.zeros(tuple(scores.shape), dtype=np.int64)
    relevance[np.arange(len(queries)), [index[p] for p in data["positive"]]] = 1
    return {"ndcg@10": float(ndcg_at_k(scores.numpy(), relevance, k=10).mean())}
