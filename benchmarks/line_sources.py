"""Where the text of each line-completion target already is: what a longer context could buy.

    python benchmarks/line_sources.py [--model DIR] [--examples JSONL] [--near N] [--far 1000] [--name NAME]

For every line the evaluate stage completed (models/evaluate/line_completion.jsonl), where the same
line (whitespace-split tokens, the exact-match rule) occurs above it in its file: "near" (in the
context line completion gives the model, or the last `--near` tokens), "far" (within `--far` tokens
above, beyond near), "further up", or "nowhere above"; and the exact match of each group. A model that
copied from `--far` tokens as well as it copies from near would get the far lines right as often as
the near ones: that projection is printed per language. `--near` fixes the groups when comparing
models of different contexts. Writes benchmarks/results/line_sources_<NAME>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autocoder.complete import Completer
from autocoder.corpus import Corpus
from autocoder.evaluate.measure import file_lines
from autocoder.format import context_room
from autocoder.params import load_params

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("near", "far", "further up", "nowhere above")


def _lines_of(text: str) -> list[list[str]]:
    return [line.split() for line in text.split("\n")]


def _group(tokenizer, lines: list[str], i: int, near: int, far: int) -> str:
    """Where line i's text occurs in the lines above it (the module docstring)."""
    above = "\n".join(lines[:i]) + "\n"
    ids, target = tokenizer.encode(above), lines[i].split()
    for group, n_tokens in (("near", near), ("far", far)):
        tail = tokenizer.decode(ids[-n_tokens:], clean_up_tokenization_spaces=False)
        if target in _lines_of(tail)[1:]:  # the tail's first line may be cut: left out
            return group
    return "further up" if target in _lines_of(above) else "nowhere above"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/finetune/best")
    parser.add_argument("--examples", default="models/evaluate/line_completion.jsonl")
    parser.add_argument("--near", type=int, help="tokens above the line (default: the context line completion keeps)")
    parser.add_argument("--far", type=int, default=1000, help="tokens above the line for the second group")
    parser.add_argument("--name", default="default", help="the run's name, in the results file's name")
    args = parser.parse_args()
    params = load_params()
    cfg = params.evaluate
    corpus = Corpus(params.segment.out_dir)
    completer = Completer.from_pretrained(args.model)
    tokenizer = completer.tokenizer
    # the left context line completion keeps (at most line_completion_max_context)
    room = context_room(completer.config.max_position_embeddings, cfg.line_max_new_tokens, infill=False)
    near = args.near or min(room, cfg.line_completion_max_context)
    row_of = {str(path): row for row, path in enumerate(corpus.files["path"])}
    counts: dict[str, dict[str, list[int]]] = {}  # lang -> group -> [lines, exact matches]
    for record in map(json.loads, Path(args.examples).read_text().splitlines()):
        lines = file_lines(completer, corpus, row_of[record["path"]])
        if lines[record["line"] - 1].split() != record["target"].split():
            raise SystemExit(f"{args.examples}: {record['path']} line {record['line']} is not this corpus' line")
        group = _group(tokenizer, lines, record["line"] - 1, near, args.far)
        tally = counts.setdefault(record["lang"], {g: [0, 0] for g in GROUPS})[group]
        tally[0] += 1
        tally[1] += bool(record["exact_match"])
    report = {"model": args.model, "examples": args.examples, "near_tokens": near, "far_tokens": args.far}
    report["languages"] = {}
    for lang, groups in counts.items():
        total = sum(n for n, _ in groups.values())
        hits = sum(m for _, m in groups.values())
        (near_lines, near_hits), (far_lines, far_hits) = groups["near"], groups["far"]
        projected = hits - far_hits + far_lines * near_hits / max(near_lines, 1)
        report["languages"][lang] = {
            "lines": total,
            "exact_match": hits / total,
            "groups": {g: {"lines": n, "exact_match": m / n if n else None} for g, (n, m) in groups.items()},
            "exact_match_if_far_copied_as_near": projected / total,
        }
        print(lang, json.dumps(report["languages"][lang]), flush=True)
    (ROOT / f"benchmarks/results/line_sources_{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
