"""The evaluate stage: measure the finetuned model on held-out dev files, log it to the finetune's
MLflow run, register it, and make it the champion if it is the best comparable model.

- Dev perplexity: every token of the scored dev files is predicted once, in non-overlapping windows
  of segment_len tokens after the language's control token, as in training (the last window of a
  file ends at the file's end; only its tokens not scored yet count). Files go in a seeded order
  until `perplexity_max_tokens`; the perplexity is token-weighted. Bits per byte = the total negative
  log-likelihood in bits / the UTF-8 bytes of the scored files: comparable across tokenizers.
- Line completion (CodeXGLUE-style): in each of `line_completion_files` dev files per language a
  seeded random non-blank line (not the first); the context is the file before that line, cut to
  its last `line_completion_max_context` tokens; the model completes greedily until a newline.
  Exact match and edit similarity (difflib.SequenceMatcher ratio, 0..1, no autojunk) compare the
  predicted and the true line with the whitespace around them stripped.
- Samples: the params' prompts completed greedily (`samples.md`), and their latency p50/p95.

Outputs: `<out_dir>/samples.md`, `<out_dir>/line_completion.jsonl` (every example),
`metrics/metrics.json`; the same metrics (prefixed `eval/`) and files go to the finetune's run.
"""

from __future__ import annotations

import difflib
import json
import math
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from autocoder import registry, serving
from autocoder.atomic import atomic_dir, write_json
from autocoder.complete import BLANK_LINE, CONTROL_IDS, END_OF_LINE, Completer
from autocoder.corpus import TOKENIZER_DIR, Corpus, split_rows, window_starts
from autocoder.errors import UserError
from autocoder.params import EvaluateParams, Params
from autocoder.tokenizer import fingerprint
from autocoder.tracking import RUN_INFO_FILE, configure, read_run_info
from autocoder.train.data import IGNORE, collate, dev_split_hash

METRICS_FILE = Path("metrics/metrics.json")
STAGE = "evaluate"


def run(params: Params) -> None:
    cfg = params.evaluate
    model_dir, corpus, dev_rows, measurement, run_id = _check_inputs(params)
    completer = Completer.from_pretrained(model_dir, params.control_tokens(), prompt_format=CONTROL_IDS)
    _check_model(completer, corpus, model_dir)

    print(f"{STAGE}: scoring dev perplexity")
    perplexity = dev_perplexity(completer, corpus, dev_rows, cfg)
    print(f"{STAGE}: dev perplexity {perplexity['dev_perplexity']:.4g}, "
          f"{perplexity['dev_bits_per_byte']:.4g} bits/byte over {perplexity['dev_tokens']} tokens")
    examples = line_completion_examples(completer, corpus, dev_rows, cfg)
    samples, latencies = sample_prompts(completer, cfg)
    metrics = {**perplexity, "line_completion": line_completion_scores(examples, list(params.languages)),
               "latency_ms": {"p50": float(np.percentile(latencies, 50)) if latencies else None,
                              "p95": float(np.percentile(latencies, 95)) if latencies else None}}

    with atomic_dir(cfg.out_dir) as out:
        (out / "samples.md").write_text(samples_markdown(samples, model_dir, cfg))
        (out / "line_completion.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in examples))
    write_json(METRICS_FILE, metrics)

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"eval/{k}": v for k, v in _flatten(metrics).items() if v is not None})
        mlflow.log_artifacts(cfg.out_dir, STAGE)
        model_info = serving.log_model(model_dir, params.control_tokens(), CONTROL_IDS)
        decision = registry.register(model_info.model_uri, cfg.registered_model_name,
                                     registry.Measurement(perplexity["dev_perplexity"], *measurement))
        mlflow.set_tags({registry.DECISION_TAG: decision.reason, "registered_model_version": decision.version})
        mlflow.log_metric("eval/champion", float(decision.promoted))
    print(f"{STAGE}: metrics in {METRICS_FILE}, samples in {Path(cfg.out_dir) / 'samples.md'}")


def _check_inputs(params: Params) -> tuple[Path, Corpus, np.ndarray, tuple[str, str], str]:
    """Every check that can fail on bad input, before any model work. Returns the model folder, the
    corpus, the dev rows, (tokenizer fingerprint, dev split hash) of this data, and the run id."""
    model_dir = Path(params.finetune.out_dir) / "best"
    info = read_run_info(params.finetune.out_dir)
    if not (model_dir / "config.json").exists():
        raise UserError(f"finetune.out_dir: {model_dir} holds no model; run the finetune stage first")
    seg_dir, split_dir = Path(params.segment.out_dir), Path(params.split.out_dir)
    try:
        corpus = Corpus(seg_dir)
        dev_rows = split_rows(corpus, split_dir, "dev")
    except FileNotFoundError as e:
        raise UserError(f"segment.out_dir/split.out_dir: {e}; run the earlier stages first (dvc repro)") from None
    if len(dev_rows) == 0:
        raise UserError(f"split.out_dir: {split_dir} has no dev files to evaluate on")
    # What the registry compares must describe the data measured here; the finetune recorded its own.
    tok_fingerprint = fingerprint(AutoTokenizer.from_pretrained(seg_dir / TOKENIZER_DIR))
    dev_split = dev_split_hash([str(corpus.files["sha256"][r]) for r in dev_rows], corpus.meta.segment_len)
    run_info = Path(params.finetune.out_dir) / RUN_INFO_FILE
    if (tok_fingerprint, dev_split) != (info.get("tokenizer_fingerprint"), info.get("dev_split")):
        raise UserError(f"{run_info}: the model was trained on other data (tokenizer or dev split differ from "
                        f"{seg_dir} and {split_dir}); rerun the finetune stage")
    store = configure(params.mlflow)
    try:
        mlflow.MlflowClient().get_run(info["run_id"])
    except (KeyError, mlflow.exceptions.MlflowException):
        raise UserError(f"{run_info}: run {info.get('run_id')!r} (logged to {info.get('tracking_uri')}) is not in "
                        f"the tracking store {store}") from None
    return model_dir, corpus, dev_rows, (tok_fingerprint, dev_split), info["run_id"]


def _check_model(completer: Completer, corpus: Corpus, model_dir: Path) -> None:
    if completer.languages != corpus.meta.control_token_ids:
        raise UserError(f"{model_dir}: control token ids {completer.languages} differ from the corpus' "
                        f"{corpus.meta.control_token_ids}")


def _seeded_order(rows: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(rows)


def _file_text(completer: Completer, corpus: Corpus, row: int) -> str:
    return completer.tokenizer.decode(corpus.file_tokens(row).tolist(), clean_up_tokenization_spaces=False)


@torch.inference_mode()
def dev_perplexity(completer: Completer, corpus: Corpus, rows: np.ndarray, cfg: EvaluateParams) -> dict:
    seg_len = min(corpus.meta.segment_len, completer.model.config.max_position_embeddings - 1)
    windows = []  # (control id + segment, labels: the tokens not scored by an earlier window)
    n_tokens = n_bytes = n_files = 0
    for row in _seeded_order(rows, cfg.seed):
        tokens = corpus.file_tokens(int(row)).astype(np.int64)
        control = corpus.meta.control_token_ids[str(corpus.files["language"][row])]
        scored_until = 0
        for start in window_starts(len(tokens), seg_len, seg_len):
            ids = np.concatenate([[control], tokens[start : start + seg_len]])
            labels = ids.copy()
            labels[: 1 + scored_until - start] = IGNORE  # the control token is never a label
            windows.append((ids, labels))
            scored_until = start + len(ids) - 1
            n_tokens += int((labels != IGNORE).sum())
        n_bytes += len(_file_text(completer, corpus, int(row)).encode())
        n_files += 1
        if cfg.perplexity_max_tokens and n_tokens >= cfg.perplexity_max_tokens:
            break
    if n_tokens == 0:
        raise UserError("split.out_dir: the dev files have no tokens to score")
    nll = 0.0
    for i in range(0, len(windows), cfg.batch_size):
        batch = collate(windows[i : i + cfg.batch_size], completer.tokenizer.pad_token_id)
        logits = completer.model(input_ids=batch["input_ids"].to(completer.device),
                                 attention_mask=batch["attention_mask"].to(completer.device)).logits
        nll += F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten().to(completer.device),
                               ignore_index=IGNORE, reduction="sum").item()
    return {"dev_perplexity": math.exp(nll / n_tokens), "dev_bits_per_byte": nll / math.log(2) / n_bytes,
            "dev_tokens": n_tokens, "dev_bytes": n_bytes, "dev_files": n_files}


def line_completion_examples(completer: Completer, corpus: Corpus, rows: np.ndarray, cfg: EvaluateParams) -> list[dict]:
    examples = []
    for lang in completer.languages:
        files = [r for r in _seeded_order(rows, cfg.seed) if corpus.files["language"][r] == lang]
        for row in files[: cfg.line_completion_files]:
            lines = _file_text(completer, corpus, int(row)).split("\n")  # not splitlines(): "\f" is no line end here
            candidates = [i for i in range(1, len(lines)) if lines[i].strip()]
            if not candidates:
                continue
            file_id = int(corpus.files["file_id"][row])
            i = int(np.random.default_rng([cfg.seed, file_id]).choice(candidates))
            target = lines[i].rstrip("\r")
            [completion] = completer.complete(lang, "\n".join(lines[:i]) + "\n", max_new_tokens=cfg.max_new_tokens,
                                              stop=END_OF_LINE, max_context_tokens=cfg.line_completion_max_context)
            predicted = completion.text
            examples.append({"lang": lang, "path": str(corpus.files["path"][row]), "line": i + 1,
                             "target": target, "predicted": predicted,
                             "exact_match": predicted.strip() == target.strip(),
                             "edit_similarity": difflib.SequenceMatcher(None, predicted.strip(), target.strip(),
                                                                        autojunk=False).ratio()})
    return examples


def line_completion_scores(examples: list[dict], languages: list[str]) -> dict:
    scores = {}
    for lang in languages:
        mine = [e for e in examples if e["lang"] == lang]
        if mine:
            scores[lang] = {"exact_match": float(np.mean([e["exact_match"] for e in mine])),
                            "edit_similarity": float(np.mean([e["edit_similarity"] for e in mine])),
                            "lines": len(mine)}
    return scores


def sample_prompts(completer: Completer, cfg: EvaluateParams) -> tuple[list[tuple], list[float]]:
    """Greedy completions of the params' prompts ((lang, prompt, Completion) each) and the latency in ms
    of `latency_repeats` timed runs of each, after one untimed run that warms the model up."""
    samples, latencies = [], []
    for lang, prompts in cfg.prompts.items():
        for prompt in prompts:
            [completion] = completer.complete(lang, prompt, max_new_tokens=cfg.max_new_tokens, stop=BLANK_LINE)
            samples.append((lang, prompt, completion))
            for _ in range(cfg.latency_repeats):
                start = time.perf_counter()
                completer.complete(lang, prompt, max_new_tokens=cfg.max_new_tokens, stop=BLANK_LINE)
                latencies.append((time.perf_counter() - start) * 1000)
    return samples, latencies


STOPPED_BY = {"pattern": "a blank line", "eos": "end of text", "length": "max_new_tokens"}


def samples_markdown(samples: list[tuple], model_dir: Path, cfg: EvaluateParams) -> str:
    out = [f"# Sample completions\n\nModel `{model_dir}`: greedy, at most {cfg.max_new_tokens} new tokens, "
           "stopping at a blank line. Confidence = mean log-probability of the generated tokens.\n"]
    for lang, prompt, c in samples:
        out.append(f"## {lang}: `{prompt}`\n\n{c.n_tokens} tokens, confidence {c.confidence:.3f}, "
                   f"stopped by {STOPPED_BY[c.stop]}\n\n````{lang}\n{prompt}{c.text}\n````\n")
    return "\n".join(out)


def _flatten(metrics: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in metrics.items():
        flat.update(_flatten(value, f"{prefix}{key}/") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat
