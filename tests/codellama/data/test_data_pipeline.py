"""Ingest, filters, dedup, mixture, packing and shard access of the data pipeline."""

from __future__ import annotations

import json
import logging
import subprocess

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codellama.data.dedup import WORD, DedupConfig, exact_dedup, near_dedup, shingles
from codellama.data.filters import FilterConfig, apply_filters, drop_reason
from codellama.data.ingest import SourceSpec, content_hash, language_of, list_code_files, load_documents, load_source
from codellama.data.mix import MixSource, MixSpec, apply_mixture, load_mix, plan_mixture
from codellama.data.pack import pack_layout, sequence_block
from codellama.data.shards import ShardWriter, TokenShards

CODE = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"


def _docs(texts, source="s", language="python"):
    return datasets.Dataset.from_dict(
        {
            "text": texts,
            "path": [f"f{i}.py" for i in range(len(texts))],
            "language": [language] * len(texts),
            "source": [source] * len(texts),
            "hash": [content_hash(t) for t in texts],
        }
    )


# -- ingest -----------------------------------------------------------------------------------
def test_languages_from_extensions():
    expected = {
        "a.py": "python",
        "a.c": "c",
        "a.h": "c",
        "a.cpp": "cpp",
        "A.java": "java",
        "a.js": "javascript",
        "a.ts": "typescript",
        "a.go": "go",
        "a.rs": "rust",
        "a.sh": "shell",
        "README.md": "markdown",
        "x.PY": "python",
        "data.bin": "unknown",
        "Makefile": "unknown",
    }
    assert {p: language_of(p) for p in expected} == expected


def test_directory_ingest_honours_gitignore(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.go").write_text("package main\n")
    (tmp_path / "src" / "gen.py").write_text("x = 1\n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out.c").write_text("int x;\n")
    (tmp_path / "notes.md").write_text("# notes\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01")
    (tmp_path / "latin1.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    (tmp_path / ".gitignore").write_text("build/\n")
    (tmp_path / "src" / ".gitignore").write_text("gen.py\n")
    expected = ["latin1.py", "notes.md", "src/main.go"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_code_files(tmp_path)] == expected
    docs = load_source(SourceSpec(str(tmp_path), name="repo"))
    assert docs.column_names == ["text", "path", "language", "source", "hash"]
    assert sorted(zip(docs["path"], docs["language"])) == [("notes.md", "markdown"), ("src/main.go", "go")]
    assert set(docs["source"]) == {"repo"}
    assert list_code_files(tmp_path, ["go"]) == [tmp_path / "src" / "main.go"]

    # the same tree as a git checkout: git decides (an untracked but not ignored file counts too)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "src" / "new.rs").write_text("fn main() {}\n")
    assert [p.relative_to(tmp_path).as_posix() for p in list_code_files(tmp_path)] == expected[:2] + [
        "src/main.go",
        "src/new.rs",
    ]


def test_table_sources_jsonl_parquet_and_saved_datasets(tmp_path):
    rows = [{"content": CODE, "path": "a/b.py"}, {"content": "fn main() {}\n", "path": "x.rs"}, {"content": None}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs = load_source(SourceSpec(str(tmp_path / "d.jsonl")))
    assert docs["text"][:] == [CODE, "fn main() {}\n"] and docs["language"][:] == ["python", "rust"]
    assert docs["hash"][0] == content_hash(CODE)

    datasets.Dataset.from_dict({"text": ["Prose about code.", "More prose."]}).to_parquet(str(tmp_path / "p.parquet"))
    prose = load_source(SourceSpec(str(tmp_path / "p.parquet"), name="nl", language="text"))
    assert prose["path"][:] == ["nl#0", "nl#1"] and set(prose["language"]) == {"text"}

    datasets.Dataset.from_dict({"code": ["int x;\n"], "lang": ["C"]}).save_to_disk(str(tmp_path / "saved"))
    saved = load_source(SourceSpec(str(tmp_path / "saved")))
    assert saved["text"][:] == ["int x;\n"] and saved["language"][:] == ["c"]

    both = load_documents([SourceSpec(str(tmp_path / "d.jsonl")), SourceSpec(str(tmp_path / "saved"), name="c")])
    assert len(both) == 3 and both["source"][-1] == "c"


def test_stdlib_is_the_default_source():
    docs = load_documents([])
    assert len(docs) > 1000 and set(docs["language"]) == {"python"}
    assert "asyncio/tasks.py" in set(docs["path"])


def test_bad_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="source not found"):
        load_source(SourceSpec(str(tmp_path / "missing")))
    (tmp_path / "t.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="no text column"):
        load_source(SourceSpec(str(tmp_path / "t.jsonl")))
    assert load_source(SourceSpec(str(tmp_path / "t.jsonl"), text_column="body"))["text"][:] == ["x"]
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(ValueError, match="unknown file type"):
        load_source(SourceSpec(str(tmp_path / "x.bin")))


# -- filters and dedup ----------------------------------------------------------------------------
def test_each_filter_catches_what_it_should():
    cfg = FilterConfig()
    assert drop_reason(CODE, cfg) is None
    assert drop_reason("x=1", cfg) == "min_bytes"
    assert drop_reason("x = 1\n" * 200_000, cfg) == "max_bytes"
    assert drop_reason("var a=" + "1," * 2000 + "\n", cfg) == "max_line_length"
    assert drop_reason(("y" * 150 + "\n") * 10, cfg) == "mean_line_length"
    assert drop_reason("0x00, 0x01, 0x02,\n" * 5, cfg) is None
    assert drop_reason("{ }, [ ], ( ), ;;\n" * 5, cfg) == "alnum_fraction"
    assert drop_reason("# Auto-generated by protoc. DO NOT EDIT.\n" + CODE, cfg) == "autogenerated"
    assert drop_reason(CODE * 3 + "# this line was generated by hand\n", cfg) is None  # only the first lines count
    assert drop_reason("# Auto-generated\n" + CODE, FilterConfig(autogenerated=False)) is None


def test_filter_report_counts_documents_and_bytes():
    texts = [CODE, "x", "# DO NOT EDIT\n" + CODE, "é" * 5]
    kept, removed = apply_filters(_docs(texts), FilterConfig())
    assert kept["text"][:] == [CODE]
    assert removed["min_bytes"] == {"documents": 2, "bytes": 1 + 10}
    assert removed["autogenerated"] == {"documents": 1, "bytes": len(texts[2])}
    assert removed["max_line_length"] == {"documents": 0, "bytes": 0}


def test_exact_and_near_duplicates_are_removed(stdlib_texts):
    originals = [t for t in stdlib_texts if 2_000 < len(t) < 20_000][:30]
    words = len(WORD.findall(originals[3]))
    edited = originals[3] + "\n# vendored copy: " + " ".join(f"w{i}" for i in range(words // 12)) + "\n"
    a, b = shingles(originals[3], 5), shingles(edited, 5)
    assert 0.9 < len(a & b) / len(a | b) < 0.95  # a near-duplicate: Jaccard similarity about 0.92
    texts = originals + [originals[0], edited]
    docs, exact = exact_dedup(_docs(texts))
    assert exact == {"documents": 1, "bytes": len(originals[0].encode())}
    kept, near = near_dedup(docs, DedupConfig())
    assert near["documents"] == 1 and kept["text"][:] == originals  # the first of each cluster stays
    assert near_dedup(docs, DedupConfig(threshold=0.98))[1]["documents"] == 0  # 0.92 < 0.98
    with pytest.raises(ValueError, match="too close to 1"):
        DedupConfig(threshold=0.99)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        DedupConfig(threshold=1.0)


# -- mixture ----------------------------------------------------------------------------------------
def test_mixture_gives_each_source_its_share_and_says_when_it_repeats(caplog):
    sizes = {"code": [100] * 900, "nl-code": [50] * 40, "nl": [10] * 1000}
    shares = {"code": 0.85, "nl-code": 0.08, "nl": 0.07}
    with caplog.at_level(logging.WARNING):
        chosen, stats = plan_mixture(sizes, shares, total_bytes=100_000, seed=0)
    got = {name: sum(sizes[name][i] for i in idx) for name, idx in chosen.items()}
    for name, share in shares.items():
        assert abs(got[name] - share * 100_000) <= max(sizes[name])
    assert stats["nl-code"]["epochs"] == pytest.approx(4.0) and "nl-code is repeated 4.00 times" in caplog.text
    assert stats["code"]["epochs"] < 1 and "code is repeated" not in caplog.text.replace("nl-code", "")
    # without a target, the largest mixture with no repeats: nl-code binds (2000 bytes = 8%)
    chosen, stats = plan_mixture(sizes, shares, total_bytes=None, seed=0)
    assert max(s["epochs"] for s in stats.values()) <= 1.0
    assert stats["nl-code"]["epochs"] == pytest.approx(1.0)
    assert plan_mixture(sizes, shares, None, seed=0)[0]["nl"].tolist() == chosen["nl"].tolist()  # deterministic


def test_mixture_file_and_dataset(tmp_path):
    (tmp_path / "nl.jsonl").write_text(
        "".join(json.dumps({"text": f"Prose number {i} about loops."}) + "\n" for i in range(5))
    )
    (tmp_path / "mix.yaml").write_text(
        "total_bytes: 3000\nsources:\n  - {name: code, source: code.jsonl, weight: 0.9}\n"
        "  - {name: nl, source: nl.jsonl, weight: 0.1, language: text}\n"
    )
    (tmp_path / "code.jsonl").write_text(json.dumps({"text": CODE}) + "\n")
    spec = load_mix(tmp_path / "mix.yaml")
    assert spec.shares == {"code": 0.9, "nl": pytest.approx(0.1)} and spec.sources[1].spec.language == "text"
    docs = load_documents(s.spec for s in spec.sources)
    mixed, stats = apply_mixture(docs, spec, seed=0)
    assert stats["code"]["epochs"] > 50 and stats["nl"]["epochs"] < 3
    assert set(mixed["source"]) == {"code", "nl"}
    (tmp_path / "bad.yaml").write_text("sources:\n  - {source: x, weight: 1, colour: red}\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_mix(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="positive"):
        MixSpec((MixSource(SourceSpec("stdlib"), 0.0),))


# -- packing and shards -----------------------------------------------------------------------------
class _Stream:
    def __init__(self, docs):
        self.tokens = np.concatenate(docs) if docs else np.zeros(0, np.int64)

    def read(self, a, b):
        return self.tokens[a:b]


def _in_order_sequences(lengths, seq_len):
    """Whole-files packing in stream order (the simple way): what best-fit must not be worse than."""
    count, fill = 0, 0
    for n in lengths:
        if fill + n <= seq_len:
            fill += n
        else:  # close the open sequence; a long file fills whole ones and its tail opens the next
            count += (fill > 0) + n // seq_len
            fill = n % seq_len
        if fill == seq_len:
            count, fill = count + 1, 0
    return count + (fill > 0)


@settings(max_examples=150, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), max_size=30), seq_len=st.integers(2, 16))
def test_whole_files_packing_never_splits_a_file_that_fits(lengths, seq_len):
    layout = pack_layout(np.array(lengths, dtype=np.int64), seq_len, "whole-files")
    total = sum(lengths)
    order = np.argsort(layout.starts, kind="stable")  # the segments tile the stream: nothing lost or doubled
    assert int(layout.lengths.sum()) == total and (layout.lengths > 0).all()
    assert np.array_equal(layout.starts[order][1:], (layout.starts + layout.lengths)[order][:-1])
    assert (layout.sequence_lengths <= seq_len).all() and (layout.sequence_lengths > 0).all()
    segments = set(zip(layout.starts.tolist(), layout.lengths.tolist()))
    pos = 0
    for n in lengths:
        whole, rest = divmod(n, seq_len)
        # a document that fits is one segment; a longer one fills whole sequences, then its tail is one segment
        expected = [(pos + k * seq_len, seq_len) for k in range(whole)] + (
            [(pos + whole * seq_len, rest)] if rest else []
        )
        assert set(expected) <= segments, (pos, n)
        pos += n
    assert len(layout) <= _in_order_sequences(lengths, seq_len)  # best-fit never pads more than stream order


def test_concat_packing_and_sequence_blocks():
    docs = [np.arange(k, dtype=np.int32) + 100 * k for k in (5, 7, 3, 9)]
    stream = _Stream(docs)
    layout = pack_layout([len(d) for d in docs], 4, "concat")
    assert len(layout) == 6 and layout.dropped_tokens == 0
    block, mask = sequence_block(stream, layout, 1, 3, pad_id=2)
    assert mask is None and block.tolist() == [stream.tokens[4:8].tolist(), stream.tokens[8:12].tolist()]
    # Whole files at 8 tokens: the 9-token file fills a sequence and leaves a 1-token tail; best fit then
    # packs 7+1 and 5+3 (no padding at all), where stream order needs 5 sequences (5, 7, 3, 8, 1).
    whole = pack_layout([len(d) for d in docs], 8, "whole-files")
    block, mask = sequence_block(stream, whole, 0, len(whole), pad_id=-1)
    assert block.tolist() == [
        docs[3][:8].tolist(),
        docs[1].tolist() + docs[3][8:].tolist(),
        docs[0].tolist() + docs[2].tolist(),
    ]
    assert mask.all() and whole.padding_tokens == 0
    short = pack_layout([5, 2], 8, "whole-files")  # padding is masked out
    block, mask = sequence_block(_Stream([docs[0], docs[1][:2]]), short, 0, 1, pad_id=-1)
    assert block[0].tolist() == docs[0].tolist() + docs[1][:2].tolist() + [-1] and mask[0].tolist() == [1] * 7 + [0]


def test_shard_writer_resumes_after_a_crash(tmp_path):
    seqs = np.arange(10 * 8).reshape(10, 8) % 300
    flushed = []
    writer = ShardWriter(tmp_path, 8, 300, sequences_per_shard=3, on_flush=flushed.append)
    for row in seqs[:7]:
        writer.add(row)
    assert [e["tokens"] for e in flushed] == ["shard-00000.tokens", "shard-00001.tokens"]
    # a new writer (after a crash) continues from the finished shards
    resumed = ShardWriter(tmp_path, 8, 300, sequences_per_shard=3)
    resumed.resume(flushed)
    for row in seqs[6:]:
        resumed.add(row)
    resumed.finish({"note": "x"})
    shards = TokenShards(tmp_path)
    assert len(shards) == 10 and all((shards[i] == seqs[i]).all() for i in range(10))
    with pytest.raises(ValueError, match="missing or has the wrong size"):
        (tmp_path / "shard-00001.tokens").write_bytes(b"12")
        ShardWriter(tmp_path, 8, 300, sequences_per_shard=3).resume(flushed)
