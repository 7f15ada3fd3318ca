"""Near-copies: files so alike (a sibling test file, a copied module with a few lines changed) that
one in train and the other in dev leaks most of the dev file into training.

Two rules find them, and the split keeps each group (their union, transitively) on one side:
- whole-file similarity: each file is a set of token shingles (shingle_tokens-grams), datasketch's
  MinHash estimates the Jaccard similarity of two sets and its LSH index finds the pairs above the
  threshold without comparing every pair;
- shared spans: two files sharing at least a fraction of the smaller one's distinct n-grams (the
  contamination n, boilerplate left out: autocoder.ngrams.shared_gram_pairs). Sibling classes that
  copy a few methods and their javadoc (the java.util.concurrent queues, the *SummaryStatistics) are
  far apart as wholes, so MinHash misses them, yet they leaked most of what remained
  (docs/results.md, "Contamination").
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from datasketch import MinHash, MinHashLSH
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from autocoder.corpus import Corpus
from autocoder.ngrams import ngram_hashes

NUM_PERM = 128  # MinHash permutations: the estimate's standard error is about 0.09 at Jaccard 0.5


def _identity(value):
    """The shingles are hashed already (64-bit n-gram hashes cut to 32 bits): MinHash needs no other hash."""
    return value


def similar_pairs(corpus: Corpus, threshold: float, shingle_tokens: int, seed: int) -> list[tuple[int, int]]:
    """The pairs of corpus rows whose estimated Jaccard similarity of shingle sets reaches `threshold`."""
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    signatures = []
    for row in range(len(corpus)):
        shingles = np.unique(ngram_hashes(np.asarray(corpus.file_tokens(row)), shingle_tokens) & np.uint64(0xFFFFFFFF))
        signature = MinHash(num_perm=NUM_PERM, seed=seed, hashfunc=_identity)
        signature.update_batch(shingles.tolist())
        signatures.append(signature)
        if len(shingles):  # an empty file (shorter than a shingle) is near nothing
            lsh.insert(row, signature)
    return [
        (row, other)
        for row, signature in enumerate(signatures)
        if row in lsh
        for other in lsh.query(signature)
        # LSH returns candidates; the estimate decides
        if other != row and signature.jaccard(signatures[other]) >= threshold
    ]


def groups(n_rows: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """A group id for every row: rows joined by `pairs`, transitively, share one (the connected
    components of the graph the pairs draw, by scipy)."""
    edges = np.array(list(pairs), dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n_rows, n_rows))
    return connected_components(graph, directed=False)[1].astype(np.int64)
