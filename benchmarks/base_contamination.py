"""What the shipped base model saw of the default pipeline's dev files: none of them, and how little
of their text by way of other files.

    python benchmarks/base_contamination.py BASE_RUN_DIR [--segments data/segments --split data/split]

BASE_RUN_DIR is a project folder after `dvc repro split` with a base profile (profiles/base*.yaml):
the corpus the base trained on and its split. Both corpora must share a tokenizer (the base
profiles after the first segment with models/autocoder-base's). Counts the default's dev files (by
content, sha256) found in the base's train split, and the share of their windows that contain a
split.contamination_ngram-token span (50) of a base train file, with and without boilerplate
(n-grams found in split.boilerplate_files (10) or more of the base corpus' files: licence headers
and the like), by the split stage's own code and params.yaml's split settings.
Writes benchmarks/results/base_contamination.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autocoder.corpus import TOKENIZER_DIR, split_rows
from autocoder.ngrams import boilerplate, contaminated, ngram_hashes
from autocoder.params import load_params
from autocoder.split import corpus_windows, open_corpus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/base_contamination.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_run", type=Path)
    parser.add_argument("--segments", type=Path, default=ROOT / "data/segments")
    parser.add_argument("--split", type=Path, default=ROOT / "data/split")
    args = parser.parse_args()
    split = load_params(ROOT / "params.yaml").split
    n = split.contamination_ngram
    default = open_corpus(args.segments)
    base = open_corpus(args.base_run / "data/segments")
    tokenizers = [
        folder / TOKENIZER_DIR / "tokenizer.json" for folder in (args.segments, args.base_run / "data/segments")
    ]
    if tokenizers[0].read_bytes() != tokenizers[1].read_bytes():
        raise SystemExit(f"the two corpora's token ids differ: {tokenizers[0]} and {tokenizers[1]} are not the same")
    dev_sha = set(default.files["sha256"][split_rows(default, args.split, "dev")])
    is_default_dev = np.isin(base.files["sha256"], list(dev_sha))
    is_train = np.zeros(len(base), dtype=bool)
    is_train[split_rows(base, args.base_run / "data/split", "train")] = True

    hashes = ngram_hashes(base.tokens, n)
    row, starts, lengths = corpus_windows(base)
    train = (starts[is_train[row]], lengths[is_train[row]])
    held = (starts[is_default_dev[row]], lengths[is_default_dev[row]])
    ignored = boilerplate(base, hashes, n, split.boilerplate_files)
    result = {
        "base_run": str(args.base_run),
        "default_dev_files": len(dev_sha),
        "found_in_base_corpus": int(is_default_dev.sum()),
        "in_base_train": int((is_default_dev & is_train).sum()),
        "dev_windows": int(len(held[0])),
        "windows_with_base_train_ngram": round(float(contaminated(hashes, n, train, held).mean()), 4),
        "windows_with_base_train_ngram_beyond_boilerplate": round(
            float(contaminated(hashes, n, train, held, ignored).mean()), 4
        ),
    }
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
