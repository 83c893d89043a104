"""`data prepare`: sources -> filter -> dedup -> mix -> FIM + tokenize -> packed shards, resumably.

Finished work is checkpointed in OUT/.work: the documents after filtering and mixing
(`save_to_disk`), the tokenized documents (datasets' cache file) and one line per
finished shard (progress.jsonl, fsynced after the shard file is renamed into place). A
run that is killed and restarted with the same settings picks up from there; since every
step is deterministic for a seed, the shards come out byte-identical to an uninterrupted
run. index.json is written last, then .work is removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np

from codellama import rundir
from codellama.data.dedup import DedupConfig, exact_dedup, near_dedup
from codellama.data.filters import FilterConfig, apply_filters
from codellama.data.fim import MODES, FimOptions
from codellama.data.ingest import SourceSpec, load_documents
from codellama.data.mix import MixSpec, apply_mixture
from codellama.data.pack import PACKING_MODES, PackingMode, pack_layout, sequence_block
from codellama.data.shards import INDEX, ShardIndex, ShardWriter
from codellama.data.tokenize import SPAN_KINDS, TokenStream, token_counts, tokenize_documents
from codellama.data.workers import children_die_with_us
from codellama.io import append_jsonl, atomic_directory, atomic_write_json, read_jsonl
from codellama.tokenizer import Tokenizer

log = logging.getLogger(__name__)

WORK = ".work"
TOKENS_PER_SHARD = 1 << 22  # default shard size: about 4M tokens (8 MB as uint16)


@dataclass(frozen=True)
class PrepareConfig:
    sources: tuple[SourceSpec, ...] = ()  # empty: the Python standard library
    mix: MixSpec | None = None  # replaces `sources` when given
    seq_len: int = 4096
    packing: PackingMode = "concat"
    fim: FimOptions = field(default_factory=FimOptions)
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    seed: int = 0
    sequences_per_shard: int | None = None  # default: about TOKENS_PER_SHARD tokens per shard
    max_documents: int | None = None  # keep only the first N documents after shuffling (smoke tests)
    # keep the first documents after shuffling until their text reaches this many bytes: a uniform sample
    # sized to a training budget, so a short run does not tokenize a whole corpus it will never read
    sample_bytes: int | None = None
    shuffle: bool = True

    def __post_init__(self):
        if self.packing not in PACKING_MODES:
            raise ValueError(f"packing must be one of {', '.join(PACKING_MODES)}, got {self.packing!r}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {self.seq_len}")
        if self.sequences_per_shard is not None and self.sequences_per_shard < 1:
            raise ValueError("sequences_per_shard must be positive")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError("max_documents must be positive")
        if self.sample_bytes is not None and self.sample_bytes < 1:
            raise ValueError("sample_bytes must be positive")

    @property
    def shard_size(self) -> int:
        return self.sequences_per_shard or max(1, TOKENS_PER_SHARD // self.seq_len)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


def prepare(
    config: PrepareConfig, tokenizer: Tokenizer, out_dir: str | os.PathLike, *, num_proc: int = 1
) -> ShardIndex:
    """Run (or resume) the whole pipeline into `out_dir`; returns the finished index."""
    out = Path(out_dir)
    work = out / WORK
    settings = {"config": config.to_json(), "tokenizer_sha256": tokenizer.fingerprint()}
    if (out / INDEX).exists():
        raise FileExistsError(f"{out} already holds finished shards ({INDEX}); choose another --out")
    # An error (not a kill or Ctrl-C, which keep the checkpoints in .work) leaves nothing half-written.
    with rundir.claim(out, "data prepare", settings, marker=f"{WORK}/{rundir.MARKER}", discard_on_error=True):
        with children_die_with_us():
            return _run(config, tokenizer, out, work, settings, num_proc)


def _run(
    config: PrepareConfig, tokenizer: Tokenizer, out: Path, work: Path, settings: dict, num_proc: int
) -> ShardIndex:
    docs, doc_stats = _documents(config, work, num_proc)
    meta = {"created_by": "codellama data prepare", **settings}
    index = documents_to_shards(docs, tokenizer, config, out, work, num_proc=num_proc, meta=meta, stats=doc_stats)
    shutil.rmtree(work, ignore_errors=True)
    _plot_summary(index.meta["stats"], out / "summary.png")  # a picture of the stats, not part of the shards
    return index


def documents_to_shards(
    docs: datasets.Dataset,
    tokenizer: Tokenizer,
    config: PrepareConfig,
    out: Path,
    work: Path,
    *,
    num_proc: int = 1,
    meta: dict | None = None,
    stats: dict | None = None,
) -> ShardIndex:
    """FIM + tokenize + pack + write: the stages after the documents are chosen (what the benchmark times)."""
    tokens = tokenize_documents(
        docs, tokenizer, config.fim, config.seed, num_proc=num_proc, cache_file=work / "tokens.arrow"
    )
    lengths = token_counts(tokens)
    layout = pack_layout(lengths, config.seq_len, config.packing)
    if len(layout) == 0:
        raise ValueError(f"only {int(lengths.sum())} tokens: not enough for one sequence of {config.seq_len}")
    stats = {**(stats or {}), **_token_stats(tokens, lengths, layout)}
    meta = {**(meta or {}), "tokenizer": _tokenizer_meta(tokenizer), "stats": stats}
    if config.packing == "whole-files":
        meta["pad_id"] = tokenizer.eos_id
    return _write_shards(config, tokenizer, out, work, tokens, layout, meta)


def _documents(config: PrepareConfig, work: Path, num_proc: int) -> tuple[datasets.Dataset, dict]:
    """Ingest, filter, dedup, mix and shuffle, or load the checkpoint of a previous attempt."""
    docs_dir, stats_file = work / "documents", work / "documents.json"
    if docs_dir.is_dir() and stats_file.is_file():
        log.info("documents: reusing the checkpoint in %s", docs_dir)
        return datasets.load_from_disk(str(docs_dir)), json.loads(stats_file.read_text())
    docs, stats = build_documents(config, num_proc=num_proc)
    with atomic_directory(docs_dir, overwrite=True) as tmp:
        docs.save_to_disk(str(tmp))
    atomic_write_json(stats_file, stats)
    return datasets.load_from_disk(str(docs_dir)), stats


def build_documents(config: PrepareConfig, *, num_proc: int = 1) -> tuple[datasets.Dataset, dict]:
    """Every document stage before tokenization, with what each one removed."""
    specs = tuple(s.spec for s in config.mix.sources) if config.mix else (config.sources or (SourceSpec(),))
    docs = load_documents(specs)
    if len(docs) == 0:
        raise ValueError(
            f"no documents found in {', '.join(s.location for s in specs)} "
            f"(directories are read for files with a known code extension)"
        )
    stats: dict = {"ingested": _count(docs)}
    docs, stats["filters"] = apply_filters(docs, config.filters, num_proc=num_proc)
    if config.dedup.exact:
        docs, stats["exact_dedup"] = exact_dedup(docs)
    if config.dedup.near:
        docs, stats["near_dedup"] = near_dedup(docs, config.dedup, num_proc=num_proc)
    if len(docs) == 0:
        raise ValueError("no documents left after filtering and deduplication (see the filter options)")
    stats["kept"] = _count(docs)
    if config.mix:
        docs, stats["mixture"] = apply_mixture(docs, config.mix, config.seed)
    if config.shuffle:
        docs = docs.select(np.random.default_rng(config.seed).permutation(len(docs)))
    if config.max_documents is not None and config.max_documents < len(docs):
        docs = docs.select(range(config.max_documents))
    if config.sample_bytes is not None:
        sizes = _text_bytes(docs)
        keep = documents_within(sizes, config.sample_bytes)
        stats["sample"] = {"documents": keep, "of": len(docs), "bytes": int(sizes[:keep].sum())}
        docs = docs.select(range(keep))
    stats["documents"] = len(docs)
    return docs.flatten_indices(), stats


def _text_bytes(docs: datasets.Dataset) -> np.ndarray:
    return np.fromiter((len(t.encode("utf-8", "surrogatepass")) for t in docs["text"]), dtype=np.int64, count=len(docs))


def documents_within(sizes: Sequence[int], budget: int) -> int:
    """How many leading documents reach `budget` bytes (all of them if they never do)."""
    reached = np.flatnonzero(np.cumsum(sizes) >= budget)
    return int(reached[0]) + 1 if len(reached) else len(sizes)


def _count(docs: datasets.Dataset) -> dict:
    """Documents and bytes per source."""
    out: dict[str, dict[str, int]] = {}
    for source, text in zip(docs["source"], docs["text"]):
        entry = out.setdefault(source, {"documents": 0, "bytes": 0})
        entry["documents"] += 1
        entry["bytes"] += len(text.encode("utf-8", "surrogatepass"))
    return dict(sorted(out.items()))


def _token_stats(tokens: datasets.Dataset, lengths: np.ndarray, layout) -> dict:
    columns = tokens.select_columns(["fim", "span"]).with_format("numpy")
    fim, span = np.asarray(columns["fim"]), np.asarray(columns["span"])
    n = max(1, len(fim))
    modes = {m: int((fim == k).sum()) for k, m in enumerate(MODES)}
    spans = {s: int((span == k).sum()) for k, s in enumerate(SPAN_KINDS)}
    return {
        "tokens": int(lengths.sum()),
        "sequences": len(layout),
        "padding_tokens": layout.padding_tokens,
        "dropped_tail_tokens": layout.dropped_tokens,
        "fim_modes": modes,
        "fim_fraction": round((modes["psm"] + modes["spm"]) / n, 6),
        "spm_fraction_of_fim": round(modes["spm"] / max(1, modes["psm"] + modes["spm"]), 6),
        "fim_spans": spans,
        "document_tokens": {
            "mean": round(float(lengths.mean()), 3) if len(lengths) else 0.0,
            "max": int(lengths.max()) if len(lengths) else 0,
        },
    }


def _tokenizer_meta(tok: Tokenizer) -> dict:
    return {
        "vocab_size": tok.vocab_size,
        "sha256": tok.fingerprint(),
        "backend": tok.backend,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "prefix_id": tok.prefix_id,
        "suffix_id": tok.suffix_id,
        "middle_id": tok.middle_id,
        "eot_id": tok.eot_id,
        "file": tok.file_name,
    }


def _write_shards(
    config: PrepareConfig,
    tokenizer: Tokenizer,
    out: Path,
    work: Path,
    tokens: datasets.Dataset,
    layout,
    meta: dict,
) -> ShardIndex:
    from tqdm.auto import tqdm

    progress = work / "progress.jsonl"
    masked = config.packing == "whole-files"
    writer = ShardWriter(
        out,
        config.seq_len,
        tokenizer.vocab_size,
        sequences_per_shard=config.shard_size,
        with_loss_mask=masked,
        on_flush=lambda entry: append_jsonl(progress, entry),
    )
    writer.resume(read_jsonl(progress))
    if writer.index.num_sequences:
        log.info(
            "resuming after %d finished shards (%d sequences)", len(writer.index.shards), writer.index.num_sequences
        )
    stream = TokenStream(tokens)
    step = config.shard_size
    ones = np.ones(config.seq_len, np.uint8)
    starts = range(writer.index.num_sequences, len(layout), step)
    for first in tqdm(starts, desc="pack+write", unit="shard", disable=len(starts) < 2):
        block, mask = sequence_block(stream, layout, first, min(first + step, len(layout)), tokenizer.eos_id)
        for row in range(len(block)):
            writer.add(block[row], (mask[row] if mask is not None else ones) if masked else None)
    tokenizer.save(out, for_transformers=False)  # `data inspect` decodes with it
    return writer.finish(meta)


def _plot_summary(stats: dict, path: Path) -> None:
    """What each filter removed and how documents were laid out, at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    removed = {name: v["documents"] for name, v in stats["filters"].items()}
    for stage in ("exact_dedup", "near_dedup"):
        if stage in stats:
            removed[stage.replace("_", " ")] = stats[stage]["documents"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.barh(list(removed), list(removed.values()), color="tab:red")
    ax1.set_xlabel("documents removed")
    ax1.set_title(f"{sum(v['documents'] for v in stats['ingested'].values())} ingested, {stats['documents']} used")
    modes = stats["fim_modes"]
    ax2.bar(list(modes), list(modes.values()), color=["tab:gray", "tab:blue", "tab:green"])
    ax2.set_ylabel("documents")
    ax2.set_title(
        f"FIM {stats['fim_fraction']:.1%} (SPM {stats['spm_fraction_of_fim']:.1%} of FIM), {stats['tokens']:,} tokens"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
