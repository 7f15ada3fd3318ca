"""The tokenizer: GPT-2's ids offline, control and pad tokens, and the fast encoder's exactness."""

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from autocoder.errors import UserError
from autocoder.format import FIM_TOKENS
from autocoder.tokenizer import _tiktoken_encoding, fingerprint, load_tokenizer, text_encoder
from helpers import STDLIB, real_code_files


def test_gpt2_ids_offline(gpt2_tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert gpt2_tokenizer.encode("def factorial(n):") == [4299, 1109, 5132, 7, 77, 2599]
    assert gpt2_tokenizer.eos_token_id == 50256
    assert len(gpt2_tokenizer) == 50257 + 2 + 3 + 1  # GPT-2, <python>, <java>, the FIM tokens, <pad>
    ids = gpt2_tokenizer.convert_tokens_to_ids(["<python>", "<java>", *FIM_TOKENS, "<pad>"])
    assert ids == [50257, 50258, 50259, 50260, 50261, 50262]  # any vocabulary gets the FIM tokens, after the controls


def test_control_token_order_fixes_ids():
    swapped = load_tokenizer("gpt2", ["<java>", "<python>"])
    assert swapped.convert_tokens_to_ids(["<java>", "<python>"]) == [50257, 50258]
    assert fingerprint(swapped) != fingerprint(load_tokenizer("gpt2", ["<python>", "<java>"]))


def test_fast_encoder_gives_the_hugging_face_ids_on_real_code(gpt2_tokenizer):
    spec = gpt2_tokenizer.backend_tokenizer.to_str()
    assert _tiktoken_encoding(json.loads(spec)) is not None  # GPT-2 takes the fast path
    texts = [text for _, text in real_code_files().values()]
    texts += [p.read_text() for p in sorted(STDLIB.glob("[a-h]*.py"))]
    texts += ["<|endoftext|> <python> literal special tokens", "  \t\n\n   x = 'é' + \"日本\"  \n"]
    hf = Tokenizer.from_str(spec)
    hf.encode_special_tokens = True
    expected = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert text_encoder(spec)(texts) == expected


def test_other_tokenizers_use_the_hugging_face_encoder():
    word_level = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    spec = word_level.to_str()
    assert _tiktoken_encoding(json.loads(spec)) is None
    assert text_encoder(spec)(["a b c"]) == [[0, 1, 2]]


def test_a_tokenizer_folder_that_is_missing_or_empty_is_one_clear_line(tmp_path, gpt2_tokenizer):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(UserError) as err:
        load_tokenizer(str(missing), ["<python>"])
    assert str(err.value) == f"tokenizer {str(missing)!r}: cannot load it as a local folder: {missing} does not exist"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as err:
        load_tokenizer(str(tmp_path / "empty"), ["<python>"])
    assert "\n" not in str(err.value) and str(err.value).endswith(
        f"{tmp_path / 'empty'} has no tokenizer files (tokenizer.json, tokenizer_config.json or a vocab file)"
    )
    gpt2_tokenizer.save_pretrained(tmp_path / "saved")  # a real folder still loads, its ids unchanged
    assert load_tokenizer(str(tmp_path / "saved"), ["<python>"]).encode("def f(x):") == gpt2_tokenizer.encode(
        "def f(x):"
    )


def test_a_folder_tokenizer_saves_the_same_config_on_or_off_the_hub(tmp_path, gpt2_tokenizer):
    """transformers writes the load's local_files_only into the saved config; segment saves the
    tokenizer into data/segments, whose hash must not depend on whether the Hub was reachable."""
    gpt2_tokenizer.save_pretrained(tmp_path / "saved")
    load_tokenizer(str(tmp_path / "saved"), ["<python>"]).save_pretrained(tmp_path / "again")
    config = json.loads((tmp_path / "again" / "tokenizer_config.json").read_text())
    assert config["local_files_only"] is True
