"""N-gram hashes of token ids, and what the split and the evaluate stage measure with them:
contamination (a held-out window sharing an n-gram with train), boilerplate (n-grams found in many
files), and the n-grams two files share (near-copies that MinHash misses).

Hashes are 64-bit polynomials over random 64-bit token codes: two different n-grams collide with
probability about 2^-64, so across 10^7 train and 10^6 dev n-grams a false match is a
one-in-a-million event.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from autocoder.corpus import Corpus

_BASE = 0x100000001B3  # odd multiplier of the polynomial n-gram hash


def ngram_hashes(tokens: np.ndarray, n: int, chunk: int = 1 << 20) -> np.ndarray:
    """64-bit hash of tokens[i:i+n] for every start i: sum_k code(tokens[i+k]) * B^(n-1-k) mod 2^64
    over random 64-bit token codes. Chunk by chunk: no memory beyond the result's 8 bytes a token."""
    size = max(len(tokens) - n + 1, 0)
    hashes = np.empty(size, dtype=np.uint64)

    def fill(start: int) -> None:
        hashes[start : start + chunk] = _chunk_hashes(np.asarray(tokens[start : start + chunk + n - 1]), n)

    with ThreadPoolExecutor() as pool:  # numpy's arithmetic releases the GIL: chunks share the cores
        list(pool.map(fill, range(0, size, chunk)))
    return hashes


def _chunk_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """ngram_hashes of one chunk, from the hashes of power-of-two lengths: log2(n) passes, not n."""
    block = tokens.astype(np.uint64)  # hashes of 1-grams: splitmix64 of the token id
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        block ^= block >> np.uint64(shift)
        block *= np.uint64(mult)
    block ^= block >> np.uint64(31)
    hashes, length, block_len = None, 0, 1
    while block_len <= n:
        if n & block_len:
            hashes = block if hashes is None else _joined(hashes, length, block, block_len)
            length += block_len
        block = _joined(block, block_len, block, block_len) if 2 * block_len <= n else None
        block_len *= 2
    return hashes


def _joined(left: np.ndarray, left_len: int, right: np.ndarray, right_len: int) -> np.ndarray:
    """Hashes of (left_len + right_len)-grams from those of left_len-grams and right_len-grams."""
    size = max(len(left) - right_len, 0)
    joined = left[:size] * np.uint64(pow(_BASE, right_len, 2**64))
    joined += right[left_len : left_len + size]
    return joined


def gram_mask(starts: np.ndarray, lengths: np.ndarray, n: int, size: int) -> np.ndarray:
    """True at every n-gram start that lies wholly inside one of the windows (a difference array)."""
    full = lengths >= n
    diff = np.bincount(starts[full], minlength=size + 1)
    diff -= np.bincount(starts[full] + lengths[full] - n + 1, minlength=size + 1)
    return np.cumsum(diff, out=diff)[:size] > 0


def file_grams(corpus: Corpus, hashes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n-gram starts inside a file, distinct (n-gram, file) pairs as two arrays sorted by n-gram then
    file): what counting the files an n-gram occurs in needs."""
    n_tokens = corpus.files["n_tokens"].astype(np.int64)
    inside = gram_mask(corpus.files["token_offset"].astype(np.int64), n_tokens, n, len(hashes))
    positions = np.flatnonzero(inside)
    file_of = np.repeat(np.arange(len(n_tokens)), n_tokens)[positions]
    order = np.lexsort((file_of, hashes[positions]))
    sorted_hashes, sorted_files = hashes[positions][order], file_of[order]
    first = np.ones(len(order), dtype=bool)  # the first occurrence of each (n-gram, file) pair
    first[1:] = (sorted_hashes[1:] != sorted_hashes[:-1]) | (sorted_files[1:] != sorted_files[:-1])
    return inside, sorted_hashes[first], sorted_files[first]


def boilerplate(corpus: Corpus, hashes: np.ndarray, n: int, min_files: int) -> np.ndarray:
    """True at every n-gram start whose n-gram occurs in at least `min_files` distinct files: a
    licence header, a generated banner, an import block every file repeats. Copied from file to file
    by design, it leaks no file's own code."""
    inside, grams, _ = file_grams(corpus, hashes, n)
    grams, files = np.unique(grams, return_counts=True)
    return inside & in_sorted(hashes, grams[files >= min_files])


def shared_gram_pairs(
    corpus: Corpus, hashes: np.ndarray, n: int, min_files: int, min_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """(rows a, rows b): the pairs of files that share at least `min_fraction` of the smaller one's
    distinct n-grams, counting only n-grams found in fewer than `min_files` files (boilerplate
    excluded, boilerplate's own test): a method copied into a sibling class, a module's main() copied
    into another. Pairs come from n-grams held by 2..min_files-1 files, so there are few."""
    _, grams, files = file_grams(corpus, hashes, n)
    distinct = np.bincount(files, minlength=len(corpus))
    starts = np.flatnonzero(np.r_[True, grams[1:] != grams[:-1]])
    held_by = np.diff(np.r_[starts, len(grams)])  # files per n-gram, at the n-gram's first pair
    shared = np.repeat(held_by < min_files, held_by)
    grams, files = grams[shared], files[shared]
    a, b = [], []
    for d in range(1, min_files - 1):  # pairs of files d apart in an n-gram's sorted run
        same = grams[d:] == grams[:-d]
        a.append(files[:-d][same])
        b.append(files[d:][same])
    if not a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs, counts = np.unique(np.concatenate(a) * len(corpus) + np.concatenate(b), return_counts=True)
    a, b = pairs // len(corpus), pairs % len(corpus)
    close = counts >= min_fraction * np.maximum(np.minimum(distinct[a], distinct[b]), 1)
    return a[close], b[close]


def contaminated(
    hashes: np.ndarray,
    n: int,
    train: tuple[np.ndarray, np.ndarray],
    held: tuple[np.ndarray, np.ndarray],
    ignored: np.ndarray | None = None,
) -> np.ndarray:
    """For each held window (starts, lengths): does one of its n-grams occur inside a train window?

    `hashes` are the corpus' ngram_hashes; `ignored`, where given, marks n-gram starts that count for
    nothing (boilerplate). A held window overlapping a train window by n tokens (the window-level
    split's case) leaks without a look-up; the n-grams of the other held windows are looked up, in
    sorted order, among the sorted train n-grams.
    """
    in_train = gram_mask(*train, n, len(hashes))
    if ignored is not None:
        in_train &= ~ignored
    starts, lengths = held
    ends = np.maximum(starts + lengths - n + 1, starts)  # the window's n-grams start in [starts, ends)
    leaked = _any_in(in_train, starts, ends)
    rest = ~leaked
    positions = np.flatnonzero(gram_mask(starts[rest], lengths[rest], n, len(hashes)))
    if ignored is not None:
        positions = positions[~ignored[positions]]
    train_hashes = hashes[in_train]
    del in_train
    train_hashes.sort()
    hit = np.zeros(len(hashes), dtype=bool)
    hit[positions[in_sorted(hashes[positions], train_hashes)]] = True
    leaked[rest] = _any_in(hit, starts[rest], ends[rest])
    return leaked


def in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """np.isin(values, sorted_set), fast: values are searched in sorted order, which keeps the binary
    searches in cache (np.isin itself sorts both arrays together, 100x slower here)."""
    found = np.zeros(len(values), dtype=bool)
    if len(sorted_set):
        order = np.argsort(values)
        ordered = values[order]
        at = np.searchsorted(sorted_set, ordered).clip(max=len(sorted_set) - 1)
        found[order] = sorted_set[at] == ordered
    return found


def _any_in(mask: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each range [start, end): is mask true anywhere in it?"""
    # A running count modulo 2^32: the count inside a range (< 2^32 positions) still shows as a change.
    true_before = np.zeros(len(mask) + 1, dtype=np.uint32)
    np.cumsum(mask, dtype=np.uint32, out=true_before[1:])
    return true_before[ends] != true_before[starts]
