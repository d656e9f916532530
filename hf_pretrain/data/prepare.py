"""Data preparation: weighted sources → filtered, deduplicated, tokenized, packed shards + mixture index + stats.json,
as datatrove pipeline stages on its local, Ray or Slurm executor.

    read      (S x tasks)  source shard ─ normalise + quality filters ─ write kept documents ─ exact hashes +
                           MinHash signatures (datatrove's ExactDedupSignature, MinhashDedupSignature)
    buckets   (bands)      datatrove's MinhashDedupBuckets (candidate pairs) and ExactFindDedups (per hash range)
    clusters  (1)          candidates confirmed with the full signatures, clusters, what each task removes;
                           the tokenizer (loaded, or trained on a sample of the kept training documents)
    pack      (S x tasks)  datatrove's MinhashDedupFilter ─ validation split ─ tokenize + pack into shards
    mix       (1)          training order of the weighted mixture, index.json, train_order.npy, stats.json (last)

Task ids are source-major, and the number of tasks (`tasks` per source) is fixed by the config, not by the number
of workers: the output is the same, bit for bit, with any number of workers on any executor. Deduplication is
global: a document in two sources is kept once, in the first source listed. The validation split is decided by
each document's own text (a keyed hash with `seed`), after deduplication, so no duplicate straddles it. Every
document that does not make it is counted in stats.json under the step and the reason that removed it.

A run is resumable: rerunning the same command skips every finished task (datatrove's completions) and reruns the
killed or failed ones from their inputs; stats.json, written last, marks the dataset complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field

from hf_pretrain.cli import parse_mapping
from hf_pretrain.data.dedup import confirm_cutoff, lsh_shape
from hf_pretrain.data.executors import EXECUTORS, Stage, run_stages
from hf_pretrain.data.mixing import normalize_weights
from hf_pretrain.data.quality import DEFAULT_FILTERS, NORMALIZATIONS, DocumentFilter
from hf_pretrain.data.shards import STATS_FILE
from hf_pretrain.data.sources import parse_sources
from hf_pretrain.run_layout import TOKENIZER_SUBDIR

logger = logging.getLogger(__name__)

# Fields that say where and how fast the job runs, not what it produces: changing them keeps a resumable run.
RUN_FIELDS = ("executor", "workers", "ray_address", "slurm_partition", "slurm_time", "slurm_qos", "cpus_per_task",
              "mem_per_cpu_gb", "slurm_env_command", "slurm_sbatch_args", "dry_run", "overwrite_output_dir")  # fmt: skip


@dataclass
class PrepareArguments:
    """What `recipes/prepare_data.py` reads, cleans, mixes and writes, and where it runs."""

    sources: list | str | None = field(
        default=None,
        metadata={
            "help": "Weighted sources, a YAML list (JSON on the command line) of {name, weight, data_files | "
            "dataset_name (+ dataset_config_name, split) | default_corpus: true, text_column, text_sample_by}."
        },
    )
    output_dir: str = field(default="outputs/prepared", metadata={"help": "Where the shards and stats.json go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing prepared dataset."})
    work_dir: str | None = field(
        default=None,
        metadata={"help": "Intermediate files and task logs (default: <output_dir>/_work); shared by all nodes."},
    )
    block_size: int = field(default=512, metadata={"help": "Tokens per packed block."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use (Hub id or folder). Unset: train one on the kept documents."}
    )
    tokenizer_vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size of a trained tokenizer."})
    tokenizer_training_documents: int = field(
        default=100_000, metadata={"help": "At most this many kept documents train the tokenizer."}
    )
    normalization: str = field(default="NFC", metadata={"help": f"Unicode normalisation, one of {NORMALIZATIONS}."})
    quality_filters: list[str] = field(
        default_factory=lambda: list(DEFAULT_FILTERS),
        metadata={"help": "Quality filters in order: gopher_quality, gopher_repetition, c4; 'none' for none."},
    )
    filter_settings: dict | str | None = field(
        default=None,
        metadata={"help": "Per-filter thresholds, e.g. {'gopher_quality': {'min_doc_words': 20}} (datatrove names)."},
    )
    exact_dedup: bool = field(default=True, metadata={"help": "Remove documents whose normalised text repeats."})
    near_dedup: bool = field(default=True, metadata={"help": "Remove near-duplicates (MinHash)."})
    near_dedup_threshold: float = field(
        default=0.8,
        metadata={"help": "Jaccard similarity of word 5-grams from which documents are duplicates: a pair at it is "
                  "removed with probability >= 0.97 (curve: benchmarks/data.py)."},
    )  # fmt: skip
    minhash_num_perm: int = field(default=256, metadata={"help": "MinHash permutations (signature length)."})
    minhash_ngram: int = field(default=5, metadata={"help": "Words per shingle for MinHash."})
    validation_fraction: float = field(
        default=0.05, metadata={"help": "Share of each source's kept documents held out for validation."}
    )
    num_blocks: int | None = field(
        default=None,
        metadata={"help": "Training blocks in the mixture. Unset: as many as fit before any source would repeat."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the validation split, MinHash and the block shuffle."})
    executor: str = field(default="local", metadata={"help": f"Where the tasks run, one of {EXECUTORS}."})
    tasks: int = field(
        default=4,
        metadata={"help": "Tasks (shards) per source: fixes the result; grow it with the corpus to bound memory."},
    )
    workers: int = field(default=1, metadata={"help": "Tasks run at once (local processes, Ray workers; Slurm: "
                                                      "array limit, 0 for none)."})  # fmt: skip
    ray_address: str | None = field(
        default=None, metadata={"help": "Ray cluster to use (e.g. 'auto'); unset: start a local one with `workers`."}
    )
    cpus_per_task: int = field(default=1, metadata={"help": "CPUs per task (Ray, Slurm)."})
    mem_per_cpu_gb: float = field(default=2.0, metadata={"help": "Memory per CPU in GB (Ray, Slurm)."})
    slurm_partition: str | None = field(default=None, metadata={"help": "Slurm partition (executor: slurm)."})
    slurm_time: str = field(default="04:00:00", metadata={"help": "Slurm time limit per task."})
    slurm_qos: str | None = field(default=None, metadata={"help": "Slurm QOS, if your cluster needs one."})
    slurm_env_command: str | None = field(
        default=None, metadata={"help": "Shell line that sets up Python in a job (default: source this venv)."}
    )
    slurm_sbatch_args: dict | str | None = field(
        default=None, metadata={"help": "Extra #SBATCH directives, e.g. {'account': 'my-project'}."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Slurm: write and print the sbatch scripts, submit none."})

    def __post_init__(self):
        self.source_specs = parse_sources(self.sources)
        if not self.source_specs:
            raise ValueError("sources: give at least one source.")
        normalize_weights([s.weight for s in self.source_specs], [s.name for s in self.source_specs])
        if self.quality_filters == ["none"]:
            self.quality_filters = []
        self.filter_settings = parse_mapping(self.filter_settings, "filter_settings")
        self.slurm_sbatch_args = parse_mapping(self.slurm_sbatch_args, "slurm_sbatch_args")
        DocumentFilter(self.normalization, self.quality_filters, self.filter_settings)  # validates names, settings
        if self.block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {self.block_size}.")
        if not 0.0 < self.near_dedup_threshold <= 1.0:
            raise ValueError(f"near_dedup_threshold must be in (0, 1], got {self.near_dedup_threshold}.")
        if self.minhash_num_perm < 16 or self.minhash_ngram < 1:
            raise ValueError("minhash_num_perm must be at least 16 and minhash_ngram at least 1.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}.")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be positive, got {self.num_blocks}.")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}.")
        if self.tasks < 1:
            raise ValueError(f"tasks must be at least 1, got {self.tasks}.")
        if self.workers < (0 if self.executor == "slurm" else 1):
            raise ValueError(f"workers must be at least 1, got {self.workers}.")
        if self.executor == "slurm" and not self.slurm_partition:
            raise ValueError("slurm_partition: executor slurm needs a partition.")
        if self.dry_run and self.executor != "slurm":
            raise ValueError("dry_run: only the slurm executor has a dry run.")
        if len(self.source_specs) > 65534:
            raise ValueError("sources: at most 65534 sources (datatrove's exact-dedup priority is 16 bits).")
        self.work_dir = self.work_dir or os.path.join(self.output_dir, "_work")
        if os.path.exists(os.path.join(self.output_dir, STATS_FILE)) and not self.overwrite_output_dir:
            raise ValueError(
                f"output_dir={self.output_dir!r} already holds a prepared dataset; set overwrite_output_dir: true."
            )

    def result_config(self) -> dict:
        """The fields that decide the result (not where or how fast it is computed)."""
        return {k: v for k, v in asdict(self).items() if k not in ("source_specs", *RUN_FIELDS)}


def _check_resumable(args: PrepareArguments) -> None:
    """Start afresh (overwrite) or resume a run of the same settings; a half-done run of other settings is an
    error, not something to mix with."""
    if args.overwrite_output_dir and not args.dry_run:
        for path in (args.output_dir, args.work_dir):
            shutil.rmtree(path, ignore_errors=True)
    config = json.dumps(args.result_config(), sort_keys=True, default=str)
    marker = os.path.join(args.work_dir, "config.json")
    if os.path.isfile(marker):
        with open(marker) as handle:
            if handle.read() != config:
                raise ValueError(
                    f"work_dir={args.work_dir!r} holds an unfinished run with other settings: set "
                    "overwrite_output_dir: true to start afresh."
                )
    os.makedirs(args.work_dir, exist_ok=True)
    with open(marker, "w") as handle:
        handle.write(config)


def build_stages(args: PrepareArguments) -> list[Stage]:
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactFindDedups
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupFilter
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    from hf_pretrain.data.pipeline_steps import (
        ConfirmedClusters,
        DedupSignatures,
        PrepareTokenizer,
        QualityFilterStep,
        SourceShardReader,
        TaskDocuments,
        simplified_text,
        source_priority,
    )
    from hf_pretrain.data.prepare_shards import PackShards
    from hf_pretrain.data.prepare_stats import MixtureIndex

    work, per_source = args.work_dir, args.tasks
    tasks = len(args.source_specs) * per_source
    sources = [dataclasses.asdict(spec) for spec in args.source_specs]
    bands, rows = lsh_shape(args.near_dedup_threshold, args.minhash_num_perm)
    minhash = MinhashConfig(n_grams=args.minhash_ngram, num_buckets=bands, hashes_per_bucket=rows,
                            seed=args.seed + 1, hash_config=HashConfig(precision=64))  # fmt: skip
    exact = ExactDedupConfig(content_getter=simplified_text, document_priority=source_priority)
    folder = lambda name: os.path.join(work, name)  # noqa: E731
    finders = bands if args.near_dedup else 1

    read = [
        SourceShardReader(sources, per_source),
        QualityFilterStep(
            sources, args.normalization, args.quality_filters, args.filter_settings, folder("stats/read")
        ),  # fmt: skip
        JsonlWriter(folder("documents"), output_filename="${rank}.jsonl.gz"),
    ]
    if args.exact_dedup or args.near_dedup:
        read.append(DedupSignatures(folder("minhash"), folder("exact"), folder("signatures"), minhash, exact, finders,
                                    near=args.near_dedup, exact=args.exact_dedup))  # fmt: skip
    buckets = []
    if args.near_dedup:
        buckets.append(MinhashDedupBuckets(folder("minhash"), folder("buckets"), config=minhash))
    if args.exact_dedup:
        buckets.append(ExactFindDedups(folder("exact"), folder("exact_dups"), exact))
    cutoff = confirm_cutoff(args.near_dedup_threshold, args.minhash_num_perm) if args.near_dedup else None
    tokenizer_dir = os.path.join(args.output_dir, TOKENIZER_SUBDIR)
    stages = [Stage("read", read, tasks)]
    if buckets:
        stages.append(Stage("buckets", buckets, finders))
    stages += [
        Stage("clusters", [
            ConfirmedClusters(work, tasks, per_source, args.minhash_num_perm, cutoff, exact=args.exact_dedup),
            PrepareTokenizer(tokenizer_dir, work, args.tokenizer_name_or_path, args.tokenizer_vocab_size,
                             args.tokenizer_training_documents, tasks, per_source, args.validation_fraction,
                             args.seed),
        ], 1),
        Stage("pack", [
            TaskDocuments(folder("documents")),
            MinhashDedupFilter(folder("remove")),
            PackShards(args.output_dir, folder("stats/pack"), args.block_size, per_source, args.validation_fraction,
                       args.seed),
        ], tasks),
        Stage("mix", [
            MixtureIndex(args.output_dir, work, [s.name for s in args.source_specs],
                         [s.weight for s in args.source_specs], per_source, args.block_size, args.num_blocks,
                         args.seed, json.loads(json.dumps(args.result_config(), default=str))),
        ], 1),
    ]  # fmt: skip
    return stages


def prepare_corpus(args: PrepareArguments, tokenizer=None) -> dict | None:
    """Run every stage (resuming a run of the same settings), write the shards, index, tokenizer and stats.json to
    `args.output_dir`; return the stats. On Slurm the jobs are submitted (or, with dry_run, written) and None is
    returned: the dataset is complete when stats.json appears."""
    for spec in args.source_specs:  # a missing text column fails here, naming the source, not in a task
        spec.load()
    _check_resumable(args)
    config_hash = hashlib.sha1(json.dumps(args.result_config(), sort_keys=True, default=str).encode()).hexdigest()
    logger.info("Preparing %s (settings %s) on the %s executor.", args.output_dir, config_hash[:8], args.executor)
    tokenizer_dir = os.path.join(args.output_dir, TOKENIZER_SUBDIR)
    if tokenizer is not None and not os.path.isdir(tokenizer_dir):
        tokenizer.save_pretrained(tokenizer_dir)  # the tasks load it from there
    scripts = run_stages(build_stages(args), args)
    if args.executor == "slurm":
        return {"sbatch_scripts": scripts} if args.dry_run else None
    with open(os.path.join(args.output_dir, STATS_FILE)) as handle:
        stats = json.load(handle)
    logger.info("Prepared %d training blocks of %d tokens in %s.", stats["totals"]["train_blocks"],
                args.block_size, args.output_dir)  # fmt: skip
    return stats
