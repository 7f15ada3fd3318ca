"""The segment stage: the cloned source files -> the token ids of every kept file (corpus.py's format).

Files are walked in sorted order, checked, tokenized in batches by worker processes (the Rust
tokenizer, loaded once per worker) and written as the results arrive, in input order: the output is
byte-identical whatever the number of workers, and memory stays flat however large the corpus.
Each file that is not kept is counted under the reason it was skipped; no bad file stops the stage.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH
from tqdm import tqdm

from autocoder.atomic import atomic_dir, write_json
from autocoder.corpus import TOKENIZER_DIR, CorpusWriter, Meta
from autocoder.errors import UserError
from autocoder.format import window_counts
from autocoder.outputs import SEGMENT_STATS
from autocoder.params import Params, SegmentParams
from autocoder.split import file_position
from autocoder.tokenizer import LEARN, learn_bpe, load_tokenizer, text_encoder, with_control_tokens

SKIP_REASONS = (
    "symlink",
    "special_file",
    "unknown_extension",
    "too_large",
    "unreadable",
    "binary",
    "not_utf8",
    "empty",
    "minified",
    "duplicate",
    "near_duplicate",
)
SHINGLE_LINES = 5  # near-duplicates compare sets of 5 consecutive non-blank lines


class Skip(Exception):
    """A file that is not kept; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SourceFile:
    source: str
    path: str  # relative to the source's folder, '/'-separated
    language: str
    n_bytes: int
    full_path: str


@dataclass
class Tokenized:
    skipped: str | None = None
    sha256: str = ""
    ids: np.ndarray | None = None
    minhash: LeanMinHash | None = None


def _walk(folder: str) -> Iterator[os.DirEntry]:
    """Every entry under `folder` but folders, depth first in sorted order, never following symlinks."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path)
        else:
            yield entry


def list_files(raw_dir: Path, params: Params, seen: Counter) -> list[SourceFile]:
    """The files of `raw_dir/<source>/...` to read, in sorted order. Files skipped without reading
    them (symlinks, unknown extensions, too large) are counted in `seen` under their reason, next to
    `files` and `bytes` for everything seen."""
    files = []
    for source in sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.is_symlink()):
        for entry in _walk(str(source)):
            seen["files"] += 1
            if entry.is_symlink():
                seen["symlink"] += 1
                continue
            if not entry.is_file(follow_symlinks=False):  # a FIFO or device: reading could block
                seen["special_file"] += 1
                continue
            size = entry.stat(follow_symlinks=False).st_size
            seen["bytes"] += size
            language = params.language_of(entry.name)  # as clone decided it
            if language is None:
                seen["unknown_extension"] += 1
            elif size > params.segment.max_file_bytes:
                seen["too_large"] += 1
            else:
                files.append(
                    SourceFile(source.name, Path(entry.path).relative_to(source).as_posix(), language, size, entry.path)
                )
    return files


def read_source(path: str, max_line_chars: int) -> tuple[bytes, str]:
    """The bytes and text of a source file worth training on; raises Skip otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        raise Skip("unreadable") from None
    if b"\0" in data:
        raise Skip("binary")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Skip("not_utf8") from None
    if not text or text.isspace():
        raise Skip("empty")
    if max(map(len, text.splitlines())) > max_line_chars:
        raise Skip("minified")  # generated or minified code teaches nothing worth completing
    return data, text


def shingles(text: str) -> list[bytes]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    starts = range(max(len(lines) - SHINGLE_LINES + 1, 1))
    return ["\n".join(lines[i : i + SHINGLE_LINES]).encode() for i in starts]


_worker: dict = {}  # each worker process's tokenizer and settings, set once by _init_worker


def _init_worker(tokenizer_json: str, params: SegmentParams, dtype: str) -> None:
    _worker.update(encode=text_encoder(tokenizer_json), params=params, dtype=dtype)


def _tokenize_batch(paths: list[str]) -> list[Tokenized]:
    params: SegmentParams = _worker["params"]
    results, texts = [], []
    for path in paths:
        try:
            data, text = read_source(path, params.max_line_chars)
        except Skip as skip:
            results.append(Tokenized(skipped=skip.reason))
            continue
        results.append(Tokenized(sha256=hashlib.sha256(data).hexdigest()))
        texts.append(text)
    kept = [r for r in results if r.skipped is None]
    # No special tokens: the control token stands in front of each window instead of a bos.
    for result, ids in zip(kept, _worker["encode"](texts)):
        result.ids = np.fromiter(ids, dtype=_worker["dtype"], count=len(ids))  # 2x np.array(list)
    if params.near_dedup.enabled:
        minhashes = MinHash.bulk([shingles(t) for t in texts], num_perm=params.near_dedup.num_perm)
        for result, minhash in zip(kept, minhashes):
            result.minhash = LeanMinHash(minhash)
    return results


def tokenize_files(
    files: list[SourceFile], tokenizer_json: str, params: SegmentParams, dtype: str
) -> Iterator[Tokenized]:
    """One result per file, in the order of `files`, computed by `params.workers` processes."""
    workers = params.workers or len(os.sched_getaffinity(0))
    batches = (
        [f.full_path for f in files[i : i + params.files_per_batch]]
        for i in range(0, len(files), params.files_per_batch)
    )
    with (
        multiprocessing.Pool(workers, _init_worker, (tokenizer_json, params, dtype)) as pool,
        tqdm(total=len(files), unit="file", desc="segment") as progress,
    ):
        for batch in pool.imap(_tokenize_batch, batches):  # imap keeps the input order
            yield from batch
            progress.update(len(batch))


def train_texts(files: list[SourceFile], params: Params) -> Iterator[str]:
    """The texts of the files that the split stage will put in train (split.file_position), each
    content once: the learned tokenizer never sees a dev or test file."""
    held_out = params.split.dev_ratio + params.split.test_ratio
    seen: set[str] = set()
    for file in tqdm(files, unit="file", desc="learn tokenizer", mininterval=5):
        try:
            data, text = read_source(file.full_path, params.segment.max_line_chars)
        except Skip:
            continue
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 not in seen and file_position(sha256, params.split.seed) >= held_out:
            seen.add(sha256)
            yield text


def _stats(writer: CorpusWriter, params: Params, seen: Counter) -> dict:
    seg = params.segment
    rows = {key: np.asarray(writer.rows[key]) for key in ("language", "n_bytes", "n_tokens")}
    languages = {}
    for lang in params.languages:
        mine = rows["language"] == lang
        n_tokens = rows["n_tokens"][mine]
        languages[lang] = {
            "files": int(mine.sum()),
            "bytes": int(rows["n_bytes"][mine].sum()),
            "tokens": int(n_tokens.sum()),
            "windows": int(window_counts(n_tokens, seg.segment_len, seg.stride).sum()),
        }
    return {
        "files_seen": seen["files"],
        "files_kept": len(rows["language"]),
        "bytes_seen": seen["bytes"],
        "bytes_kept": sum(lang["bytes"] for lang in languages.values()),
        "skipped": {reason: seen[reason] for reason in SKIP_REASONS},
        "languages": languages,
        "tokens": sum(lang["tokens"] for lang in languages.values()),
        "windows": sum(lang["windows"] for lang in languages.values()),
        "segment_len": seg.segment_len,
        "stride": seg.stride,
    }


def run(params: Params) -> None:
    seg = params.segment
    raw_dir = Path(params.clone.out_dir)
    if not raw_dir.is_dir():
        raise UserError(f"{raw_dir}: not found; run the clone stage first")
    seen: Counter = Counter()
    files = list_files(raw_dir, params, seen)
    if not files:
        extensions = ", ".join(ext for lang in params.languages.values() for ext in lang.extensions)
        raise UserError(
            f"{raw_dir}: none of the {seen['files']} files seen has an extension of languages "
            f"({extensions}) and at most segment.max_file_bytes ({seg.max_file_bytes}) bytes"
        )
    control_tokens = list(params.control_tokens().values())
    if seg.tokenizer == LEARN:
        tokenizer = with_control_tokens(learn_bpe(train_texts(files, params), seg.vocab_size), control_tokens)
    else:
        tokenizer = load_tokenizer(seg.tokenizer, control_tokens)
    dtype = "uint16" if len(tokenizer) <= 65535 else "uint32"
    meta = Meta(
        tokenizer=seg.tokenizer,
        segment_len=seg.segment_len,
        stride=seg.stride,
        dtype=dtype,
        control_token_ids={
            lang: tokenizer.convert_tokens_to_ids(token) for lang, token in params.control_tokens().items()
        },
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        vocab_size=len(tokenizer),
    )
    lsh = (
        MinHashLSH(threshold=seg.near_dedup.threshold, num_perm=seg.near_dedup.num_perm)
        if seg.near_dedup.enabled
        else None
    )
    kept_hashes: set[str] = set()

    with atomic_dir(seg.out_dir) as out:
        tokenizer.save_pretrained(out / TOKENIZER_DIR)
        writer = CorpusWriter(out, dtype)
        results = tokenize_files(files, tokenizer.backend_tokenizer.to_str(), seg, dtype)
        for file, result in zip(files, results, strict=True):  # strict: runs the pool to its end
            # Duplicates go before the split stage sees them, so no copy lands in two splits;
            # the first in sorted order is kept.
            reason = result.skipped
            if reason is None and result.sha256 in kept_hashes:
                reason = "duplicate"
            if reason is None and lsh is not None and lsh.query(result.minhash):
                reason = "near_duplicate"
            if reason is not None:
                seen[reason] += 1
                continue
            file_id = writer.add(file.source, file.path, file.language, result.sha256, file.n_bytes, result.ids)
            kept_hashes.add(result.sha256)
            if lsh is not None:
                lsh.insert(file_id, result.minhash)
        writer.close(meta)
        if not writer.rows["file_id"]:
            raise UserError(f"{raw_dir}: no file kept out of {seen['files']} (skipped: {dict(seen)})")
    stats = _stats(writer, params, seen)
    write_json(SEGMENT_STATS, stats)
    skips = ", ".join(f"{reason} {n}" for reason, n in stats["skipped"].items() if n) or "none"
    print(
        f"segment: kept {stats['files_kept']} of {stats['files_seen']} files, {stats['tokens']:,} tokens, "
        f"{stats['windows']:,} windows; skipped: {skips}"
    )
