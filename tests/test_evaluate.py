"""The evaluate stage on a real (tiny) corpus, model and MLflow store."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from autocoder import evaluate
from autocoder.atomic import write_json
from autocoder.champion import CHAMPION
from autocoder.complete import Completer
from autocoder.corpus import Corpus, split_rows
from autocoder.errors import UserError
from autocoder.evaluate import javac, sandbox
from autocoder.evaluate.lines import repeats
from autocoder.evaluate.match import exact_match
from autocoder.evaluate.perplexity import dev_perplexity
from autocoder.format import FIM_TOKENS
from autocoder.params import EvaluateParams
from autocoder.registry import Measurement
from autocoder.tokenizer import load_tokenizer
from autocoder.tracking import read_run_info
from helpers import CONTROL_TOKENS, finetuned_project, real_code_files, save_tiny_model

LINE_KEYS = {"exact_match", "edit_similarity", "hit_max_new_tokens", "repeats", "lines"}


def check_line_examples(path: Path, n_lines: int, first_line: int) -> list[dict]:
    """The examples of a line measure: n_lines distinct (file, line) pairs per language, each target the
    file's own non-blank line, scored as the module docstring says."""
    examples = [json.loads(line) for line in path.read_text().splitlines()]
    files = real_code_files()
    for lang in ["python", "java"]:
        mine = {(e["path"], e["line"]) for e in examples if e["lang"] == lang}
        assert len(mine) == n_lines == len([e for e in examples if e["lang"] == lang])
    for e in examples:  # the target is the file's own line, never a blank one
        assert e["target"] == files[e["path"]][1].split("\n")[e["line"] - 1] and e["target"].strip()
        assert e["line"] >= first_line and e["stop"] in {"pattern", "eos", "length"}
        assert e["exact_match"] == (e["predicted"].split() == e["target"].split())
    return examples


def check_line_scores(scores: dict, n_lines: int) -> None:
    assert set(scores) == {"python", "java"}
    for lang_scores in scores.values():
        assert set(lang_scores) == LINE_KEYS and lang_scores["lines"] == n_lines
        assert all(0 <= lang_scores[k] <= 1 for k in LINE_KEYS - {"lines"})


def test_ci_has_what_the_sandboxed_measures_need():
    """Without bubblewrap or a JDK their tests skip and the evaluate test takes its other branch; CI
    installs both (.ci/setup-services), so there a missing one fails instead of passing unseen."""
    missing = sandbox.unavailable() or javac.unavailable("javac")
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs every sandboxed measure, but: {missing}", pytrace=False)
        pytest.skip(missing)


@pytest.mark.slow
def test_measures_that_cannot_run_here_say_why_in_the_metrics_and_at_the_end(finetuned, monkeypatch, capsys):
    """Without bubblewrap and a JDK on PATH, HumanEval, its infilling and robustness, and Java
    compilation cannot run: metrics.json's `skipped` says why, and so does the run's last lines."""
    monkeypatch.setenv("PATH", str(Path(finetuned.finetune.out_dir).resolve()))  # no bwrap, no javac there
    evaluate.run(finetuned)
    metrics = json.loads(Path("metrics/metrics.json").read_text())
    assert set(metrics["skipped"]) == {"humaneval", "humaneval_infilling", "robustness.humaneval", "javac"}
    assert "bubblewrap is not installed" in metrics["skipped"]["humaneval"]
    assert "bubblewrap is not installed" in metrics["skipped"]["javac"]  # javac runs in the sandbox too
    assert not {"humaneval", "humaneval_infilling", "javac"} & set(metrics)
    tail = capsys.readouterr().out.splitlines()[-5:]
    assert tail[0].startswith("evaluate: 4 measures skipped") and tail[1].startswith("  humaneval: bubblewrap")
    run = mlflow.get_run(read_run_info(finetuned.finetune.out_dir)["run_id"])
    assert run.data.tags["skipped/javac"] == metrics["skipped"]["javac"]


@pytest.mark.slow
def test_evaluate_writes_metrics_samples_and_registers_the_champion(finetuned, capsys):
    evaluate.run(finetuned)

    metrics = json.loads(Path("metrics/metrics.json").read_text())
    # bits per byte is the same cross-entropy as the perplexity, per byte of the scored files; an
    # untrained model is near uniform over its 50k tokens: nowhere near a trained one's single digits
    ppl, tokens, n_bytes = metrics["dev_perplexity"], metrics["dev_tokens"], metrics["dev_bytes"]
    assert metrics["dev_bits_per_byte"] == pytest.approx(math.log2(ppl) * tokens / n_bytes, rel=1e-6)
    assert 5_000 < ppl < 200_000 and 0 < tokens < n_bytes
    n_lines = finetuned.evaluate.line_completion_lines
    check_line_scores(metrics["line_completion"], n_lines)
    # segment adds the FIM tokens to any vocabulary (GPT-2's here): the model is measured infilling
    check_line_scores(metrics["infill"], finetuned.evaluate.infill_lines)
    out = capsys.readouterr().out
    assert 0 < metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p95"] < math.inf
    n_prompts = sum(len(prompts) for prompts in finetuned.evaluate.prompts.values())
    assert metrics["samples"]["total"] == n_prompts and 0 <= metrics["samples"]["ended"] <= n_prompts
    assert 0 <= metrics["samples"]["python_parse"] <= 1
    why_not = sandbox.unavailable()
    if why_not is None:  # HumanEval runs completions: a random model passes none
        assert metrics["humaneval"] == {"problems": 2, "pass_at_1": 0.0, "contaminated_problems": 0}
        records = [json.loads(line) for line in (Path(finetuned.evaluate.out_dir) / "humaneval.jsonl").open()]
        assert [r["task_id"] for r in records] == ["HumanEval/0", "HumanEval/1"]
        assert metrics["humaneval_infilling"]["single_line"]["tasks"] == finetuned.evaluate.humaneval.infilling.tasks
        assert Path("plots/humaneval_pass_at_k.csv").read_text() == "k,pass_at_k\n1,0\n"
    else:
        assert "humaneval" not in metrics and metrics["skipped"]["humaneval"] == why_not
        assert Path("plots/humaneval_pass_at_k.csv").read_text() == "k,pass_at_k\n"
    robust = metrics["robustness"]
    for lang in ("python", "java"):  # the same lines, perturbed
        assert robust["line_completion"][lang]["nominal"] == metrics["line_completion"][lang]["exact_match"]
        for kind in ("whitespace", "variable_rename", "function_rename"):
            assert 0 <= robust["line_completion"][lang][kind]["score"] <= 1
    if why_not is None:
        assert robust["humaneval"]["problems"] == 1 and robust["humaneval"]["robust"] == 0.0
    if why_not is None and javac.unavailable("javac") is None:  # the dev Java file's methods, compiled
        assert metrics["javac"]["methods"] == 2 and 0 <= metrics["javac"]["compiles"] <= 1
        records = [json.loads(line) for line in (Path(finetuned.evaluate.out_dir) / "javac.jsonl").open()]
        assert {r["method"] for r in records} <= {"factorial", "main"} and len(records) == 2
    robustness_plot = Path("plots/robustness.csv").read_text()
    assert robustness_plot.startswith("case,score\n") and "\nline completion java / variable_rename," in robustness_plot
    memorized = metrics["memorization"]
    assert {side: memorized[side]["files"] for side in ("train", "dev")} == {"train": 2, "dev": 2}
    assert all(0 <= memorized[side]["mean_prefix_tokens"] <= 8 for side in ("train", "dev"))

    out = Path(finetuned.evaluate.out_dir)
    samples = (out / "samples.md").read_text()
    for prompts in finetuned.evaluate.prompts.values():
        assert all(f"`{prompt}`" in samples for prompt in prompts)
    assert samples.count("parses") + samples.count("does not parse") == len(finetuned.evaluate.prompts["python"])
    # the only Java dev file gives all the Java lines: several lines of one file
    check_line_examples(out / "line_completion.jsonl", n_lines, first_line=2)
    check_line_examples(out / "infill.jsonl", finetuned.evaluate.infill_lines, first_line=1)

    run_id = read_run_info(finetuned.finetune.out_dir)["run_id"]
    run = mlflow.get_run(run_id)
    assert run.data.metrics["eval/dev_perplexity"] == pytest.approx(metrics["dev_perplexity"])
    assert (
        run.data.metrics["eval/line_completion/java/exact_match"] == metrics["line_completion"]["java"]["exact_match"]
    )
    assert run.data.metrics["eval/memorization/train/exact"] == memorized["train"]["exact"]
    assert run.data.metrics["dev_perplexity"] == 100.0  # the finetune's own metric is left alone
    assert run.data.tags["champion_decision"] == "no champion yet"
    assert "evaluate/samples.md" in {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluate")}

    version = mlflow.MlflowClient().get_model_version_by_alias(finetuned.evaluate.registered_model_name, CHAMPION)
    info = read_run_info(finetuned.finetune.out_dir)
    measured = Measurement.from_tags(version.tags)
    assert (measured.dev_bits_per_byte, measured.dev_perplexity) == (
        metrics["dev_bits_per_byte"],
        metrics["dev_perplexity"],
    )
    assert measured.tokenizer_fingerprint == info["tokenizer_fingerprint"] and len(measured.dev_files) == 64
    assert version.run_id == run_id
    if why_not is None:
        assert float(version.tags["humaneval_pass_at_1"]) == 0.0


@pytest.fixture
def fim_finetuned(tmp_path, tiny_corpus, mlflow_db, monkeypatch):
    """finetuned, with a tiny model whose tokenizer also has the FIM tokens (ids after the corpus' ones)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tokenizer = load_tokenizer("gpt2", CONTROL_TOKENS)
    tokenizer.add_special_tokens({"additional_special_tokens": list(FIM_TOKENS)}, replace_extra_special_tokens=False)
    model_dir = save_tiny_model(tmp_path / "fim-model", tokenizer)
    return finetuned_project(tmp_path, *tiny_corpus, model_dir, repetition_penalty=1.2, no_repeat_ngram_size=3)


@pytest.mark.slow
def test_a_model_with_fim_tokens_is_measured_on_infilling(fim_finetuned):
    evaluate.run(fim_finetuned)
    metrics = json.loads(Path("metrics/metrics.json").read_text())
    check_line_scores(metrics["infill"], fim_finetuned.evaluate.infill_lines)
    check_line_scores(metrics["line_completion"], fim_finetuned.evaluate.line_completion_lines)
    out = Path(fim_finetuned.evaluate.out_dir)
    check_line_examples(out / "infill.jsonl", fim_finetuned.evaluate.infill_lines, first_line=1)
    run = mlflow.get_run(read_run_info(fim_finetuned.finetune.out_dir)["run_id"])
    assert run.data.metrics["eval/infill/python/exact_match"] == metrics["infill"]["python"]["exact_match"]
    assert "repetition penalty 1.2, no repeated 3-grams" in (out / "samples.md").read_text()
    if sandbox.unavailable() is None:  # HumanEval infilling: the tiny params' 2 tasks, run and scored
        infilling = metrics["humaneval_infilling"]["single_line"]
        assert infilling["tasks"] == 2 and 0 <= infilling["pass_rate"] <= 1 and 0 <= infilling["exact_match"] <= 1
        records = [json.loads(line) for line in (out / "humaneval_infilling.jsonl").open()]
        assert [r["task_id"].split("/")[0] for r in records] == ["SingleLineInfilling"] * 2
        assert run.data.metrics["eval/humaneval_infilling/single_line/pass_rate"] == infilling["pass_rate"]


def test_repeats_and_exact_match(gpt2_tokenizer):
    assert exact_match("  return  a +b", "return a +b ") and not exact_match("return a+b", "return a +b")
    assert repeats(gpt2_tokenizer, "foo(x) foo(x) foo(x) foo(x)", "")  # a 4-gram three times
    assert not repeats(gpt2_tokenizer, "foo(x) foo(x)", "")
    assert not repeats(gpt2_tokenizer, "[" + ", ".join(["()"] * 10) + "]", "")  # no letter or digit
    assert repeats(gpt2_tokenizer, "    x = 1", "x = 1\r")  # the line above again
    assert not repeats(gpt2_tokenizer, "", "")


@pytest.mark.slow
def test_dev_perplexity_scores_every_token_once(tiny_corpus, fim_model_dir):
    segments, split = tiny_corpus
    corpus = Corpus(segments)
    dev = split_rows(corpus, split, "dev")
    completer = Completer.from_pretrained(fim_model_dir)
    cfg = EvaluateParams(perplexity_max_bytes=None)
    [java] = [r for r in dev if corpus.files["language"][r] == "java"]
    n_tokens = corpus.files["n_tokens"]
    python = min((r for r in range(len(corpus)) if n_tokens[r] > 2 * corpus.meta.segment_len), key=n_tokens.__getitem__)
    result, scored = dev_perplexity(completer, corpus, np.array([python, java]), cfg)
    assert result["dev_tokens"] == n_tokens[python] + n_tokens[java] + 2  # and each file's eos
    assert result["dev_files"] == 2

    # A file shorter than a window is one forward pass: the same NLL by hand.
    control, eos = corpus.meta.control_token_ids["java"], corpus.meta.eos_id
    tokens = torch.tensor(np.concatenate([[control], corpus.file_tokens(java), [eos]]))
    with torch.inference_mode():
        nll = completer.model(tokens[None], labels=tokens[None]).loss.item() * (len(tokens) - 1)
    alone, scored_alone = dev_perplexity(completer, corpus, np.array([java]), cfg)
    assert scored_alone != scored  # the registry compares over the same files only
    assert alone["dev_perplexity"] == pytest.approx(math.exp(nll / (len(tokens) - 1)), rel=1e-4)
    text_bytes = len(completer.tokenizer.decode(corpus.file_tokens(java).tolist()).encode())
    assert alone["dev_bits_per_byte"] == pytest.approx(nll / math.log(2) / text_bytes, rel=1e-4)
    # The byte budget stops after the file that reaches it, whatever the tokenizer: here the first one.
    first, _ = dev_perplexity(
        completer, corpus, np.array([java, python]), cfg.model_copy(update={"perplexity_max_bytes": 1})
    )
    assert first["dev_files"] == 1


@pytest.mark.slow
def test_inputs_that_do_not_match_fail_before_any_work(finetuned):
    run_info = Path(finetuned.finetune.out_dir) / "mlflow_run.json"
    info = json.loads(run_info.read_text())
    write_json(run_info, {**info, "dev_split": "another"})
    with pytest.raises(UserError, match="trained on other data"):
        evaluate.run(finetuned)
    write_json(run_info, {**info, "run_id": "0123456789abcdef"})
    with pytest.raises(UserError, match="not in the tracking store"):
        evaluate.run(finetuned)
    write_json(run_info, info)
    no_segments = finetuned.model_copy(update={"segment": finetuned.segment.model_copy(update={"out_dir": "nowhere"})})
    with pytest.raises(UserError, match="nowhere: no meta.json"):
        evaluate.run(no_segments)
    run_info.unlink()
    with pytest.raises(UserError, match="mlflow_run.json: not found"):
        evaluate.run(finetuned)
    assert not Path("metrics/metrics.json").exists()
