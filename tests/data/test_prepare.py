"""Preparation on datatrove's local executor, end to end, on a generated corpus with planted duplicates and junk:
every removal asserted by document, 1 and 2 workers identical, stats.json merged per step and per source.

The other executors and the restart are in test_prepare_executors.py; they reuse the corpus and helpers here."""

import contextlib
import glob
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from datasets import load_from_disk

from hf_pretrain.data.mixing import MixingSchedule
from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus

# Letters only: the normalisation maps every number to 0, so "w1" and "w2" would be the same word.
VOCABULARY = ["".join(np.random.default_rng(i).choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for i in range(3000)]


def text(rng, sentences: int = 12) -> str:
    """About 100 words, with the stop words the Gopher filter wants."""
    return " ".join(
        f"The {a} of the {b} and {c} went to {d} with {e} that {f} have." for a, b, c, d, e, f in
        (rng.choice(VOCABULARY, 6) for _ in range(sentences))
    )  # fmt: skip


def near_copy(original: str, rng) -> str:
    """One word of ~100 replaced: 5-shingle Jaccard ~0.9."""
    words = original.split()
    words[int(rng.integers(10, len(words) - 10))] = "replaced"
    return " ".join(words)


def build_corpus(folder, web_documents: int = 600, book_documents: int = 200) -> dict:
    """Two sources as files; returns their paths and the ids (`source/index`) of what must go, by reason."""
    rng = np.random.default_rng(0)
    web = [text(rng) for _ in range(web_documents)]
    books = [text(rng) for _ in range(book_documents)]
    expected = {"exact": [], "near": [], "junk": {}, "kept_similar": []}
    for i in range(10):  # exact copies after normalisation: spacing, punctuation
        expected["exact"].append(f"0/{len(web)}")
        web.append(web[i].replace(" ", "  ").replace(".", " !"))
    for i in range(10, 20):
        expected["near"].append(f"0/{len(web)}")
        web.append(near_copy(web[i], rng))
    for i in range(20, 25):  # similar, Jaccard ~0.3: kept
        expected["kept_similar"].append(f"0/{len(web)}")
        words = web[i].split()
        web.append(" ".join(words[:50] + text(rng, 5).split()))
    for reason, junk in (("empty", ""), ("whitespace", "   \n "), ("gopher_quality:gopher_short_doc", "Too short.")):
        expected["junk"][f"0/{len(web)}"] = reason
        web.append(junk)
    for i in range(25, 30):  # cross-source: the first listed source (web) keeps its copy
        expected["exact"].append(f"1/{len(books)}")
        books.append(web[i])
    for i in range(30, 35):
        expected["near"].append(f"1/{len(books)}")
        books.append(near_copy(web[i], rng))
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, documents in (("web", web), ("books", books)):
        paths[name] = os.path.join(folder, f"{name}.jsonl")
        with open(paths[name], "w") as handle:
            handle.writelines(json.dumps({"text": t}) + "\n" for t in documents)
    return {"paths": paths, "expected": expected, "sizes": {"web": len(web), "books": len(books)}}


def arguments(corpus: dict, output_dir: str, **overrides) -> PrepareArguments:
    settings = {
        "sources": [
            {"name": "web", "data_files": [corpus["paths"]["web"]], "weight": 0.75},
            {"name": "books", "data_files": [corpus["paths"]["books"]], "weight": 0.25},
        ],
        "output_dir": output_dir,
        "block_size": 64,
        "quality_filters": ["gopher_quality"],
        "filter_settings": {"gopher_quality": {"min_doc_words": 5}},
        "validation_fraction": 0.1,
        "tasks": 2,
        "tokenizer_vocab_size": 400,
        **overrides,
    }
    return PrepareArguments(**settings)


def kept_ids(work_dir: str) -> set[str]:
    """Ids of the documents that survive filters and deduplication, read from the pipeline's own files."""
    kept = set()
    for path in sorted(glob.glob(os.path.join(work_dir, "documents", "*.jsonl.gz"))):
        task = os.path.basename(path).split(".")[0]
        removed = set(np.fromfile(os.path.join(work_dir, "remove", f"{int(task):06d}.remove"), "<u4").tolist())
        with gzip.open(path, "rt") as handle:
            for index, line in enumerate(handle):
                if index not in removed:
                    kept.add(json.loads(line)["id"])
    return kept


def output_files(output_dir: str) -> dict[str, bytes]:
    """Every file of a prepared dataset that must be identical across runs (stats.json without its paths)."""
    files = {}
    for path in sorted(glob.glob(os.path.join(output_dir, "**", "*"), recursive=True)):
        relative = os.path.relpath(path, output_dir)
        if os.path.isfile(path) and not relative.startswith("_work") and relative != "stats.json":
            with open(path, "rb") as handle:
                files[relative] = handle.read()
    return files


def comparable_stats(output_dir: str) -> dict:
    with open(os.path.join(output_dir, "stats.json")) as handle:
        stats = json.load(handle)
    stats.pop("output_dir")
    stats["config"].pop("output_dir")
    stats["config"].pop("work_dir")
    return stats


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def one_worker(corpus, tmp_path_factory, tokenizer):
    output = str(tmp_path_factory.mktemp("one") / "prepared")
    stats = prepare_corpus(arguments(corpus, output, workers=1), tokenizer=tokenizer)
    return output, stats


def test_each_planted_document_is_removed_by_its_step_and_the_rest_kept(corpus, one_worker):
    output, stats = one_worker
    kept = kept_ids(os.path.join(output, "_work"))
    expected = corpus["expected"]
    for document in expected["exact"] + expected["near"] + list(expected["junk"]):
        assert document not in kept, document
    for document in expected["kept_similar"]:
        assert document in kept, document
    everything = {f"0/{i}" for i in range(corpus["sizes"]["web"])} | {
        f"1/{i}" for i in range(corpus["sizes"]["books"])
    }
    removed = set(expected["exact"]) | set(expected["near"]) | set(expected["junk"])
    assert kept == everything - removed  # nothing else was removed

    web, books = stats["sources"]["web"], stats["sources"]["books"]
    assert web["dropped"] == {"empty": 1, "whitespace": 1, "gopher_quality:gopher_short_doc": 1,
                              "exact_duplicate": 10, "near_duplicate": 10}  # fmt: skip
    assert books["dropped"] == {"exact_duplicate": 5, "near_duplicate": 5}
    assert (
        web["documents"]["read"] == corpus["sizes"]["web"] and books["documents"]["read"] == corpus["sizes"]["books"]
    )
    assert web["documents"]["after_near_dedup"] == web["documents"]["train"] + web["documents"]["validation"]
    assert stats["duplicates"]["exact_duplicate"] == {"removed": 15, "clusters": 15, "cluster_sizes": {"2": 15}}
    near = stats["duplicates"]["near_duplicate"]
    assert near["removed"] == 15 and near["clusters"] == 15 and near["confirmed_pairs"] >= 15
    assert 0.05 < web["documents"]["validation"] / web["documents"]["train"] < 0.16


def test_shards_index_and_order_follow_the_format(one_worker):
    output, stats = one_worker
    with open(os.path.join(output, "index.json")) as handle:
        index = json.load(handle)
    assert index["format"] == "hf_pretrain.shards/1" and index["block_size"] == 64
    assert index["train_shards"] == sorted(index["train_shards"]) and len(index["train_shards"]) == 4
    order = np.load(os.path.join(output, index["order_file"]))
    assert order.dtype == np.int64 and len(order) == stats["totals"]["train_blocks"]
    assert len(np.unique(order)) == len(order) and order.max() < sum(index["train_rows"])
    sources = []
    for shard, rows in zip(index["train_shards"], index["train_rows"]):
        blocks = load_from_disk(os.path.join(output, shard))
        assert len(blocks) == rows and blocks.column_names == ["input_ids", "document_lengths", "source_id"]
        assert all(len(ids) == 64 for ids in blocks["input_ids"][:20])
        assert all(sum(lengths) == 64 for lengths in blocks["document_lengths"])
        sources.append(np.asarray(blocks["source_id"]))
    source_of_row = np.concatenate(sources)
    assert np.array_equal(source_of_row[order], MixingSchedule([0.75, 0.25]).sources(0, len(order)))
    tokens = stats["tokens"]  # at the top: prepared vs trained on, per source
    assert list(stats)[0] == "tokens" and tokens["web"]["in_mixture"] + tokens["books"]["in_mixture"] == 64 * len(
        order
    )
    assert min(tokens[name]["unused_share"] for name in tokens) == 0.0  # one source is used up, the other is not
    assert os.path.isfile(os.path.join(output, "tokenizer", "tokenizer.json"))


def test_two_workers_give_the_same_dataset_and_stats(corpus, one_worker, tmp_path, tokenizer):
    output = str(tmp_path / "prepared")
    prepare_corpus(arguments(corpus, output, workers=2), tokenizer=tokenizer)
    assert output_files(output) == output_files(one_worker[0])
    assert comparable_stats(output) == comparable_stats(one_worker[0])


def test_an_existing_output_is_not_overwritten_silently(corpus, one_worker):
    with pytest.raises(ValueError, match="already holds a prepared dataset"):
        arguments(corpus, one_worker[0])


def test_a_half_done_run_with_other_settings_is_not_resumed(corpus, tmp_path):
    args = arguments(corpus, str(tmp_path / "prepared"))
    os.makedirs(args.work_dir)
    with open(os.path.join(args.work_dir, "config.json"), "w") as handle:
        handle.write("{}")
    with pytest.raises(ValueError, match="holds an unfinished run with other settings"):
        prepare_corpus(args)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sources": []}, "give at least one source"),
        ({"sources": [{"name": "x", "default_corpus": True, "weight": 0}]}, "weight of 'x' must be a positive"),
        ({"sources": [{"name": "x", "data_files": ["/nope.txt"]}]}, "no such file '/nope.txt'"),
        ({"sources": [{"name": "x"}]}, "exactly one of data_files, dataset_name or default_corpus"),
        ({"sources": [{"name": "x", "default_corpus": True, "wieght": 2}]}, r"unknown key\(s\) \['wieght'\]"),
        ({"quality_filters": ["spam"]}, "Unknown quality filter"),
        ({"near_dedup_threshold": 0}, "near_dedup_threshold must be in"),
        ({"executor": "spark"}, "executor must be one of"),
        ({"tasks": 0}, "tasks must be at least 1"),
        ({"executor": "slurm"}, "slurm_partition"),
        ({"dry_run": True}, "dry_run: only the slurm executor"),
    ],
)
def test_bad_arguments_are_named(corpus, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        arguments(corpus, str(tmp_path / "prepared"), **overrides)


def test_a_missing_text_column_names_the_source(corpus, tmp_path, tokenizer):
    args = arguments(corpus, str(tmp_path / "prepared"))
    args.source_specs[0].text_column = "body"
    with pytest.raises(ValueError, match="text_column='body' is not a column of source 'web'"):
        prepare_corpus(args, tokenizer=tokenizer)


KILLED_RUN = r"""
import os, sys
sys.path[:0] = [sys.argv[1], os.path.dirname(sys.argv[1])]
from datatrove.pipeline.dedup import minhash
from hf_pretrain.data.prepare import prepare_corpus
from hf_pretrain.data.tokenizer import train_tokenizer
from conftest import TINY_CORPUS
from test_prepare import arguments, build_corpus

original = minhash.MinhashDedupBuckets.run


def run(self, data=None, rank=0, world_size=1):
    original(self, data, rank, world_size)
    if rank == 3:  # the worker dies after writing its pairs, before datatrove marks the task complete
        os._exit(17)


minhash.MinhashDedupBuckets.run = run
corpus = build_corpus(sys.argv[2])
prepare_corpus(arguments(corpus, sys.argv[3], workers=1), train_tokenizer(TINY_CORPUS, vocab_size=512, min_frequency=1))
"""


def test_a_worker_killed_in_the_bucket_stage_reruns_to_the_same_result(corpus, one_worker, tmp_path, tokenizer):
    output = str(tmp_path / "prepared")
    folder = os.path.dirname(corpus["paths"]["web"])
    tests = os.path.dirname(os.path.abspath(__file__))
    with open(tmp_path / "killed.log", "w") as log:  # not a pipe: the dead run's orphans would hold it open
        killed = subprocess.Popen([sys.executable, "-c", KILLED_RUN, tests, folder, output], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        killed.wait(timeout=300)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(killed.pid, signal.SIGKILL)  # the rest of the dead node: datatrove's manager process
    assert killed.returncode == 17, (tmp_path / "killed.log").read_text()[-2000:]
    buckets = os.path.join(output, "_work", "logs", "buckets", "completions")
    assert sorted(os.listdir(buckets)) == [f"{rank:05d}" for rank in range(3)]  # ranks 0-2 done, 3 killed
    assert not os.path.exists(os.path.join(output, "stats.json"))  # not marked complete

    prepare_corpus(arguments(corpus, output, workers=2), tokenizer=tokenizer)  # the same command, resumed
    assert output_files(output) == output_files(one_worker[0])
    assert comparable_stats(output) == comparable_stats(one_worker[0])


@pytest.mark.slow  # every Ray task is a fresh actor process that imports hf_pretrain (torch included): ~5 s each
def test_a_local_ray_cluster_gives_the_same_dataset(corpus, tmp_path, tokenizer):
    ray = pytest.importorskip("ray")
    small = {"tasks": 1, "minhash_num_perm": 16}  # 2 + 8 + 1 + 2 + 1 tasks
    local = str(tmp_path / "local")
    prepare_corpus(arguments(corpus, local, **small), tokenizer=tokenizer)
    output = str(tmp_path / "ray")
    try:
        prepare_corpus(arguments(corpus, output, executor="ray", workers=2, **small), tokenizer=tokenizer)
    finally:
        ray.shutdown()
    assert output_files(output) == output_files(local)
    assert comparable_stats(output) == comparable_stats(local)


def test_the_quickstart_trains_on_the_prepared_shards_and_resumes_on_the_next_block(one_worker, tmp_path):
    """What a user does next: the quickstart recipe on the pipeline's output, a per-source token count that follows
    the mixture index, and a resume that continues on the exact next block."""
    from _runs import REPO, pretrain, train_logs

    output, stats = one_worker
    with open(os.path.join(output, "index.json")) as handle:
        index = json.load(handle)
    order = np.load(os.path.join(output, index["order_file"]))
    source_of_row = np.concatenate(
        [load_from_disk(os.path.join(output, s))["source_id"] for s in index["train_shards"]]
    )
    run = [os.path.join(REPO, "recipes/configs/quickstart.yaml"), "--prepared_dataset_path", output,
           "--block_size", "64", "--per_device_train_batch_size", "4", "--max_steps", "6", "--save_steps", "3",
           "--warmup_steps", "2", "--logging_steps", "1", "--logging_first_step", "false", "--eval_strategy", "no",
           "--report_to", "none", "--dataloader_num_workers", "0"]  # fmt: skip
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    pretrain.main([*run, "--output_dir", full])
    logs = train_logs(full)
    books = (source_of_row[order[:24]].reshape(6, 4) == 1).sum(1)  # blocks of source 1 (books) in each step
    assert [logs[s]["tokens_seen/books"] for s in range(1, 7)] == (np.cumsum(books) * 64).tolist()
    assert [logs[s]["tokens_seen/web"] for s in range(1, 7)] == (np.cumsum(4 - books) * 64).tolist()

    pretrain.main([*run, "--output_dir", resumed, "--max_steps", "6"])
    for name in os.listdir(resumed):  # "interrupted" after checkpoint-3: only it and the tokenizer remain
        if name not in ("checkpoint-3", "tokenizer"):
            path = os.path.join(resumed, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    pretrain.main([*run, "--output_dir", resumed, "--resume_from_checkpoint", "true"])
    again = train_logs(resumed)
    assert [again[s]["loss"] for s in range(4, 7)] == pytest.approx([logs[s]["loss"] for s in range(4, 7)], rel=1e-5)
    assert [again[s]["tokens_seen/books"] for s in range(4, 7)] == [logs[s]["tokens_seen/books"] for s in range(4, 7)]
