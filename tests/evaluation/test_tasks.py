"""Tasks: generated from text (built-in ones included), local files in the documented schema, and their features."""

import json

import numpy as np
import pytest

from hf_pretrain.evaluation.features import IGNORE_INDEX, featurize
from hf_pretrain.evaluation.tasks import SPLITS, builtin_task, load_task, synthetic_task

TEXT = " ".join(f"w{i}" for i in range(3000))  # every word distinct: positions are recoverable from the words


@pytest.mark.parametrize("kind", ["sc", "tc", "qa", "ir"])
def test_builtin_tasks_are_tiny_and_complete(kind):
    task = builtin_task(kind)
    assert task.kind == kind and [len(task.splits[s]) for s in SPLITS] == [48, 24, 24]


def _positions(text):
    return [int(word[1:]) for word in text.split()]


def test_splits_come_from_disjoint_regions_of_the_text():
    task = synthetic_task("sc", TEXT, sizes=(60, 20, 20))
    regions = {split: set().union(*(_positions(t) for t in task.splits[split]["text"])) for split in SPLITS}
    assert max(regions["train"]) < min(regions["validation"]) <= max(regions["validation"]) < min(regions["test"])


def test_sequence_classification_shuffles_the_words_of_half_the_windows():
    rows = synthetic_task("sc", TEXT, sizes=(200, 10, 10)).splits["train"]
    labels = np.array(rows["label"])
    assert 0.35 < labels.mean() < 0.65
    for text, label in zip(rows["text"], labels):
        positions = _positions(text)
        assert sorted(positions) == list(range(min(positions), min(positions) + 16))  # the same words
        assert (positions == sorted(positions)) == (label == 0)


def test_token_classification_tags_exactly_the_replaced_words():
    rows = synthetic_task("tc", TEXT, sizes=(100, 10, 10)).splits["train"]
    replaced = 0
    for words, tags in zip(rows["tokens"], rows["tags"]):
        positions = _positions(" ".join(words))
        start = next(p - i for i, (p, t) in enumerate(zip(positions, tags)) if t == 0)  # an original word's offset
        assert tags == [int(p != start + i) for i, p in enumerate(positions)]
        replaced += sum(tags)
    assert 0.1 < replaced / (100 * 16) < 0.3


def test_qa_answers_are_the_two_words_after_the_question():
    rows = synthetic_task("qa", TEXT, sizes=(50, 10, 10)).splits["train"]
    for row in rows:
        answer, start = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        assert row["context"][start : start + len(answer)] == answer
        question, answer = _positions(row["question"]), _positions(answer)
        assert len(question) == 3 and answer == [question[-1] + 1, question[-1] + 2]


def test_retrieval_queries_quote_eight_words_of_distinct_passages():
    rows = synthetic_task("ir", TEXT, sizes=(40, 10, 10)).splits["train"]
    assert len(set(rows["positive"])) == len(rows)
    for query, positive in zip(rows["query"], rows["positive"]):
        assert len(query.split()) == 8 and f" {query} " in f" {positive} "
        assert _positions(positive) == list(range(_positions(positive)[0], _positions(positive)[0] + 24))


def test_too_short_a_text_is_refused():
    with pytest.raises(ValueError, match="too short"):
        synthetic_task("qa", "only a few words here", sizes=(2, 1, 1))


def test_local_csv_is_split_and_string_labels_get_ids(tmp_path):
    path = tmp_path / "reviews.csv"
    lines = ["sentence,label"] + [f"review number {i},{'good' if i % 3 else 'bad'}" for i in range(50)]
    path.write_text("\n".join(lines))
    task = load_task(f"sc:{path}", column_map={"sentence": "text"})
    assert task.labels == ["bad", "good"] and task.metric == "accuracy"
    assert sum(len(task.splits[s]) for s in SPLITS) == 50 and len(task.splits["test"]) == 5
    assert set(task.splits["train"]["label"]) == {0, 1}


def test_local_folder_with_splits_and_bio_tags(tmp_path):
    for split, n in (("train", 6), ("dev", 2), ("test", 2)):
        rows = [{"tokens": ["Ada", "met", "Bob"], "tags": ["B-PER", "O", "B-PER"]} for _ in range(n)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task = load_task(f"tc:{tmp_path}")
    assert task.labels == ["O", "B-PER"]  # the outside label gets id 0
    assert task.splits["validation"][0]["tags"] == [1, 0, 1] and len(task.splits["test"]) == 2


def test_csv_tagging_columns_are_space_separated(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("words,labels\n" + "\n".join("Ada met Bob,PER O PER" for _ in range(20)))
    task = load_task(f"tc:{path}", column_map={"words": "tokens", "labels": "tags"})
    assert task.splits["train"][0] == {"tokens": ["Ada", "met", "Bob"], "tags": [1, 0, 1]}
    assert task.labels == ["O", "PER"] and task.metric == "f1"


def test_flat_qa_columns_and_missing_columns(tmp_path):
    path = tmp_path / "qa.json"
    rows = [
        {"question": "who?", "context": f"it was Ada {i}", "answer_text": "Ada", "answer_start": 7} for i in range(20)
    ]
    path.write_text(json.dumps(rows))
    task = load_task(f"qa:{path}")
    assert task.splits["train"][0]["answers"] == {"text": ["Ada"], "answer_start": [7]}
    (tmp_path / "bad.csv").write_text("query,passage\na,b\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['positive'\].*column_map"):
        load_task(f"ir:{tmp_path / 'bad.csv'}")
    with pytest.raises(ValueError, match="must be one of"):
        load_task("xx:whatever")


def test_token_classification_labels_the_first_token_of_each_word(tokenizer):
    task = synthetic_task("tc", TEXT, sizes=(4, 2, 2))
    feature = featurize(task, "train", tokenizer, max_length=512)[0]
    words, tags = task.splits["train"][0]["tokens"], task.splits["train"][0]["tags"]
    labelled = [label for label in feature["labels"] if label != IGNORE_INDEX]
    assert labelled == tags  # one label per word, in order
    assert len(feature["input_ids"]) > len(words)  # "w123" is several tokens: only the first carries the tag


def test_qa_features_point_at_the_answer_tokens(tokenizer):
    task = synthetic_task("qa", TEXT, sizes=(6, 2, 2))
    for feature, row in zip(featurize(task, "train", tokenizer, max_length=512), task.splits["train"]):
        start, end = feature["start_positions"], feature["end_positions"]
        first, offsets = feature["context_start"], feature["offsets"]
        span = row["context"][offsets[start - first][0] : offsets[end - first][1]]
        assert span.strip() == row["answers"]["text"][0]
    # Truncation that cuts the answer off: dropped from training, kept (as a miss) for evaluation.
    assert len(featurize(task, "train", tokenizer, max_length=12)) < 6
    assert len(featurize(task, "test", tokenizer, max_length=12)) == 2
