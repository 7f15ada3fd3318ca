"""The evaluate stage on a real (tiny) corpus, model and MLflow store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from autocoder import evaluate
from autocoder.atomic import write_json
from autocoder.complete import CONTROL_IDS, Completer
from autocoder.corpus import Corpus, split_rows
from autocoder.errors import UserError
from autocoder.params import EvaluateParams
from autocoder.registry import CHAMPION, Measurement
from autocoder.tracking import read_run_info
from conftest import real_code_files


def test_evaluate_writes_metrics_samples_and_registers_the_champion(finetuned):
    evaluate.run(finetuned)

    metrics = json.loads(Path("metrics/metrics.json").read_text())
    assert 1 < metrics["dev_perplexity"] < 1e6 and 0 < metrics["dev_bits_per_byte"] < 100
    assert set(metrics["line_completion"]) == {"python", "java"}
    for scores in metrics["line_completion"].values():
        assert 0 <= scores["exact_match"] <= 1 and 0 <= scores["edit_similarity"] <= 1 and scores["lines"] >= 1
    assert 0 < metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p95"] < math.inf

    out = Path(finetuned.evaluate.out_dir)
    samples = (out / "samples.md").read_text()
    for prompts in finetuned.evaluate.prompts.values():
        assert all(f"`{prompt}`" in samples for prompt in prompts)
    examples = [json.loads(line) for line in (out / "line_completion.jsonl").read_text().splitlines()]
    assert {e["lang"] for e in examples} == {"python", "java"}
    files = real_code_files()
    for e in examples:  # the target is the file's own line, never a blank one
        assert e["target"] == files[e["path"]][1].split("\n")[e["line"] - 1] and e["target"].strip()

    run_id = read_run_info(finetuned.finetune.out_dir)["run_id"]
    run = mlflow.get_run(run_id)
    assert run.data.metrics["eval/dev_perplexity"] == pytest.approx(metrics["dev_perplexity"])
    assert run.data.metrics["eval/line_completion/java/exact_match"] == metrics["line_completion"]["java"]["exact_match"]
    assert run.data.metrics["dev_perplexity"] == 100.0  # the finetune's own metric is left alone
    assert run.data.tags["champion_decision"] == "no champion yet"
    assert "evaluate/samples.md" in {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluate")}

    version = mlflow.MlflowClient().get_model_version_by_alias(finetuned.evaluate.registered_model_name, CHAMPION)
    info = read_run_info(finetuned.finetune.out_dir)
    assert Measurement.from_tags(version.tags) == Measurement(metrics["dev_perplexity"], info["tokenizer_fingerprint"],
                                                               info["dev_split"])
    assert version.run_id == run_id


def test_dev_perplexity_scores_every_token_once(tiny_corpus, tiny_model_dir):
    segments, split = tiny_corpus
    corpus = Corpus(segments)
    dev = split_rows(corpus, split, "dev")
    completer = Completer.from_pretrained(tiny_model_dir, prompt_format=CONTROL_IDS)
    cfg = EvaluateParams(perplexity_max_tokens=None)
    [java] = [r for r in dev if corpus.files["language"][r] == "java"]
    n_tokens = corpus.files["n_tokens"]
    python = min((r for r in range(len(corpus)) if n_tokens[r] > 2 * corpus.meta.segment_len), key=n_tokens.__getitem__)
    result = evaluate.dev_perplexity(completer, corpus, np.array([python, java]), cfg)
    assert result["dev_tokens"] == n_tokens[python] + n_tokens[java]
    assert result["dev_files"] == 2

    # A file shorter than a window is one forward pass: the same NLL by hand.
    tokens = torch.tensor(np.concatenate([[corpus.meta.control_token_ids["java"]], corpus.file_tokens(java)]))
    with torch.inference_mode():
        nll = completer.model(tokens[None], labels=tokens[None]).loss.item() * (len(tokens) - 1)
    alone = evaluate.dev_perplexity(completer, corpus, np.array([java]), cfg)
    assert alone["dev_perplexity"] == pytest.approx(math.exp(nll / (len(tokens) - 1)), rel=1e-4)
    text_bytes = len(completer.tokenizer.decode(corpus.file_tokens(java).tolist()).encode())
    assert alone["dev_bits_per_byte"] == pytest.approx(nll / math.log(2) / text_bytes, rel=1e-4)


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
