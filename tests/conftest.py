"""Shared fixtures: the real GPT-2 tokenizer (offline), small real corpora, a tiny real model."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autocoder.corpus import SPLIT_FILE, TOKENIZER_DIR, CorpusWriter, Meta
from autocoder.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sys.modules["os"].__file__).parent
CONTROL_TOKENS = ["<python>", "<java>"]

JAVA_SNIPPET = """import java.util.Scanner;

public class Factorial {
    public static long factorial(int n) {
        if (n <= 1) {
            return 1;
        }
        return n * factorial(n - 1);
    }

    public static void main(String[] args) {
        Scanner input = new Scanner(System.in);
        int n = input.nextInt();
        System.out.println(factorial(n));
    }
}
"""


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    return load_tokenizer("gpt2", CONTROL_TOKENS)


def real_code_files() -> dict[str, tuple[str, str]]:
    """A few real files: relative path -> (language, text). Python from the stdlib, Java variants."""
    files = {}
    for name in ["bisect.py", "heapq.py", "colorsys.py", "keyword.py", "fnmatch.py", "stat.py",
                 "glob.py", "shlex.py", "textwrap.py", "numbers.py"]:
        files[f"py/{name}"] = ("python", (STDLIB / name).read_text())
    for i in range(6):
        files[f"java/Factorial{i}.java"] = ("java", JAVA_SNIPPET.replace("Factorial", f"Factorial{i}"))
    return files


def write_corpus(out: Path, tokenizer, files: dict[str, tuple[str, str]], dev: set[str],
                 segment_len: int = 254, stride: int = 10) -> tuple[Path, Path]:
    """Write a segments folder and a split folder the way the segment and split stages do."""
    seg_dir, split_dir = out / "segments", out / "split"
    split_dir.mkdir(parents=True, exist_ok=True)
    writer = CorpusWriter(seg_dir, "uint16")
    split = {"file_id": [], "split": []}
    for path, (lang, text) in sorted(files.items()):
        data = text.encode()
        fid = writer.add("fixture", path, lang, hashlib.sha256(data).hexdigest(), len(data),
                         tokenizer(text)["input_ids"])
        split["file_id"].append(fid)
        split["split"].append("dev" if path in dev else "train")
    ids = dict(zip(["python", "java"], tokenizer.convert_tokens_to_ids(CONTROL_TOKENS)))
    writer.close(Meta("gpt2", segment_len, stride, "uint16", ids, tokenizer.eos_token_id,
                      tokenizer.pad_token_id, len(tokenizer)))
    tokenizer.save_pretrained(seg_dir / TOKENIZER_DIR)
    pq.write_table(pa.table(split), split_dir / SPLIT_FILE)
    return seg_dir, split_dir


@pytest.fixture
def tiny_corpus(tmp_path, gpt2_tokenizer):
    """(segments_dir, split_dir) of ~16 real files, two Python and one Java file held out as dev."""
    files = real_code_files()
    return write_corpus(tmp_path / "data", gpt2_tokenizer, files,
                        dev={"py/heapq.py", "py/shlex.py", "java/Factorial5.java"})


@pytest.fixture
def tiny_model_dir(tmp_path, gpt2_tokenizer):
    """A tiny randomly initialised GPT-2 with the control tokens, saved as safetensors + tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import torch

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=len(gpt2_tokenizer),
                        eos_token_id=gpt2_tokenizer.eos_token_id, bos_token_id=gpt2_tokenizer.eos_token_id,
                        pad_token_id=gpt2_tokenizer.pad_token_id)
    out = tmp_path / "tiny-model"
    GPT2LMHeadModel(config).save_pretrained(out)  # safetensors by default
    gpt2_tokenizer.save_pretrained(out)
    return out
