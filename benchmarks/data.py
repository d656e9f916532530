"""Data pipeline figures on the shared corpus (tinyshakespeare) and a synthetic 4x concatenation of it.

    python benchmarks/data.py [--corpus ../shared/data/tinyshakespeare.txt] [--rounds 5] [--sections 12345]
    git worktree add ../prep-baseline 972e966 && pip install datasketch   # the baseline of section 5
    python benchmarks/data.py --sections 5 --baseline ../prep-baseline

1. Tokenize + pack throughput: `tokenize_documents` (datasets.map, batched) + `pack_blocks` (with document
   boundaries), against the tokenizer's own Rust `encode_batch` (ids extracted) on the same documents and cores,
   timed round-robin in one run (target: >= 0.8x the baseline's documents per second).
2. Packing efficiency: real tokens in blocks / tokens of the corpus (target >= 99.5%), against padding every
   document to the block size, and against the `group_texts` of transformers' examples (remainder of every
   1,000-document map batch dropped).
3. Streaming memory: resident memory of a process that streams the corpus 1x and 10x through `MixedBlockStream`
   (read, normalise, tokenize, pack): at the first block and at most during the pass (target: flat, ratio ~1).
4. Near-dedup curve: removal rate per true-Jaccard bin on random documents (recall above the threshold, false
   positives below), with the LSH candidate probability.
5. Preparation: documents/s of `prepare_data` on the local executor (1, 2 workers) and Ray (2 workers) on
   tinyshakespeare x16 + the built-in corpus x64, and peak RSS at 1x/4x/16x with tasks grown with the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
from datasets import Dataset  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table, interleaved_medians  # noqa: E402

from hf_pretrain.data.packing import pack_blocks, tokenize_documents  # noqa: E402
from hf_pretrain.data.tokenizer import train_tokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CORPUS = os.path.join(REPO, "..", "shared", "data", "tinyshakespeare.txt")
BLOCK = 512


def paragraphs(path: str, copies: int = 1) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        docs = [p.strip() for p in handle.read().split("\n\n") if p.strip()]
    return docs * copies


def throughput_rows(tokenizer, docs_by_name: dict[str, list[str]], rounds: int) -> list[list]:
    backend = tokenizer.backend_tokenizer
    rows = []
    for name, docs in docs_by_name.items():
        documents = Dataset.from_dict({"text": docs})

        def baseline(docs=docs):
            return [encoding.ids for encoding in backend.encode_batch(docs, add_special_tokens=False)]

        def ours(documents=documents):
            return pack_blocks(tokenize_documents(documents, tokenizer), BLOCK, document_lengths=True)

        base, candidate = interleaved_medians([baseline, ours], rounds=rounds, warmup=1)
        megabytes = sum(len(d.encode()) for d in docs) / 1e6
        rows.append([name, len(docs), f"{megabytes:.1f}", f"{megabytes / base:.2f}", f"{megabytes / candidate:.2f}",
                     f"{base / candidate:.2f}x"])  # fmt: skip
    return rows


def group_texts_kept(lengths: np.ndarray, block: int, batch: int = 1000) -> int:
    """Tokens kept by transformers' run_clm `group_texts`: each 1,000-document map batch drops its remainder."""
    kept = 0
    for start in range(0, len(lengths), batch):
        kept += int(lengths[start : start + batch].sum()) // block * block
    return kept


def efficiency_rows(tokenizer, docs_by_name: dict[str, list[str]]) -> list[list]:
    rows = []
    for name, docs in docs_by_name.items():
        tokenized = tokenize_documents(Dataset.from_dict({"text": docs}), tokenizer)
        lengths = np.asarray([len(ids) for ids in tokenized["input_ids"]])
        total = int(lengths.sum())
        blocks = pack_blocks(tokenized, BLOCK, document_lengths=True)
        padded = int((np.ceil(lengths / BLOCK) * BLOCK).sum())
        rows.append([name, f"{total:,}", f"{len(blocks) * BLOCK / total:.2%}",
                     f"{group_texts_kept(lengths, BLOCK) / total:.2%}", f"{total / padded:.2%}"])  # fmt: skip
    return rows


STREAM_SCRIPT = r"""
import json, sys, time, datasets
datasets.disable_progress_bars()
from hf_pretrain.data.streaming import MixedBlockStream, SourceStream
from hf_pretrain.data.sources import read_files
from hf_pretrain.data.tokenizer import load_tokenizer

def rss_kb():  # resident memory now (ru_maxrss would keep the peak of start-up transients)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

path, tokenizer_dir, block = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenizer = load_tokenizer(tokenizer_dir)
source = SourceStream("corpus", lambda: read_files([path], streaming=True), tokenizer, block, batch_size=256)
rows = iter(MixedBlockStream([source], [1.0]))
next(rows)
first = highest = rss_kb()
start = time.perf_counter()
for count, _ in enumerate(rows):  # one full pass over the file
    if count % 32 == 0:
        highest = max(highest, rss_kb())
    if source.stats["passes"]:
        break
seconds = time.perf_counter() - start
print(json.dumps({"tokens": source.stats["tokens"], "first_kb": first, "max_kb": highest, "seconds": seconds}))
"""


def streaming_rows(corpus: str, tokenizer_dir: str, workdir: str) -> list[list]:
    with open(corpus, encoding="utf-8") as handle:
        text = handle.read()
    rows, base = [], None
    for copies in (1, 10):
        path = os.path.join(workdir, f"corpus_x{copies}.txt")
        with open(path, "w", encoding="utf-8") as handle:
            for _ in range(copies):
                handle.write(text + "\n\n")
        out = subprocess.run(
            [sys.executable, "-c", STREAM_SCRIPT, path, tokenizer_dir, str(BLOCK)],
            capture_output=True, text=True, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "true"},
        )  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        base = base or result["max_kb"]
        rows.append([f"{copies}x", f"{os.path.getsize(path) / 1e6:.1f}", f"{result['tokens']:,}",
                     f"{result['first_kb'] / 1024:.0f}", f"{result['max_kb'] / 1024:.0f}",
                     f"{(result['max_kb'] - result['first_kb']) / 1024:.0f}", f"{result['max_kb'] / base:.2f}",
                     f"{result['tokens'] / result['seconds']:,.0f}"])  # fmt: skip
    return rows


def recall_rows(pairs: int = 200, words: int = 300, threshold: float = 0.8) -> list[list]:
    """Near-dedup removal rate per true Jaccard bin, on random documents: b is a with its tail replaced, so that
    they share k - 4 of their 5-word shingles (true Jaccard (k - 4) / (2 (n - 4) - (k - 4)))."""
    from hf_pretrain.data.dedup import (
        candidate_probability,
        confirm_cutoff,
        lsh_shape,
        minhash_signatures,
        near_duplicates,
    )

    rng = np.random.default_rng(0)
    vocabulary = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 7)) for _ in range(50_000)]
    bands, rows_per_band = lsh_shape(threshold, 256)
    out = []
    for target in (0.5, 0.6, 0.65, 0.7, 0.72, 0.75, 0.78, 0.8, 0.82, 0.85, 0.9, 0.95):
        shared = round(2 * target * (words - 4) / (1 + target))  # shingles in common
        jaccard = shared / (2 * (words - 4) - shared)
        removed = 0
        for _ in range(pairs):
            a = list(rng.choice(vocabulary, words))
            b = a[: shared + 4] + list(rng.choice(vocabulary, words - shared - 4))
            removed += int(not near_duplicates(minhash_signatures([" ".join(a), " ".join(b)]), threshold)[1])
        kind = "recall" if jaccard >= threshold else "false positive"
        out.append([f"{jaccard:.3f}", kind, f"{removed / pairs:.3f}",
                    f"{float(candidate_probability(jaccard, bands, rows_per_band)):.3f}"])  # fmt: skip
    print(f"LSH {bands} bands x {rows_per_band} rows, confirmed at estimated Jaccard >= "
          f"{confirm_cutoff(threshold, 256):.3f} (threshold {threshold}, 256 permutations, {pairs} pairs per bin)")  # fmt: skip
    return out


PREPARE_SCRIPT = r"""
import json, os, resource, sys, time
from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus

def main():
    shake, pydoc, tokenizer, output, executor, workers, tasks = sys.argv[1:8]
    # executor "baseline": the single-process path before preparation moved onto datatrove (run from a checkout
    # of that commit, see --baseline), which takes neither executor, workers nor tasks
    placement = {} if executor == "baseline" else {"executor": executor, "workers": int(workers), "tasks": int(tasks)}
    args = PrepareArguments(
        sources=[{"name": "shakespeare", "data_files": [shake], "weight": 0.7},
                 {"name": "pydoc", "data_files": [pydoc], "weight": 0.3}],
        output_dir=output, overwrite_output_dir=True, block_size=512, tokenizer_name_or_path=tokenizer,
        filter_settings={"gopher_quality": {"min_doc_words": 10, "max_non_alpha_words_ratio": 0.5}}, **placement)
    start = time.perf_counter()
    stats = prepare_corpus(args)
    seconds = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"documents": stats["totals"]["documents_in"], "seconds": seconds,
                      "main_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "worker_kb": children}))

if __name__ == "__main__":
    main()
"""


def corpus_files(corpus: str, workdir: str, copies: int) -> tuple[str, str]:
    """tinyshakespeare x copies (paragraphs) and the built-in pydoc corpus x 4 copies, as files."""
    from pydoc_data.topics import topics

    shake, pydoc = os.path.join(workdir, f"shake_x{copies}.txt"), os.path.join(workdir, f"pydoc_x{copies * 4}.jsonl")
    with open(corpus, encoding="utf-8") as handle:
        text = handle.read()
    with open(shake, "w", encoding="utf-8") as handle:
        handle.writelines(text + "\n\n" for _ in range(copies))
    with open(pydoc, "w", encoding="utf-8") as handle:
        for _ in range(copies * 4):
            handle.writelines(json.dumps({"text": topics[k]}) + "\n" for k in sorted(topics))
    return shake, pydoc


def prepare_rows(corpus: str, tokenizer_dir: str, workdir: str, runs, baseline: str | None) -> list[list]:
    """prepare_data in a fresh process per run: (copies, executor, workers, tasks) -> documents/s, peak RSS, and
    the ratio of documents/s to the baseline's at the same corpus size (the first baseline row of that size)."""
    rows, reference = [], {}
    for copies, executor, workers, tasks in runs:
        if executor == "baseline" and baseline is None:
            continue
        shake, pydoc = corpus_files(corpus, workdir, copies)
        output = os.path.join(workdir, f"prepared_{copies}_{executor}_{workers}")
        code = baseline if executor == "baseline" else REPO
        out = subprocess.run(
            [sys.executable, "-c", PREPARE_SCRIPT, shake, pydoc, tokenizer_dir, output, executor, str(workers),
             str(tasks)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": code},
            cwd=workdir,  # not the repository: python -c puts the working directory first on sys.path
        )  # fmt: skip
        if out.returncode:
            raise RuntimeError(f"prepare_data ({executor}, {copies}x) failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        speed = result["documents"] / result["seconds"]
        reference.setdefault(copies, speed if executor == "baseline" else None)
        ratio = f"{speed / reference[copies]:.2f}x" if reference[copies] else "-"
        rows.append([f"{copies}x", executor, workers if executor != "baseline" else 1, tasks, result["documents"],
                     f"{result['seconds']:.1f}", f"{speed:,.0f}", ratio, f"{result['main_kb'] / 1024:.0f}",
                     f"{result['worker_kb'] / 1024:.0f}"])  # fmt: skip
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sections", default="123456", help="which sections to run: 5 speed, 6 memory of 5")
    parser.add_argument("--copies", type=int, default=16, help="section 5a: the corpus, tinyshakespeare x N")
    parser.add_argument(
        "--baseline", help="section 5: a checkout of the single-process path to compare with (git worktree add "
        "../prep-baseline 972e966; its rows are skipped without it)")  # fmt: skip
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()
    corpus = os.path.abspath(args.corpus)
    docs = paragraphs(corpus)
    docs_by_name = {"shared corpus (1x)": docs, "synthetic (4x)": docs * 4}
    tokenizer = train_tokenizer(docs, vocab_size=8192)
    print(f"Corpus: {corpus}, {len(docs):,} paragraphs; byte-level BPE of {len(tokenizer)} tokens; block {BLOCK}.")
    print(f"CPU cores: {os.cpu_count()}; peak RSS of this process so far "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB\n")  # fmt: skip

    if "1" in args.sections:
        print("1. Tokenize + pack throughput (MB of text per second, median of interleaved rounds)\n")
        headers = ["corpus", "documents", "MB", "encode_batch MB/s", "tokenize+pack MB/s", "ours / encode_batch"]
        print(format_table(headers, throughput_rows(tokenizer, docs_by_name, args.rounds)) + "\n")
    if "2" in args.sections:
        print(f"2. Packing efficiency: real tokens in {BLOCK}-token blocks / corpus tokens\n")
        headers = ["corpus", "tokens", "pack_blocks", "group_texts (HF examples)", "pad each document"]
        print(format_table(headers, efficiency_rows(tokenizer, docs_by_name)) + "\n")

    with tempfile.TemporaryDirectory() as workdir:
        tokenizer_dir = os.path.join(workdir, "tokenizer")
        tokenizer.save_pretrained(tokenizer_dir)
        if "3" in args.sections:
            print("3. Streaming memory: one pass over the corpus through MixedBlockStream, in a fresh process\n")
            headers = ["corpus", "MB", "tokens", "RSS at 1st block MiB", "max RSS in pass MiB", "growth MiB",
                       "max / 1x", "tokens/s"]  # fmt: skip
            print(format_table(headers, streaming_rows(corpus, tokenizer_dir, workdir)) + "\n")
        if "4" in args.sections:
            print("4. Near-dedup removal rate per true Jaccard bin (random documents of 300 words)\n")
            headers = ["true Jaccard", "kind", "removed", "LSH candidate probability"]
            print(format_table(headers, recall_rows()) + "\n")
        if "5" in args.sections:
            big = args.copies
            print(f"5a. prepare_data on tinyshakespeare x{big} + pydoc x{4 * big}: documents/s (ratio to the "
                  "single-process baseline in the same run) and peak RSS (main process; largest worker)\n")  # fmt: skip
            runs = [(big, "baseline", 1, 1), (big, "local", 1, 4), (big, "local", 2, 4), (big, "ray", 2, 4)]
            headers = ["corpus", "executor", "workers", "tasks/source", "documents", "seconds", "docs/s",
                       "vs baseline", "main MiB", "worker MiB"]  # fmt: skip
            print(format_table(headers, prepare_rows(corpus, tokenizer_dir, workdir, runs, args.baseline)) + "\n")
        if "6" in args.sections:
            print("5b. Peak RSS of preparation at 1x, 4x and 16x the corpus, tasks grown with it (one local worker), "
                  "against the single-process baseline\n")  # fmt: skip
            runs = [(c, executor, 1, 4 * c) for c in (1, 4, 16) for executor in ("baseline", "local")]
            headers = ["corpus", "executor", "workers", "tasks/source", "documents", "seconds", "docs/s",
                       "vs baseline", "main MiB", "worker MiB"]  # fmt: skip
            print(format_table(headers, prepare_rows(corpus, tokenizer_dir, workdir, runs, args.baseline)))


if __name__ == "__main__":
    main()
