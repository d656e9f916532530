"""Data pipeline figures on the shared corpus (tinyshakespeare) and a synthetic 4x concatenation of it.

    python benchmarks/data.py [--corpus ../shared/data/tinyshakespeare.txt] [--rounds 5] [--stats-dir DIR]

1. Tokenize + pack throughput: `tokenize_documents` (datasets.map, batched) + `pack_blocks` (with document
   boundaries), against the tokenizer's own Rust `encode_batch` (ids extracted) on the same documents and cores,
   timed round-robin in one run (target: >= 0.8x the baseline's documents per second).
2. Packing efficiency: real tokens in blocks / tokens of the corpus (target >= 99.5%), against padding every
   document to the block size, and against the `group_texts` of transformers' examples (remainder of every
   1,000-document map batch dropped).
3. Streaming memory: resident memory of a process that streams the corpus 1x and 10x through `MixedBlockStream`
   (read, normalise, tokenize, pack): at the first block and at most during the pass (target: flat, ratio ~1).
4. Deduplication of the raw corpus (no filter first): exact and near-duplicate documents and clusters, and time.
5. Preparation: `prepare_data` on the shared corpus, its stats.json written to --stats-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

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


def dedup_rows(docs: list[str]) -> list[list]:
    from hf_pretrain.data.dedup import document_hashes, document_signatures, exact_duplicates, near_duplicates

    documents = Dataset.from_dict({"text": docs})
    start = time.perf_counter()
    exact = exact_duplicates(document_hashes(documents))
    middle = time.perf_counter()
    near = near_duplicates(document_signatures(documents.select(np.flatnonzero(exact.keep))), threshold=0.8)
    end = time.perf_counter()
    return [
        ["exact (normalised xxh3)", len(docs), exact.removed, exact.clusters, f"{middle - start:.2f}"],
        ["near (MinHash-LSH, J >= 0.8)", int(exact.keep.sum()), near.removed, near.clusters, f"{end - middle:.2f}"],
    ]


def prepare_stats(corpus: str, tokenizer_dir: str, stats_dir: str) -> dict:
    from hf_pretrain.data.prepare import PrepareArguments, prepare_corpus

    args = PrepareArguments(
        sources=[
            {"name": "shakespeare", "data_files": [corpus], "weight": 0.7},
            {"name": "pydoc", "default_corpus": True, "weight": 0.3},
        ],
        output_dir=stats_dir,
        overwrite_output_dir=True,
        block_size=BLOCK,
        tokenizer_name_or_path=tokenizer_dir,
        # Dialogue paragraphs are short (Gopher's 50-word minimum would drop most speeches) and the reference docs
        # are full of code symbols (Gopher's 80% alphabetic words would drop them): both thresholds relaxed.
        filter_settings={"gopher_quality": {"min_doc_words": 10, "max_non_alpha_words_ratio": 0.5}},
    )
    return prepare_corpus(args)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stats-dir", default=os.path.join(tempfile.gettempdir(), "hf_pretrain_prepared"))
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()
    corpus = os.path.abspath(args.corpus)
    docs = paragraphs(corpus)
    docs_by_name = {"shared corpus (1x)": docs, "synthetic (4x)": docs * 4}
    tokenizer = train_tokenizer(docs, vocab_size=8192)
    print(f"Corpus: {corpus}, {len(docs):,} paragraphs; byte-level BPE of {len(tokenizer)} tokens; block {BLOCK}.")
    print(f"CPU cores: {os.cpu_count()}; peak RSS of this process so far "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB\n")  # fmt: skip

    print("1. Tokenize + pack throughput (MB of text per second, median of interleaved rounds)\n")
    headers = ["corpus", "documents", "MB", "encode_batch MB/s", "tokenize+pack MB/s", "ours / encode_batch"]
    print(format_table(headers, throughput_rows(tokenizer, docs_by_name, args.rounds)) + "\n")

    print(f"2. Packing efficiency: real tokens in {BLOCK}-token blocks / corpus tokens\n")
    headers = ["corpus", "tokens", "pack_blocks", "group_texts (HF examples)", "pad each document"]
    print(format_table(headers, efficiency_rows(tokenizer, docs_by_name)) + "\n")

    with tempfile.TemporaryDirectory() as workdir:
        tokenizer_dir = os.path.join(workdir, "tokenizer")
        tokenizer.save_pretrained(tokenizer_dir)
        print("3. Streaming memory: one pass over the corpus through MixedBlockStream, in a fresh process\n")
        headers = ["corpus", "MB", "tokens", "RSS at 1st block MiB", "max RSS in pass MiB", "growth MiB",
                   "max / 1x", "tokens/s"]  # fmt: skip
        print(format_table(headers, streaming_rows(corpus, tokenizer_dir, workdir)) + "\n")

        print("4. Deduplication of the raw shared corpus (paragraphs, no quality filter first)\n")
        headers = ["step", "documents in", "removed", "clusters", "seconds"]
        print(format_table(headers, dedup_rows(docs)) + "\n")

        print(f"5. prepare_data on the shared corpus (+ the built-in pydoc corpus, 70/30) -> {args.stats_dir}\n")
        start = time.perf_counter()
        stats = prepare_stats(corpus, tokenizer_dir, args.stats_dir)
        print(f"prepared in {time.perf_counter() - start:.1f} s; totals: {json.dumps(stats['totals'], indent=1)}")
        print(f"stats.json: {os.path.join(args.stats_dir, 'stats.json')}")


if __name__ == "__main__":
    main()
