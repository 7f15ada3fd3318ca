"""Completion latency: `autocoder complete`'s Completer against the seed's way, on the same checkpoint
and prompts, greedy, with a check that both give the same text.

- seed: `model.generate(prompt, max_length=128)` (greedy: the seed passed temperature=0.7 without
  do_sample), decode everything, cut at the first blank line;
- ours: `Completer.complete()` with the same token budget (128 - prompt length): its decoding loop
  stops at the first blank line or eos.
Both use the KV cache; the differences are the tokens generated after the completion was already
done, and the cost of each token.

Model: --model DIR, by default the pipeline's models/finetune/best/. Prompts: params.yaml's
evaluate.prompts (the seed's), plus, with --contexts FILE... or --dev-files N (N held-out dev files
per language from the pipeline's split), code as an editor would send it:
`--per-file` seeded places inside a block of each file, after the first word of a line (where an
editor's cursor is once a line is begun; ending on a bare newline would split the indentation token of
tokenizers that merge newline and spaces), the left context cut to its last 48 tokens so that the
seed's 128 tokens leave room to complete.
Timed calls alternate between the two ways (after one warm-up call each), so load from other
processes hits both alike. Writes benchmarks/results/complete.json.

    python benchmarks/complete.py [--model DIR] [--contexts FILE ...] [--dev-files N] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from autocoder.complete import Completer, cut_at
from autocoder.corpus import Corpus, split_rows
from autocoder.format import BLANK_LINE
from autocoder.params import load_params

SEED_MAX_LENGTH = 128
CONTEXT_TOKENS = 48  # left context of --contexts prompts
DEFAULT_MODEL = Path("models/finetune/best")
SEGMENTS, SPLIT = Path("data/segments"), Path("data/split")  # the pipeline's outputs, for --dev-files
RESULTS = Path(__file__).parent / "results" / "complete.json"


def seed_complete(completer: Completer, prompt: list[int], penalty: float) -> tuple[str, int]:
    """The seed's interact loop: generate to max_length, then cut the text at the first blank line."""
    input_ids = torch.tensor([prompt], device=completer.device)
    out = completer.model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_length=SEED_MAX_LENGTH,
        do_sample=False,
        pad_token_id=completer.tokenizer.pad_token_id,
        repetition_penalty=penalty,
    )
    generated = out[0, len(prompt) :].tolist()
    text = completer.tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return cut_at(BLANK_LINE, text), len(generated)


def ours_complete(completer: Completer, lang: str, context: str, prompt: list[int], penalty: float) -> tuple[str, int]:
    # heal=False: the same prompt tokens as the seed's way, so both must give the same text.
    [completion] = completer.complete(
        lang,
        context,
        max_new_tokens=SEED_MAX_LENGTH - len(prompt),
        max_context_tokens=len(prompt) - 1,
        heal=False,
        repetition_penalty=penalty,
    )
    return completion.text, completion.n_tokens


def dev_file_texts(
    completer: Completer, segments: Path, split: Path, per_language: int, seed: int
) -> list[tuple[str, str]]:
    """(language, text) of `per_language` seeded held-out dev files per language of the pipeline's split."""
    corpus = Corpus(segments)
    rows = split_rows(corpus, split, "dev")
    rng = np.random.default_rng(seed)
    texts = []
    languages = corpus.files["language"][rows]
    for lang in sorted(set(languages)):
        lang_rows = rows[languages == lang]
        for row in sorted(rng.choice(lang_rows, min(per_language, len(lang_rows)), replace=False)):
            text = completer.tokenizer.decode(corpus.file_tokens(row).tolist(), clean_up_tokenization_spaces=False)
            texts.append((lang, text))
    return texts


def file_contexts(texts: list[tuple[str, str]], per_file: int, seed: int) -> list[tuple[str, str, str]]:
    """(group, language, context): seeded places inside blocks of each file, after a line's first word."""
    rng = random.Random(seed)
    contexts = []
    for lang, text in texts:
        lines = text.split("\n")
        starts = [i for i in range(1, len(lines)) if lines[i].strip() and lines[i - 1].strip()]
        for i in sorted(rng.sample(starts, min(per_file, len(starts)))):
            first_word = re.match(r"\s*\S+", lines[i])[0]
            contexts.append(("file_contexts", lang, "\n".join(lines[:i]) + "\n" + first_word))
    return contexts


def summary(latencies_ms: list[float], tokens: list[int]) -> dict:
    seconds = sum(latencies_ms) / 1000
    return {
        "p50_ms": float(np.percentile(latencies_ms, 50)),
        "p95_ms": float(np.percentile(latencies_ms, 95)),
        "mean_ms": float(np.mean(latencies_ms)),
        "generated_tokens_per_s": sum(tokens) / seconds,
        "generated_tokens_per_call": float(np.mean(tokens)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"model folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--contexts", type=Path, nargs="*", default=[], help="source files to take contexts from")
    parser.add_argument(
        "--dev-files",
        type=int,
        default=0,
        help="also take contexts from this many held-out dev files per language (data/split)",
    )
    parser.add_argument("--per-file", type=int, default=2, help="contexts per file")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per prompt and way")
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="the loop guard, in both ways (generate's repetition_penalty; evaluate.repetition_penalty)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's); 1 is steadier on a busy machine"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model
    if not model_dir.exists():
        parser.error(f"{model_dir} does not exist: run the pipeline (dvc repro) or give --model DIR")
    params = load_params(args.params)
    # PyTorch for both ways: the seed's needs model.generate (a folder with model.onnx would get ONNX Runtime)
    completer = Completer.from_pretrained(model_dir, onnx=False)
    prompts = [("seed_prompts", lang, text) for lang, texts in params.evaluate.prompts.items() for text in texts]
    by_extension = {ext: lang for lang, spec in params.languages.items() for ext in spec.extensions}
    texts = [(by_extension[path.suffix], path.read_text()) for path in sorted(args.contexts)]
    if args.dev_files:
        texts += dev_file_texts(completer, SEGMENTS, SPLIT, args.dev_files, seed=0)
    prompts += file_contexts(texts, args.per_file, seed=0)

    timings = {}  # (group, way) -> (latencies ms, generated tokens)
    rows = []
    for group, lang, context in prompts:
        full = completer.prompt_ids(lang, context)
        prompt = full[:1] + full[1:][-CONTEXT_TOKENS:]
        ways = {
            # bound now: the lambdas run within this iteration, but the linter cannot know it
            "seed": lambda prompt=prompt: seed_complete(completer, prompt, args.repetition_penalty),
            "ours": lambda lang=lang, context=context, prompt=prompt: ours_complete(
                completer, lang, context, prompt, args.repetition_penalty
            ),
        }
        results = {way: run() for way, run in ways.items()}  # warm-up, and the texts to compare
        mine = {way: [] for way in ways}  # this prompt's latencies
        for _ in range(args.repeats):
            for way, run in ways.items():
                start = time.perf_counter()
                run()
                mine[way].append((time.perf_counter() - start) * 1000)
                for key in ((group, way), ("all", way)):
                    latencies, tokens = timings.setdefault(key, ([], []))
                    latencies.append(mine[way][-1])
                    tokens.append(results[way][1])
        rows.append(
            {
                "group": group,
                "lang": lang,
                "prompt": context[-200:],
                "completion": results["ours"][0],
                "seed_tokens": results["seed"][1],
                "ours_tokens": results["ours"][1],
                "seed_p50_ms": float(np.median(mine["seed"])),
                "ours_p50_ms": float(np.median(mine["ours"])),
                "identical": results["seed"][0] == results["ours"][0],
            }
        )
        print(
            f"{group:13} {lang:6} {context[-40:]!r:46} seed {results['seed'][1]:3} tokens, "
            f"ours {results['ours'][1]:3}, same text: {rows[-1]['identical']}"
        )

    groups = {}
    for group in dict.fromkeys(g for g, _ in timings):
        seed, ours = summary(*timings[(group, "seed")]), summary(*timings[(group, "ours")])
        groups[group] = {
            "seed": seed,
            "ours": ours,
            "speedup_p50": seed["p50_ms"] / ours["p50_ms"],
            "speedup_p95": seed["p95_ms"] / ours["p95_ms"],
        }
    report = {
        **groups,
        "all_identical": all(r["identical"] for r in rows),
        "prompts": rows,
        "model": str(model_dir),
        "prompt_format": completer.format.name,
        "vocab_size": len(completer.tokenizer),
        "model_parameters": sum(p.numel() for p in completer.model.parameters()),
        "device": completer.device,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "repetition_penalty": args.repetition_penalty,
        "cpu": platform.processor() or platform.machine(),
        "load_average_1min": os.getloadavg()[0],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for group, result in groups.items():
        for way in ("seed", "ours"):
            r = result[way]
            print(
                f"{group:13} {way}: p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
                f"{r['generated_tokens_per_s']:.0f} generated tokens/s, "
                f"{r['generated_tokens_per_call']:.1f} tokens/call"
            )
        print(f"{group:13} p50 speedup {result['speedup_p50']:.2f}x, p95 {result['speedup_p95']:.2f}x")
    print(f"identical texts: {report['all_identical']}; written to {RESULTS}")


if __name__ == "__main__":
    main()
