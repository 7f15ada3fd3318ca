"""Stage 'split': whole files go to train, dev or test, and a report measures what that buys.

The seed shuffled its windows and cut them 9:1, so a dev window was mostly made of the train
windows 10 tokens to its left and right: dev perplexity measured recall, not completion. Here no
file feeds two splits, and `metrics/contamination.json` measures the leak that remains (code copied
between files) next to the leak of the seed's window-level split of the same data.

Each file's split follows from a seeded hash of its content alone (file_position): dev_ratio is each
file's chance of being dev, so about that share of the windows is dev, as the seed's 9:1 was over
windows. Adding or removing a file moves no other file. Then near-copies (autocoder.near_copies:
MinHash over token shingles, `near_copy_threshold`) are kept on one side, train if any of them is
train by content (keep_near_copies_together says why that way round); so are files that share
`near_copy_shared_fraction` of their n-grams (copied methods, beyond boilerplate).

Contamination is measured with 64-bit hashes of every n-gram (n = contamination_ngram,
autocoder.ngrams): a dev window is contaminated when one of its n-grams occurs inside a train window.
Windows never cross files, so neither do the n-grams counted. The leak is also reported beyond boilerplate
(n-grams found in `boilerplate_files` or more files: licence headers), and for the split without
near-copy groups.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from autocoder.atomic import atomic_dir, write_json
from autocoder.corpus import SPLIT_FILE, TOKENIZER_DIR, Corpus, write_columns
from autocoder.errors import UserError
from autocoder.format import window_counts, window_start
from autocoder.near_copies import groups, similar_pairs
from autocoder.ngrams import boilerplate, contaminated, ngram_hashes, shared_gram_pairs
from autocoder.outputs import CONTAMINATION
from autocoder.params import Params, SplitParams
from autocoder.problems import load_problems, rows_sharing_a_span

SPLITS = np.array(["train", "dev", "test", "dropped"], dtype=object)  # split codes 0, 1, 2, 3
HELD_OUT = (1, 2)
DROPPED = 3  # a train file sharing a span with a benchmark (split.drop_humaneval_contaminated): in no split


def run(params: Params) -> None:
    sp = params.split
    corpus = open_corpus(params.segment.out_dir)
    hashes = ngram_hashes(corpus.tokens, sp.contamination_ngram)
    split = assign(corpus, sp, hashes)
    tokenizer = Tokenizer.from_file(str(Path(params.segment.out_dir) / TOKENIZER_DIR / "tokenizer.json"))
    leaked = rows_sharing_a_span(
        load_problems(),
        lambda text: tokenizer.encode(text, add_special_tokens=False).ids,
        corpus,
        hashes,
        np.flatnonzero(split == 0),
        sp.contamination_ngram,
    )
    if sp.drop_humaneval_contaminated:
        split[leaked] = DROPPED
    report = contamination_report(corpus, split, sp, hashes)
    report["humaneval"] = {"train_files_sharing_a_span": len(leaked), "dropped": sp.drop_humaneval_contaminated}
    with atomic_dir(sp.out_dir) as tmp:
        write_columns(
            tmp / SPLIT_FILE, {"file_id": corpus.files["file_id"], "split": SPLITS[split]}, strings=("split",)
        )
    write_json(CONTAMINATION, report)
    sizes = ", ".join(f"{name} {report[name]['files']} files" for name in SPLITS if name in report)
    leak = report["file_split"]
    print(
        f"split: {sizes}; dev windows with a train {sp.contamination_ngram}-gram: "
        f"{leak['dev_windows_with_train_ngram']:.2%}, beyond boilerplate "
        f"{leak['dev_windows_with_train_ngram_beyond_boilerplate']:.2%} "
        f"(without near-copy groups: "
        f"{report['file_split_without_near_copy_groups']['dev_windows_with_train_ngram']:.2%}; "
        f"window-level split: {report['window_split']['dev_windows_with_train_ngram']:.2%})"
    )


def open_corpus(segments_dir: str | Path) -> Corpus:
    try:
        return Corpus(segments_dir)
    except FileNotFoundError:
        raise UserError(
            f"{segments_dir}: no segment stage output there (segment.out_dir); run the segment stage first"
        ) from None


def file_position(sha256: str, seed: int) -> float:
    """Where a file falls in [0, 1): a seeded hash of its content, nothing else. A file with
    position below dev_ratio is dev, below dev_ratio + test_ratio test, else train, whatever the
    other files: the segment stage knows the train files before the split exists (it learns the
    tokenizer from them alone), and a larger corpus with the same seed keeps the smaller one's dev
    files in dev (a base model trained on it never saw them)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sha256}".encode()).digest()[:8], "big") / 2**64


def assign_by_content(sha256s, sp: SplitParams) -> np.ndarray:
    """The split code (an index into SPLITS) of each file, from its content hash (file_position).

    Ratios are shares of files' expected windows: each file's chance of landing in dev is dev_ratio.
    A corpus too small for the rule to give every split with a non-zero ratio one file (a handful of
    files) moves the files nearest to each cut across it.
    """
    positions = np.array([file_position(sha, sp.seed) for sha in sha256s])
    split = np.zeros(len(positions), dtype=np.int8)
    split[positions < sp.dev_ratio + sp.test_ratio] = 2
    split[positions < sp.dev_ratio] = 1
    order = np.argsort(positions, kind="stable")
    for code, ratio, nearest in ((1, sp.dev_ratio, order[0]), (2, sp.test_ratio, order[-1])):
        if ratio > 0 and not (split == code).any():
            split[nearest] = code
    return split


def assign(corpus: Corpus, sp: SplitParams, hashes: np.ndarray | None = None) -> np.ndarray:
    """The split code of every corpus row (assign_by_content, near-copies kept together),
    deterministic under sp.seed. `hashes`: the corpus' contamination_ngram-gram hashes, if at hand."""
    n_files, has_test = len(corpus), int(sp.test_ratio > 0)
    if n_files < 2 + has_test:
        raise UserError(
            f"split: the corpus has {n_files} file(s); dev_ratio {sp.dev_ratio} and "
            f"test_ratio {sp.test_ratio} need at least {2 + has_test}, one per split"
        )
    split = assign_by_content(corpus.files["sha256"], sp)
    if not (split == 0).any():
        raise UserError(f"split: no train file left among {n_files} files; lower dev_ratio/test_ratio")
    pairs = []
    if sp.near_copy_threshold is not None:
        pairs += similar_pairs(corpus, sp.near_copy_threshold, sp.near_copy_shingle, sp.seed)
    if sp.near_copy_shared_fraction is not None:
        if hashes is None:
            hashes = ngram_hashes(corpus.tokens, sp.contamination_ngram)
        n = sp.contamination_ngram
        pairs += zip(*shared_gram_pairs(corpus, hashes, n, sp.boilerplate_files, sp.near_copy_shared_fraction))
    if pairs:
        split = keep_near_copies_together(split, groups(len(corpus), pairs))
        if not (split == 1).any():
            raise UserError(
                f"split: every dev file has a near-copy in train (near_copy_threshold {sp.near_copy_threshold}, "
                f"near_copy_shared_fraction {sp.near_copy_shared_fraction}); raise them, or set them to null"
            )
    return split


def keep_near_copies_together(split: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each group of near-copies on one side: train if any of its files is train by content, else
    dev if any is dev. Files only move from dev or test to train, so dev stays within what the content
    rule gives: the tokenizer learned from train files (segment) and a base model trained on a larger
    corpus with the same seed never saw a dev file."""
    side = np.full(groups.max() + 1, len(SPLITS), dtype=split.dtype)
    np.minimum.at(side, groups, split)  # train (0) < dev (1) < test (2)
    return side[groups]


def corpus_windows(corpus: Corpus) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(file row, start in tokens.bin, length) of every window of the corpus, as training sees them."""
    n_tokens = corpus.files["n_tokens"].astype(np.int64)
    counts = window_counts(n_tokens, corpus.meta.segment_len, corpus.meta.stride)
    row = np.repeat(np.arange(len(n_tokens)), counts)
    k = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    start = window_start(n_tokens[row], k, corpus.meta.segment_len, corpus.meta.stride)
    length = np.minimum(corpus.meta.segment_len, n_tokens[row] - start)
    return row, corpus.files["token_offset"].astype(np.int64)[row] + start, length


def _share(flags: np.ndarray) -> float:
    return round(float(flags.mean()), 6) if len(flags) else 0.0


def _leak(
    corpus: Corpus, hashes: np.ndarray, n: int, windows, window_split: np.ndarray, held: int, ignored=None
) -> dict:
    """The contamination figures of held-out split `held` against train, windows labelled by split;
    with `ignored` (boilerplate n-grams), also the leak beyond boilerplate."""
    row, starts, lengths = windows
    is_train, is_held = window_split == 0, window_split == held
    train, held_windows = (starts[is_train], lengths[is_train]), (starts[is_held], lengths[is_held])
    sha = corpus.files["sha256"]
    copied = np.isin(sha[np.unique(row[is_held])], sha[np.unique(row[is_train])])
    leak = {
        f"{SPLITS[held]}_windows_with_train_ngram": _share(contaminated(hashes, n, train, held_windows)),
        f"{SPLITS[held]}_files_in_train": _share(copied),
    }
    if ignored is not None:
        beyond = contaminated(hashes, n, train, held_windows, ignored)
        leak[f"{SPLITS[held]}_windows_with_train_ngram_beyond_boilerplate"] = _share(beyond)
    return leak


def contamination_report(corpus: Corpus, split: np.ndarray, sp: SplitParams, hashes: np.ndarray | None = None) -> dict:
    """metrics/contamination.json: sizes per split, and the leak into held-out data of this file-level
    split and of the seed's window-level split (windows shuffled with the seed, cut by dev_ratio).

    `*_windows_with_train_ngram`: share of held-out windows containing an n-gram found in a train
    window. `*_files_in_train`: share of files feeding the held-out split whose content (sha256) also
    feeds train: an exact copy under the file split, mostly the very same file under the window split.
    """
    n = sp.contamination_ngram
    windows = corpus_windows(corpus)
    row = windows[0]
    if hashes is None:
        hashes = ngram_hashes(corpus.tokens, n)
    report: dict = {"ngram": n, "segment_len": corpus.meta.segment_len, "stride": corpus.meta.stride}
    n_files = np.bincount(split, minlength=len(SPLITS))
    n_windows = np.bincount(split[row], minlength=len(SPLITS))
    n_tokens = np.bincount(split, weights=corpus.files["n_tokens"], minlength=len(SPLITS))
    present = np.flatnonzero(n_files)
    for code in present:
        report[SPLITS[code]] = {
            "files": int(n_files[code]),
            "windows": int(n_windows[code]),
            "tokens": int(n_tokens[code]),
        }
    dev_windows = np.random.default_rng(sp.seed).permutation(len(row)) < round(sp.dev_ratio * len(row))
    ignored = boilerplate(corpus, hashes, n, sp.boilerplate_files)
    report["boilerplate_ngrams"] = _share(ignored)  # share of the corpus' n-grams that are boilerplate
    by_content = assign_by_content(corpus.files["sha256"], sp)
    report["near_copies_moved_to_train"] = int(((by_content != 0) & (split == 0)).sum())
    # Threads: numpy's sorts and scans release the GIL, so the reports share the cores.
    with ThreadPoolExecutor() as pool:
        held_out = [code for code in present if code in HELD_OUT]
        file_split = [pool.submit(_leak, corpus, hashes, n, windows, split[row], held, ignored) for held in held_out]
        content_split = pool.submit(_leak, corpus, hashes, n, windows, by_content[row], 1, ignored)
        window_split = pool.submit(_leak, corpus, hashes, n, windows, dev_windows.astype(np.int8), 1)
        report["file_split"] = {key: value for leak in file_split for key, value in leak.result().items()}
        report["file_split_without_near_copy_groups"] = content_split.result()
        report["window_split"] = window_split.result()
    return report
