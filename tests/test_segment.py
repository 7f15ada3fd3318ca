"""The segment stage on a real file tree: what is kept, what is skipped and why, exact token ids."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from autocoder.corpus import TOKENIZER_DIR, Corpus
from autocoder.errors import UserError
from autocoder.params import Params, SplitParams
from autocoder.segment import Skip, read_source, run
from helpers import JAVA_SNIPPET, STDLIB

SEGMENT_LEN, STRIDE, MAX_FILE_BYTES, MAX_LINE_CHARS = 32, 8, 200_000, 500
BISECT = (STDLIB / "bisect.py").read_text()


def make_params(root: Path, out: str = "segments", **segment) -> Params:
    return Params.model_validate(
        {
            "languages": {"python": {"extensions": [".py"]}, "java": {"extensions": [".java"]}},
            "clone": {
                "sources": [{"name": "pysrc", "path": "unused", "languages": ["python"]}],
                "out_dir": str(root / "data/raw"),
            },
            "segment": {
                "tokenizer": "gpt2",
                "segment_len": SEGMENT_LEN,
                "stride": STRIDE,
                "max_file_bytes": MAX_FILE_BYTES,
                "max_line_chars": MAX_LINE_CHARS,
                "files_per_batch": 3,
                "out_dir": str(root / out),
                **segment,
            },
            "finetune": {"model": "scratch"},  # what a learned tokenizer needs; segment trains nothing
        }
    )


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)


def make_raw_tree(raw: Path) -> None:
    py, java = raw / "pysrc", raw / "javasrc"
    write(raw / "sources.json", "{}")  # the clone stage's record, not a source file
    write(py / "bisect.py", BISECT)
    write(py / "pkg/nested/heapq.py", (STDLIB / "heapq.py").read_text())
    write(py / "pkg/bisect_copy.py", BISECT)  # exact duplicate: sorted after bisect.py
    write(py / "tiny.py", "x = 1\n")  # shorter than a window
    write(py / "special.py", 'EOS = "<|endoftext|>"  # <python> <java>\n')
    write(py / "binary.py", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write(py / "latin1.py", "# caf\u00e9 cr\u00e8me\nx = 1\n".encode("latin-1"))
    write(py / "empty.py", "")
    write(py / "blank.py", "  \n\n\t\n")
    write(py / "huge.py", "x = 1\n" * (MAX_FILE_BYTES // 6 + 1))
    write(py / "minified.py", "x = [" + "1, " * MAX_LINE_CHARS + "]\n")
    write(py / "README.md", "# not code\n")
    (py / "link.py").symlink_to(py / "bisect.py")
    (py / "pkg/loop").symlink_to(py)  # a symlink loop: never followed
    os.mkfifo(py / "pipe.py")  # reading it would block forever
    # First and slowest to tokenize: with 2 workers, the next batch finishes before it.
    write(
        java / "Big.java",
        "class Big {\n" + "".join(f"    int f{i}(int x) {{ return x * {i}; }}\n" for i in range(4000)) + "}\n",
    )
    write(java / "Factorial.java", JAVA_SNIPPET)
    write(java / "util/Other.java", JAVA_SNIPPET.replace("Factorial", "Other"))


def segment_tree(root: Path, **segment) -> dict:
    """Run the stage with cwd = root (the metrics path is relative); return the stats it wrote."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        run(make_params(root, **segment))
    return json.loads((root / "metrics/segment_stats.json").read_text())


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment")
    make_raw_tree(root / "data/raw")
    return root, segment_tree(root, workers=2)


def row_of(corpus: Corpus, source: str, path: str) -> int:
    rows = [i for i in range(len(corpus)) if (corpus.files["source"][i], corpus.files["path"][i]) == (source, path)]
    assert len(rows) == 1, (source, path)
    return rows[0]


def test_skips_are_counted_by_reason(segmented):
    root, stats = segmented
    assert stats["skipped"] == {
        "symlink": 2,
        "special_file": 1,
        "unknown_extension": 1,
        "too_large": 1,
        "unreadable": 0,
        "binary": 1,
        "not_utf8": 1,
        "empty": 2,
        "minified": 1,
        "duplicate": 1,
        "near_duplicate": 0,
    }
    corpus = Corpus(root / "segments")
    kept = sorted(zip(corpus.files["source"], corpus.files["path"], corpus.files["language"]))
    assert kept == [
        ("javasrc", "Big.java", "java"),
        ("javasrc", "Factorial.java", "java"),
        ("javasrc", "util/Other.java", "java"),
        ("pysrc", "bisect.py", "python"),
        ("pysrc", "pkg/nested/heapq.py", "python"),
        ("pysrc", "special.py", "python"),
        ("pysrc", "tiny.py", "python"),
    ]
    assert stats["files_kept"] == 7
    assert stats["files_seen"] == 7 + sum(stats["skipped"].values())
    assert list(corpus.files["file_id"]) == list(range(7))  # ids in sorted order: javasrc < pysrc


def test_stats_per_language_match_the_corpus(segmented):
    root, stats = segmented
    corpus = Corpus(root / "segments")
    for lang in ("python", "java"):
        rows = np.flatnonzero(corpus.files["language"] == lang)
        assert stats["languages"][lang]["files"] == len(rows)
        assert stats["languages"][lang]["tokens"] == int(corpus.files["n_tokens"][rows].sum())
        assert stats["languages"][lang]["windows"] == len(corpus.windows(rows))
        assert stats["languages"][lang]["bytes"] == int(corpus.files["n_bytes"][rows].sum())
    assert stats["windows"] == len(corpus.windows(np.arange(len(corpus)))) > 0
    assert (stats["segment_len"], stats["stride"]) == (SEGMENT_LEN, STRIDE)


def test_windows_of_a_known_file_have_exact_ids(segmented, gpt2_tokenizer):
    root, _ = segmented
    corpus = Corpus(root / "segments")
    python, eos = corpus.meta.control_token_ids["python"], corpus.meta.eos_id
    assert (python, eos) == (50257, 50256)
    expected = gpt2_tokenizer.encode(BISECT)
    n = len(expected)
    row = row_of(corpus, "pysrc", "bisect.py")
    assert list(corpus.file_tokens(row)) == expected  # no control token or eos inside the file's ids

    windows = corpus.windows(np.array([row]))
    # Starts every STRIDE tokens up to n - SEGMENT_LEN, plus one ending at the file's end.
    last_start = n - SEGMENT_LEN
    assert len(windows) == last_start // STRIDE + 1 + (last_start % STRIDE != 0)
    # eos only after the window that ends at the file's end
    assert list(windows[0]) == [python] + expected[0:SEGMENT_LEN]
    assert list(windows[1]) == [python] + expected[STRIDE : STRIDE + SEGMENT_LEN]
    assert list(windows[len(windows) - 1]) == [python] + expected[n - SEGMENT_LEN : n] + [eos]
    assert [len(windows[i]) for i in range(len(windows))] == [SEGMENT_LEN + 1] * (len(windows) - 1) + [SEGMENT_LEN + 2]


def test_control_tokens_and_eos_only_around_windows(segmented, gpt2_tokenizer):
    root, _ = segmented
    corpus = Corpus(root / "segments")
    specials = set(corpus.meta.control_token_ids.values()) | {corpus.meta.eos_id, corpus.meta.pad_id}
    assert not specials & set(np.unique(corpus.tokens).tolist())
    # Written in a source file, "<|endoftext|>" and "<python>" are plain text.
    special = corpus.file_tokens(row_of(corpus, "pysrc", "special.py"))
    assert gpt2_tokenizer.decode(special) == 'EOS = "<|endoftext|>"  # <python> <java>\n'

    java_row = row_of(corpus, "javasrc", "Factorial.java")
    java = corpus.windows(np.array([java_row]))
    assert [java[i][0] for i in range(len(java))] == [corpus.meta.control_token_ids["java"]] * len(java)
    assert [java[i][-1] == corpus.meta.eos_id for i in range(len(java))] == [False] * (len(java) - 1) + [True]
    tiny = corpus.windows(np.array([row_of(corpus, "pysrc", "tiny.py")]))
    assert len(tiny) == 1 and list(tiny[0]) == [50257] + gpt2_tokenizer.encode("x = 1\n") + [50256]


def test_saved_tokenizer_is_gpt2_with_control_tokens(segmented):
    root, _ = segmented
    tok = AutoTokenizer.from_pretrained(root / "segments" / TOKENIZER_DIR)
    assert tok.encode("def factorial(n):") == [4299, 1109, 5132, 7, 77, 2599]
    assert len(tok) == 50257 + 2 + 3 + 1  # GPT-2, <python> and <java>, the FIM tokens, <pad>
    assert tok.convert_tokens_to_ids(["<python>", "<java>", "<fim_prefix>", "<pad>"]) == [50257, 50258, 50259, 50262]
    assert Corpus(root / "segments").meta.dtype == "uint16"


def test_output_is_byte_identical_whatever_the_workers(segmented):
    root, stats = segmented
    assert segment_tree(root, workers=1, out="segments-1") == stats

    def contents(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    two, one = contents(root / "segments"), contents(root / "segments-1")
    assert {"tokens.bin", "files.parquet", "meta.json", "tokenizer/tokenizer.json"} <= set(two)
    assert one == two


def test_near_duplicates_removed_only_when_enabled(tmp_path):
    original = (STDLIB / "textwrap.py").read_text()
    near_copy = original.replace("def dedent(text):", "def dedent(text, /):")
    assert near_copy != original
    write(tmp_path / "data/raw/src/a.py", original)
    write(tmp_path / "data/raw/src/b.py", near_copy)
    write(tmp_path / "data/raw/src/c.py", (STDLIB / "heapq.py").read_text())

    enabled = segment_tree(tmp_path, near_dedup={"enabled": True, "threshold": 0.8})
    assert enabled["skipped"]["near_duplicate"] == 1 and enabled["skipped"]["duplicate"] == 0
    assert sorted(Corpus(tmp_path / "segments").files["path"]) == ["a.py", "c.py"]

    disabled = segment_tree(tmp_path, near_dedup={"enabled": False})
    assert disabled["skipped"]["near_duplicate"] == 0 and disabled["files_kept"] == 3


def test_input_problems_fail_before_work(tmp_path):
    with pytest.raises(UserError, match="not found; run the clone stage"):
        segment_tree(tmp_path)
    write(tmp_path / "data/raw/src/notes.txt", "no code here\n")
    with pytest.raises(UserError, match=r"none of the 1 files.*\.py, \.java"):
        segment_tree(tmp_path)
    write(tmp_path / "data/raw/src/a.py", "x = 1\n")
    with pytest.raises(UserError, match="tokenizer .*cannot load it as a local folder"):
        segment_tree(tmp_path, tokenizer=str(tmp_path / "data"))
    assert not (tmp_path / "segments").exists() and not (tmp_path / "metrics").exists()


def test_unreadable_file_is_skipped(tmp_path):
    with pytest.raises(Skip) as skip:
        read_source(str(tmp_path), MAX_LINE_CHARS)  # a folder cannot be read as a file
    assert skip.value.reason == "unreadable"


def test_learned_tokenizer_comes_from_train_files_only_and_is_reproducible(tmp_path):
    """segment.tokenizer: learn: a BPE learned from the files the split will put in train, the same
    bytes on every run, loadable by AutoTokenizer, and encoding the corpus with its ids."""
    from autocoder.format import FIM_TOKENS
    from autocoder.split import file_position
    from autocoder.tokenizer import learn_bpe

    raw = tmp_path / "data/raw"
    texts = {
        f"pysrc/m{i}.py": (STDLIB / name).read_text()
        for i, name in enumerate(["bisect.py", "heapq.py", "glob.py", "shlex.py", "textwrap.py", "fnmatch.py"])
    }
    for path, text in texts.items():
        write(raw / path, text)
    split = SplitParams(dev_ratio=0.4, seed=1)
    for out in ("segments", "again"):
        params = make_params(tmp_path, tokenizer="learn", vocab_size=500, out=out).model_copy(update={"split": split})
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(tmp_path)
            run(params)
    first, again = (tmp_path / name / TOKENIZER_DIR for name in ("segments", "again"))
    assert (first / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()

    held_out = split.dev_ratio
    train = [
        text
        for _, text in sorted(texts.items())
        if file_position(hashlib.sha256(text.encode()).hexdigest(), split.seed) >= held_out
    ]
    assert 0 < len(train) < len(texts)  # some file is held out, so the check below can fail
    tok = AutoTokenizer.from_pretrained(first)
    expected = learn_bpe(train, 500)
    sample = (STDLIB / "heapq.py").read_text()
    assert tok.encode(sample) == expected.encode(sample)
    assert all(t in tok.get_added_vocab() for t in (*FIM_TOKENS, "<python>", "<java>"))
    corpus = Corpus(tmp_path / "segments")
    row = row_of(corpus, "pysrc", "m0.py")
    assert corpus.file_tokens(row).tolist() == tok.encode(texts["pysrc/m0.py"])
