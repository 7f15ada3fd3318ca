"""The split stage: whole files per split, deterministic and stable, and a contamination report that
tells a file-level split from the seed's window-level one."""

import functools
import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from transformers import PreTrainedTokenizerBase

from autocoder.cli import main
from autocoder.corpus import SPLIT_FILE, TOKENIZER_DIR, Corpus, CorpusWriter, Meta, read_split, split_rows
from autocoder.errors import UserError
from autocoder.ngrams import _BASE, ngram_hashes, shared_gram_pairs
from autocoder.outputs import CONTAMINATION
from autocoder.params import SplitParams, load_params
from autocoder.problems import load_problems
from autocoder.split import (
    SPLITS,
    assign,
    assign_by_content,
    contamination_report,
    corpus_windows,
    run,
)
from autocoder.tokenizer import load_tokenizer
from helpers import ROOT

BY_CONTENT = {"near_copy_threshold": None, "near_copy_shared_fraction": None}  # no near-copy groups


def random_files(n_files: int, seed: int = 0, lengths=(300, 3000)) -> list[np.ndarray]:
    """Files of random token ids: no 50-token span occurs twice."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50000, size=rng.integers(*lengths)) for _ in range(n_files)]


@functools.cache
def gpt2() -> PreTrainedTokenizerBase:
    return load_tokenizer("gpt2", {"python": "<python>"})


def write_segments(out, files: list[np.ndarray], segment_len: int = 254, stride: int = 10):
    """A corpus of these token ids, as the segment stage writes one (GPT-2's tokenizer with it)."""
    writer = CorpusWriter(out, "uint16")
    for i, ids in enumerate(files):
        data = np.asarray(ids, dtype="<u2").tobytes()
        writer.add("synthetic", f"src/f{i}.py", "python", hashlib.sha256(data).hexdigest(), len(data), ids)
    writer.close(Meta("gpt2", segment_len, stride, "uint16", {"python": 50257}, 50256, 50256, 50258))
    gpt2().save_pretrained(out / TOKENIZER_DIR)
    return out


def make_params(tmp_path, segments, **split):
    params = load_params(ROOT / "params.yaml")
    return params.model_copy(
        update={
            "segment": params.segment.model_copy(update={"out_dir": str(segments)}),
            "split": SplitParams(out_dir=str(tmp_path / split.pop("out", "split")), **split),
        }
    )


def run_split(tmp_path, monkeypatch, segments, **split) -> tuple[dict[int, str], dict]:
    """Run the stage in tmp_path; (file_id -> split, contamination metrics)."""
    monkeypatch.chdir(tmp_path)
    params = make_params(tmp_path, segments, **split)
    run(params)
    return read_split(params.split.out_dir), json.loads(CONTAMINATION.read_text())


def test_ngram_hashes_are_the_polynomial_over_token_codes():
    tokens = random_files(1, lengths=(300, 301))[0].astype(np.uint16)
    codes = ngram_hashes(tokens, 1).tolist()
    for n in (2, 7, 50, 300):
        expected = [
            sum(codes[i + k] * pow(_BASE, n - 1 - k, 2**64) for k in range(n)) % 2**64
            for i in range(len(tokens) - n + 1)
        ]
        assert ngram_hashes(tokens, n).tolist() == expected
        assert ngram_hashes(tokens, n, chunk=7).tolist() == expected  # chunks join without seams
    assert len(set(codes)) == len(set(tokens.tolist()))


def test_windows_are_the_training_windows(tmp_path):
    corpus = Corpus(write_segments(tmp_path / "segments", random_files(5, lengths=(20, 400)), 64, 7))
    row, starts, lengths = corpus_windows(corpus)
    everything = corpus.windows(np.arange(len(corpus)))
    assert len(row) == len(everything)
    for i in range(len(row)):
        # after the control token; the window that ends its file has the eos after them
        assert np.array_equal(corpus.tokens[starts[i] : starts[i] + lengths[i]], everything[i][1 : 1 + lengths[i]])


def test_whole_files_per_split_in_the_requested_ratios(tmp_path, monkeypatch):
    segments = write_segments(tmp_path / "segments", random_files(100))
    assignment, metrics = run_split(tmp_path, monkeypatch, segments, dev_ratio=0.1, test_ratio=0.2)

    table = pq.read_table(tmp_path / "split" / SPLIT_FILE)
    assert [str(t) for t in table.schema.types] == ["int64", "string"]
    assert sorted(table.column("file_id").to_pylist()) == list(range(100))  # each file exactly once
    corpus = Corpus(segments)
    windows = {
        name: len(corpus.windows(split_rows(corpus, tmp_path / "split", name))) for name in ("train", "dev", "test")
    }
    total = sum(windows.values())
    # Each file lands in dev with probability dev_ratio: 100 files of unequal sizes scatter the share.
    assert windows["dev"] / total == pytest.approx(0.1, abs=0.07)
    assert windows["test"] / total == pytest.approx(0.2, abs=0.07)
    for name in windows:
        assert metrics[name]["windows"] == windows[name]
        assert metrics[name]["files"] == sum(1 for s in assignment.values() if s == name)
    assert sum(metrics[s]["tokens"] for s in windows) == len(corpus.tokens)


def test_deterministic_under_the_seed(tmp_path, monkeypatch):
    segments = write_segments(tmp_path / "segments", random_files(60))
    first, metrics = run_split(tmp_path, monkeypatch, segments, seed=1, out="a")
    again, metrics_again = run_split(tmp_path, monkeypatch, segments, seed=1, out="b")
    other, _ = run_split(tmp_path, monkeypatch, segments, seed=2, out="c")
    assert (tmp_path / "a" / SPLIT_FILE).read_bytes() == (tmp_path / "b" / SPLIT_FILE).read_bytes()
    assert metrics == metrics_again
    assert first != other


def test_adding_files_moves_no_file(tmp_path):
    """A file's split follows from its content alone: a larger corpus (the base profile's) keeps the
    smaller one's dev files in dev."""
    files = random_files(150)
    before, after = (Corpus(write_segments(tmp_path / name, files[:n])) for name, n in (("a", 100), ("b", 150)))
    sp = SplitParams(dev_ratio=0.1, test_ratio=0.1)
    split_before = dict(zip(before.files["sha256"], assign(before, sp)))
    split_after = dict(zip(after.files["sha256"], assign(after, sp)))
    assert all(split_before[sha] == split_after[sha] for sha in split_before)
    assert {1, 2} <= set(split_before.values())


def test_each_file_is_dev_with_probability_dev_ratio():
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    split = assign_by_content(shas, SplitParams(dev_ratio=0.1, test_ratio=0.05))
    assert np.mean(split == 1) == pytest.approx(0.1, abs=0.01)
    assert np.mean(split == 2) == pytest.approx(0.05, abs=0.01)
    assert np.array_equal(split[:100], assign_by_content(shas[:100], SplitParams(dev_ratio=0.1, test_ratio=0.05)))


def test_no_shared_spans_no_contamination_unlike_a_window_split(tmp_path, monkeypatch):
    segments = write_segments(tmp_path / "segments", random_files(50))
    _, metrics = run_split(tmp_path, monkeypatch, segments)
    assert metrics["file_split"] == {
        "dev_windows_with_train_ngram": 0.0,
        "dev_files_in_train": 0.0,
        "dev_windows_with_train_ngram_beyond_boilerplate": 0.0,
    }
    # The seed's split of the same windows: a dev window's neighbours 10 tokens away are in train.
    assert metrics["window_split"]["dev_windows_with_train_ngram"] > 0.95
    assert metrics["window_split"]["dev_files_in_train"] > 0.95


def _seed_splitting(corpus: Corpus, original: int, copy: int) -> tuple[int, np.ndarray]:
    """A seed that puts `original` and `copy` in different splits, one of them in dev, when near-copies
    are not kept together (the split by content alone)."""
    for seed in range(200):
        split = assign(corpus, SplitParams(dev_ratio=0.3, seed=seed, **BY_CONTENT))
        if {split[original], split[copy]} == {0, 1}:
            return seed, split
    raise AssertionError("no seed separates the two files")


def test_a_copied_file_contaminates_dev(tmp_path, monkeypatch):
    files = random_files(10)
    files.append(np.concatenate([[1, 2, 3], files[0]]))  # the same code under another path and header
    corpus = Corpus(write_segments(tmp_path / "segments", files))
    seed, split = _seed_splitting(corpus, 0, 10)
    _, metrics = run_split(tmp_path, monkeypatch, corpus.dir, dev_ratio=0.3, seed=seed, **BY_CONTENT)
    leaked_windows = len(corpus.windows(np.array([0 if split[0] == 1 else 10])))  # the one in dev
    leaked_share = leaked_windows / metrics["dev"]["windows"]
    assert metrics["file_split"]["dev_windows_with_train_ngram"] == pytest.approx(leaked_share, abs=1e-6)
    assert metrics["file_split"]["dev_files_in_train"] == 0.0  # not byte-identical


def test_near_copies_land_on_one_side_and_the_report_shows_both_splits(tmp_path, monkeypatch):
    files = random_files(10)
    edited = files[0].copy()
    edited[::100] = 7  # a token in 100 changed: near-identical to MinHash, another file to sha256
    files.append(edited)
    corpus = Corpus(write_segments(tmp_path / "segments", files))
    seed, by_content = _seed_splitting(corpus, 0, 10)
    assignment, metrics = run_split(tmp_path, monkeypatch, corpus.dir, dev_ratio=0.3, seed=seed)
    ids = corpus.files["file_id"]
    assert assignment[ids[0]] == assignment[ids[10]] == "train"  # the group goes where one of it was
    others = [i for i in range(10) if i != 0]
    assert [assignment[ids[i]] for i in others] == [SPLITS[by_content[i]] for i in others]  # nothing else moves
    assert metrics["near_copies_moved_to_train"] == 1
    assert metrics["file_split"]["dev_windows_with_train_ngram"] == 0.0
    assert metrics["file_split_without_near_copy_groups"]["dev_windows_with_train_ngram"] > 0.0


def test_files_sharing_a_copied_span_land_on_one_side_but_boilerplate_joins_nothing(tmp_path, monkeypatch):
    files = random_files(12, lengths=(1000, 1001))
    header = random_files(1, seed=1, lengths=(200, 201))[0]  # in 11 files: boilerplate, joins none of them
    files[:11] = [np.concatenate([header, body]) for body in files[:11]]
    method = files[0][500:650]  # 150 copied tokens: a method in a sibling class, ~10% of either file
    files[1] = np.concatenate([files[1][:600], method, files[1][600:]])
    files[2] = np.concatenate([files[2][:600], method[:60], files[2][600:]])  # 60 tokens: 1% of its 50-grams
    corpus = Corpus(write_segments(tmp_path / "segments", files))
    hashes = ngram_hashes(corpus.tokens, 50)
    a, b = shared_gram_pairs(corpus, hashes, 50, min_files=10, min_fraction=0.05)
    assert list(zip(a.tolist(), b.tolist())) == [(0, 1)]  # MinHash sees two different files
    assert shared_gram_pairs(corpus, hashes, 50, min_files=10, min_fraction=0.2)[0].size == 0
    for seed in range(200):  # a seed that puts file 0 or 1 in dev by content
        by_content = assign(corpus, SplitParams(dev_ratio=0.3, seed=seed, near_copy_shared_fraction=None))
        if {by_content[0], by_content[1]} == {0, 1}:
            break
    split = assign(corpus, SplitParams(dev_ratio=0.3, seed=seed, near_copy_shared_fraction=0.05))
    assert split[0] == split[1] == 0 and (split[2:] == by_content[2:]).all()


def test_train_files_sharing_a_span_with_humaneval_are_counted_and_dropped_on_request(tmp_path, monkeypatch):
    problem = load_problems()[0]
    solved = gpt2().encode(problem.prompt + problem.canonical_solution)  # a train file that holds a solution
    files = random_files(12, lengths=(300, 301))
    files[0] = np.concatenate([files[0], solved])
    corpus = Corpus(write_segments(tmp_path / "segments", files))
    seed = next(s for s in range(200) if assign(corpus, SplitParams(dev_ratio=0.3, seed=s, **BY_CONTENT))[0] == 0)
    kept, metrics = run_split(tmp_path, monkeypatch, corpus.dir, dev_ratio=0.3, seed=seed, **BY_CONTENT)
    ids = corpus.files["file_id"]
    assert kept[ids[0]] == "train" and metrics["humaneval"] == {"train_files_sharing_a_span": 1, "dropped": False}
    dropped, metrics = run_split(
        tmp_path, monkeypatch, corpus.dir, dev_ratio=0.3, seed=seed, drop_humaneval_contaminated=True, **BY_CONTENT
    )
    assert dropped[ids[0]] == "dropped" and metrics["humaneval"]["dropped"] is True
    assert {i: dropped[i] for i in ids[1:]} == {i: kept[i] for i in ids[1:]}  # nothing else moves
    assert (
        metrics["dropped"]["files"] == 1 and metrics["train"]["files"] == sum(v == "train" for v in kept.values()) - 1
    )
    assert "dropped_windows_with_train_ngram" not in metrics["file_split"]  # not a held-out split
    assert split_rows(corpus, tmp_path / "split", "train").tolist() == [
        r for r in range(len(corpus)) if kept[ids[r]] == "train" and r != 0
    ]


def test_boilerplate_is_what_many_files_share(tmp_path):
    header = random_files(1, lengths=(60, 61))[0]
    files = [np.concatenate([header, body]) for body in random_files(12, lengths=(200, 201))]
    corpus = Corpus(write_segments(tmp_path / "segments", files))
    split = np.array([1] + [0] * 11, dtype=np.int8)  # one dev file: its header is in every train file
    report = contamination_report(corpus, split, SplitParams(contamination_ngram=50, boilerplate_files=10))
    assert report["file_split"]["dev_windows_with_train_ngram"] == 1.0
    assert report["file_split"]["dev_windows_with_train_ngram_beyond_boilerplate"] == 0.0
    assert report["boilerplate_ngrams"] > 0
    fewer = contamination_report(corpus, split, SplitParams(contamination_ngram=50, boilerplate_files=13))
    assert fewer["file_split"]["dev_windows_with_train_ngram_beyond_boilerplate"] == 1.0  # 12 files < 13


def test_an_exact_copy_is_counted(tmp_path):
    files = random_files(3, lengths=(1000, 1001))
    corpus = Corpus(write_segments(tmp_path / "segments", [files[0], files[0], files[1]]))
    seed, split = _seed_splitting(corpus, 0, 1)
    report = contamination_report(corpus, split, SplitParams(dev_ratio=0.3, seed=seed, **BY_CONTENT))
    assert report["file_split"] == {
        "dev_windows_with_train_ngram": 1.0,
        "dev_files_in_train": 1.0,
        "dev_windows_with_train_ngram_beyond_boilerplate": 1.0,  # in 2 files: not boilerplate
    }


def test_ngrams_never_cross_file_boundaries(tmp_path):
    head, tail, other = random_files(3, lengths=(100, 101))
    train = np.concatenate([head[-30:], tail[:30]])  # the only shared 60-token span...
    apart = Corpus(write_segments(tmp_path / "apart", [train, head, tail]))  # ...straddles two dev files
    together = Corpus(write_segments(tmp_path / "together", [train, np.concatenate([head, tail]), other]))
    sp = SplitParams(contamination_ngram=50)
    split = np.array([0, 1, 1], dtype=np.int8)
    assert contamination_report(apart, split, sp)["file_split"]["dev_windows_with_train_ngram"] == 0.0
    assert contamination_report(together, split, sp)["file_split"]["dev_windows_with_train_ngram"] == 0.5


def test_stage_on_real_code_through_the_cli(tmp_path, monkeypatch, tiny_corpus, capsys):
    segments, _ = tiny_corpus
    monkeypatch.chdir(tmp_path)
    params = load_params(ROOT / "params.yaml").model_dump()
    params["segment"]["out_dir"], params["split"]["out_dir"] = str(segments), "out/split"
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    main(["--params", "params.yaml", "split"])
    corpus = Corpus(segments)
    assert all(len(split_rows(corpus, "out/split", name)) for name in ("train", "dev"))
    metrics = json.loads((tmp_path / "metrics" / "contamination.json").read_text())
    assert metrics["ngram"] == 50 and set(metrics["window_split"]) < set(metrics["file_split"])
    assert set(metrics["file_split_without_near_copy_groups"]) == set(metrics["file_split"])
    assert "dev windows with a train 50-gram" in capsys.readouterr().out


def test_missing_segments_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no-such-dir"):
        run(make_params(tmp_path, tmp_path / "no-such-dir"))
    assert not (tmp_path / "split").exists()


@pytest.mark.parametrize("n_files, ratios", [(1, {}), (2, {"test_ratio": 0.1})])
def test_too_few_files_is_a_user_error(tmp_path, monkeypatch, n_files, ratios):
    segments = write_segments(tmp_path / "segments", random_files(n_files))
    with pytest.raises(UserError, match=f"{n_files} file"):
        run_split(tmp_path, monkeypatch, segments, **ratios)
    assert not (tmp_path / "split").exists() and not CONTAMINATION.exists()
