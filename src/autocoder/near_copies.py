"""Near-copies: files so alike (a sibling test file, a copied module with a few lines changed) that
one in train and the other in dev leaks most of the dev file into training.

Each file is a set of token shingles (shingle_tokens-grams, the split's n-gram hashes); datasketch's
MinHash estimates the Jaccard similarity of two sets and its LSH index finds the pairs above the
threshold without comparing every pair. Pairs whose estimated similarity reaches the threshold join
one group (union-find); a group is what the split keeps on one side.
"""

from __future__ import annotations

import numpy as np
from datasketch import MinHash, MinHashLSH

from autocoder.corpus import Corpus

NUM_PERM = 128  # MinHash permutations: the estimate's standard error is about 0.09 at Jaccard 0.5


def _identity(value):
    """The shingles are hashed already (64-bit n-gram hashes cut to 32 bits): MinHash needs no other hash."""
    return value


def near_copy_groups(corpus: Corpus, threshold: float, shingle_tokens: int, seed: int) -> np.ndarray:
    """A group id for every corpus row: rows with the same id are near-copies (transitively)."""
    from autocoder.split import ngram_hashes  # the split's own n-gram hashes (split imports this module)

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    signatures = []
    for row in range(len(corpus)):
        shingles = np.unique(ngram_hashes(np.asarray(corpus.file_tokens(row)), shingle_tokens) & np.uint64(0xFFFFFFFF))
        signature = MinHash(num_perm=NUM_PERM, seed=seed, hashfunc=_identity)
        signature.update_batch(shingles.tolist())
        signatures.append(signature)
        if len(shingles):  # an empty file (shorter than a shingle) is near nothing
            lsh.insert(row, signature)
    parent = list(range(len(corpus)))

    def root(row: int) -> int:
        while parent[row] != row:
            parent[row] = parent[parent[row]]
            row = parent[row]
        return row

    for row, signature in enumerate(signatures):
        if row not in lsh:
            continue
        for other in lsh.query(signature):
            # LSH returns candidates; the estimate decides
            if other != row and signature.jaccard(signatures[other]) >= threshold:
                parent[root(other)] = root(row)
    return np.array([root(row) for row in range(len(corpus))], dtype=np.int64)
