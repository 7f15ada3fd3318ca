"""Line completion and single-line infilling of dev lines.

- Line completion (CodeXGLUE-style): per language `line_completion_lines` distinct (file, line)
  pairs drawn uniformly (seeded) from the non-blank lines, not a file's first, of that language's dev
  files (several lines of one file may be drawn); the context is the file before that line, cut to
  its last `line_completion_max_context` tokens; the model completes greedily until a newline, at
  most `line_max_new_tokens` tokens.
- Single-line infilling (models with fill-in-the-middle tokens only): per language `infill_lines`
  seeded non-blank dev lines are removed; the model sees the text before the line (prefix, ending
  with its newline) and after it (suffix, from the next line on), at most `infill_max_context`
  tokens of both (the suffix at most a quarter), and writes the middle greedily until a newline or eos.
- Both are token-healed (complete/prompt.py): their context ends with the line break before the target line.
- Both, per language: exact match (CodeXGLUE's: the whitespace-split tokens of the predicted and the
  true line are equal), edit similarity (difflib.SequenceMatcher ratio, 0..1, no autojunk, of both
  lines with the whitespace around them stripped), `hit_max_new_tokens` (the share of completions
  that ran to the token limit without ending their line) and `repeats` (the share of completions
  that repeat themselves: the same token 4-gram (tokens of the model's tokenizer, at least one of
  them with a letter or digit) occurs three or more times in the predicted text, overlapping
  occurrences counted (a repeated longer n-gram repeats its first 4 tokens too), or the predicted
  line repeats the line above (gate.repeats_line_above, as the server's gate hides it)).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable

import numpy as np

from autocoder import gate
from autocoder.complete import Completion
from autocoder.evaluate.match import edit_similarity, exact_match
from autocoder.evaluate.measure import Inputs, Measure, Result, complete_all
from autocoder.format import END_OF_LINE, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

REPEAT_NGRAM, REPEAT_TIMES = 4, 3  # a completion "repeats" when a token 4-gram occurs 3+ times
Perturb = Callable[[str, str, str], tuple[str, str]]  # (lang, context, line) -> (context, line)


def draw_lines(inputs: Inputs, lang: str, n: int, measure: str, first: int) -> list[tuple[int, int]]:
    """`n` distinct (row, line index) pairs, drawn uniformly with a seed of (evaluate.seed, lang,
    measure) from the non-blank lines (index >= first) of the dev files of `lang` (all of them when
    there are fewer), in file order."""
    candidates = []  # (row, line index)
    for row in sorted(inputs.rows_of(lang)):
        lines = inputs.lines(row)
        candidates += [(row, i) for i in range(first, len(lines)) if lines[i].strip()]
    if not candidates or n == 0:
        return []
    # the first n of a seeded permutation: a smaller n draws a subset of a larger n's lines (robustness)
    seed = [inputs.cfg.seed, zlib.crc32(lang.encode()), zlib.crc32(measure.encode())]
    chosen = np.random.default_rng(seed).permutation(len(candidates))[:n]
    return [candidates[k] for k in sorted(chosen)]


def line_examples(inputs: Inputs, infill: bool, perturb: Perturb | None = None, n: int | None = None) -> list[dict]:
    """Each drawn line completed from the file before it, or filled in between the file before and
    after it (`infill`); with `perturb`, context and line perturbed alike (robustness); `n` lines per
    language instead of the params' (the first n of the same draw when fewer)."""
    cfg, completer, measure = inputs.cfg, inputs.completer, "infill" if infill else "line_completion"
    n = n if n is not None else cfg.infill_lines if infill else cfg.line_completion_lines
    # Line completion needs a left context: never a file's first line; infilling can do without one.
    drawn = [
        (lang, row, i)
        for lang in completer.languages
        for row, i in draw_lines(inputs, lang, n, measure, first=0 if infill else 1)
    ]
    requests, targets, cached = [], [], (None, [])
    for lang, row, i in drawn:
        if cached[0] != row:
            cached = (row, inputs.lines(row))
        lines = cached[1]
        prefix = "\n".join(lines[:i]) + "\n" if i else ""
        if perturb is not None:  # the context and the line to predict, perturbed alike
            prefix, target = perturb(lang, prefix, lines[i])
            lines, i = (prefix + target).split("\n"), prefix.count("\n")  # the cached file is untouched
        requests.append(
            {
                "lang": lang,
                "context": prefix,
                "stop": END_OF_LINE,
                "suffix": "\n".join(lines[i + 1 :]) if infill else None,
                "max_context_tokens": cfg.infill_max_context if infill else cfg.line_completion_max_context,
            }
        )
        targets.append((lang, str(inputs.corpus.files["path"][row]), lines, i))
    completions = complete_all(completer, requests, cfg, cfg.line_max_new_tokens, measure.replace("_", " "))
    return [line_example(completer.tokenizer, *target, c) for target, c in zip(targets, completions)]


def line_example(tokenizer, lang: str, path: str, lines: list[str], i: int, completion: Completion) -> dict:
    target, predicted = lines[i].rstrip("\r"), completion.text
    above = lines[i - 1].rstrip("\r") if i else ""
    return {
        "lang": lang,
        "path": path,
        "line": i + 1,
        "target": target,
        "predicted": predicted,
        "stop": completion.stop,
        "exact_match": exact_match(predicted, target),
        "edit_similarity": edit_similarity(predicted, target),
        "repeats": repeats(tokenizer, predicted, above),
        "confidence": completion.confidence,
    }


def repeats(tokenizer, predicted: str, line_above: str) -> bool:
    """Whether a completion repeats itself (the module docstring): a token 4-gram with a letter or a
    digit in it occurs at least 3 times in `predicted`, or `predicted` is the line above again."""
    if gate.repeats_line_above(predicted, line_above):
        return True
    ids = tokenizer.encode(predicted, add_special_tokens=False)
    counts = Counter(tuple(ids[k : k + REPEAT_NGRAM]) for k in range(len(ids) - REPEAT_NGRAM + 1))
    return any(
        times >= REPEAT_TIMES and any(c.isalnum() for c in tokenizer.decode(list(gram)))
        for gram, times in counts.items()
    )


def line_scores(examples: list[dict], languages: list[str]) -> dict:
    """Per language: the means of the line measures over its examples (line completion or infill)."""
    scores = {}
    for lang in languages:
        mine = [e for e in examples if e["lang"] == lang]
        if mine:
            scores[lang] = {
                "exact_match": float(np.mean([e["exact_match"] for e in mine])),
                "edit_similarity": float(np.mean([e["edit_similarity"] for e in mine])),
                "hit_max_new_tokens": float(np.mean([e["stop"] == "length" for e in mine])),
                "repeats": float(np.mean([e["repeats"] for e in mine])),
                "lines": len(mine),
            }
    return scores


def _measure(name: str, infill: bool) -> Callable[[Inputs], Result]:
    def run(inputs: Inputs) -> Result:
        examples = line_examples(inputs, infill)
        return Result({name: line_scores(examples, list(inputs.completer.languages))}, examples)

    return run


def _no_fim(inputs: Inputs) -> str | None:
    if inputs.completer.can_infill:
        return None
    return f"the model has no fill-in-the-middle tokens ({FIM_PREFIX}, {FIM_SUFFIX}, {FIM_MIDDLE})"


LINE_COMPLETION = Measure("line_completion", _measure("line_completion", infill=False))
INFILL = Measure(
    "infill",
    _measure("infill", infill=True),
    off=lambda cfg: "evaluate.infill_lines is 0" if cfg.infill_lines == 0 else None,
    unavailable=_no_fim,
)
