"""What runs a Completer's model: PyTorch (any transformers causal LM) or ONNX Runtime.

A model folder with `model.onnx` (written by `export_onnx`: at the end of the finetune stage, or by
`autocoder export --model DIR`) completes through ONNX Runtime, which needs neither torch nor
transformers. That is most of a cold start: on 2 cores `import torch` takes 2.5 s and transformers'
Llama classes 5 s more, ONNX Runtime and `tokenizers` 0.3 s; a decoding step of the 5M-parameter base
takes about 3 ms there against 10 ms in eager PyTorch (benchmarks/serve.py).

Both runners answer the same call, `step(ids, cache) -> (logits, cache)`: the new token ids
[batch, new] as numpy, the last position's logits [batch, vocab] as float32 numpy, and an opaque
key/value cache (None before the prompt). The exported graph has the same shape:
(input_ids [batch, new], past_keys and past_values [layers, batch, kv_heads, past, head_dim]) ->
(logits, keys, values with the new positions appended); one graph serves the prompt (past 0) and
every next token.

`model.onnx` records the sha256 of the `model.safetensors` it was exported from: a folder whose
weights changed since completes through PyTorch again, with one line saying why.

`OnnxTokenizer` is the part of transformers' tokenizer API that completion uses, read from the
folder's tokenizer.json and tokenizer_config.json by `tokenizers` itself: transformers' tokenizer
classes import torch.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from autocoder.errors import UserError, first_line
from autocoder.format import CONTROL_TOKENS_KEY, PROMPT_FORMAT_KEY

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
# model.onnx's metadata: what completion needs of config.json (its prompt format under config.json's
# keys, the control tokens as JSON), and the weights it was exported from
META_POSITIONS, META_VOCAB, META_WEIGHTS = "max_position_embeddings", "vocab_size", "weights_sha256"
PARITY_TOLERANCE = 1e-3  # largest logit difference between the exported graph and PyTorch


class TorchRunner:
    """A transformers model's forward pass with its key/value cache, on the GPU when there is one."""

    def __init__(self, model):
        import torch

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(self.device).eval()
        self.config = model.config

    pads = True  # takes an attention mask: left-padded batches of prompts of different lengths

    def step(self, ids: np.ndarray, cache, mask: np.ndarray | None = None):
        """The next-token logits after `ids` (the cache holds what came before). `mask`: 1 for real
        tokens, 0 for padding, over the cache and `ids`; positions count the real tokens only."""
        torch = self.torch
        with torch.inference_mode():
            inputs = torch.from_numpy(np.ascontiguousarray(ids)).to(self.device)
            padding = {}
            if mask is not None:
                attention = torch.from_numpy(mask).to(self.device)
                positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
                padding = {"attention_mask": attention, "position_ids": positions}
            out = self.model(input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1, **padding)
        return out.logits[:, -1].float().cpu().numpy(), out.past_key_values

    def select(self, cache, rows: list[int]):
        """The cache of the batch's `rows` only (the others are done)."""
        cache.batch_select_indices(self.torch.tensor(rows, device=self.device))
        return cache

    def length(self, cache) -> int:
        """How many tokens the cache holds."""
        return cache.get_seq_length()

    def crop(self, cache, n: int):
        """The cache of its first `n` tokens (in place)."""
        if n < cache.get_seq_length():  # transformers' crop takes the tokens to remove, negated
            cache.crop(n - cache.get_seq_length())
        return cache


class OnnxRunner:
    """An exported model.onnx run by ONNX Runtime on the CPU."""

    def __init__(self, folder: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are about graph optimisations
        path = folder / ONNX_FILE
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) share no other base class
            raise UserError(
                f"{path}: ONNX Runtime cannot load it, truncated or corrupt ({first_line(e)}); "
                f"export it again: autocoder export --model {folder}"
            ) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.config = SimpleNamespace(
            max_position_embeddings=int(meta[META_POSITIONS]),
            vocab_size=int(meta[META_VOCAB]),
            _name_or_path=str(folder),
            **({PROMPT_FORMAT_KEY: meta[PROMPT_FORMAT_KEY]} if PROMPT_FORMAT_KEY in meta else {}),
            **({CONTROL_TOKENS_KEY: json.loads(meta[CONTROL_TOKENS_KEY])} if CONTROL_TOKENS_KEY in meta else {}),
        )
        self.weights_sha256 = meta.get(META_WEIGHTS)
        self.device = "cpu"
        layers, _, heads, _, head_dim = self.session.get_inputs()[1].shape  # past_keys: batch and past are symbolic
        self._empty_shape = (layers, heads, head_dim)

    pads = False  # the exported graph has no attention mask: one prompt (or equal ones) at a time

    def step(self, ids: np.ndarray, cache, mask: np.ndarray | None = None):
        if mask is not None:
            raise ValueError("OnnxRunner.step: no attention mask in the exported graph (no padded batches)")
        if cache is None:
            layers, heads, head_dim = self._empty_shape
            empty = np.zeros((layers, len(ids), heads, 0, head_dim), np.float32)
            cache = (empty, empty)
        logits, keys, values = self.session.run(
            None, {"input_ids": ids.astype(np.int64), "past_keys": cache[0], "past_values": cache[1]}
        )
        return logits, (keys, values)

    def select(self, cache, rows: list[int]):
        """The cache of the batch's `rows` only (the others are done)."""
        return cache[0][:, rows], cache[1][:, rows]

    def length(self, cache) -> int:
        return cache[0].shape[3]  # (layers, batch, heads, tokens, head_dim)

    def crop(self, cache, n: int):
        return cache[0][:, :, :, :n], cache[1][:, :, :, :n]


class OnnxTokenizer:
    """The transformers tokenizer calls a Completer makes, answered by the folder's tokenizer.json."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        self._added = {t.content: i for i, t in self.backend_tokenizer.get_added_tokens_decoder().items()}
        self.all_special_tokens = [
            t.content for t in self.backend_tokenizer.get_added_tokens_decoder().values() if t.special
        ]
        self.special_tokens_map = {
            key: _token_text(config[key])
            for key in ("bos_token", "eos_token", "unk_token", "pad_token")
            if config.get(key)
        }
        self.eos_token_id = self._id(self.special_tokens_map.get("eos_token"))
        self.pad_token_id = self._id(self.special_tokens_map.get("pad_token"))

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_added_vocab(self) -> dict[str, int]:
        return dict(self._added)

    def encode(self, text: str, add_special_tokens: bool = True, split_special_tokens: bool = False) -> list[int]:
        """transformers' encode: split_special_tokens encodes "<|endoftext|>" in text as its characters."""
        self.backend_tokenizer.encode_special_tokens = split_special_tokens
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False) -> str:
        # clean_up_tokenization_spaces: transformers' word-level clean-up, never wanted for code
        return self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _token_text(token) -> str:
    return token["content"] if isinstance(token, dict) else str(token)


def onnx_runner(folder: Path) -> OnnxRunner | None:
    """The folder's model.onnx, when it exists and was exported from the folder's current weights
    (else None, and one line saying so)."""
    if not (folder / ONNX_FILE).exists():
        return None
    runner = OnnxRunner(folder)
    if runner.weights_sha256 == _weights_sha256(folder):
        return runner
    print(
        f"autocoder: {folder / ONNX_FILE} was exported from other weights than {folder / WEIGHTS_FILE}; "
        f"completing with PyTorch (re-export: autocoder export --model {folder})",
        file=sys.stderr,
    )
    return None


def _weights_sha256(folder: Path) -> str | None:
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def export_onnx(folder: Path) -> Path:
    """Export the folder's model (saved by save_pretrained, safetensors) to folder/model.onnx, checked
    against PyTorch on a prompt and its next token; a UserError names what failed."""
    if not (folder / WEIGHTS_FILE).is_file():
        raise UserError(f"model folder {folder}: no {WEIGHTS_FILE} to export (a folder saved with save_pretrained)")
    import logging
    import warnings

    import onnx
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    # the exporter's notes (torchvision's ops skipped, deprecations, unused axis names) are not the user's
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, trust_remote_code=False).eval()
    config, layers = model.config, model.config.num_hidden_layers

    class Step(torch.nn.Module):
        """(ids, past keys, past values) -> (last logits, keys, values): the cache as two tensors."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, past_keys, past_values):
            cache = DynamicCache(config=config)
            for layer in range(layers):
                cache.update(past_keys[layer], past_values[layer], layer)
            positions = torch.arange(input_ids.shape[1]).unsqueeze(0) + past_keys.shape[3]
            out = self.model(
                input_ids=input_ids, past_key_values=cache, position_ids=positions, use_cache=True, logits_to_keep=1
            )
            new = out.past_key_values.layers
            keys = torch.stack([new[layer].keys for layer in range(layers)])
            values = torch.stack([new[layer].values for layer in range(layers)])
            return out.logits[:, -1], keys, values

    step = Step().eval()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    # Example inputs: no dimension of size 1 (the exporter would fix it at 1), and two different
    # tensors for the cache (it makes one graph input of a tensor passed twice).
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]) % config.vocab_size
    past_keys, past_values = torch.zeros(layers, 2, heads, 3, head_dim), torch.ones(layers, 2, heads, 3, head_dim)
    batch, new, past_len = torch.export.Dim("batch"), torch.export.Dim("new"), torch.export.Dim("past")
    target = folder / ONNX_FILE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                step,
                (ids, past_keys, past_values),
                dynamo=True,
                input_names=["input_ids", "past_keys", "past_values"],
                output_names=["logits", "keys", "values"],
                dynamic_shapes={
                    "input_ids": {0: batch, 1: new},
                    "past_keys": {1: batch, 3: past_len},
                    "past_values": {1: batch, 3: past_len},
                },
                verbose=False,
            )
        except Exception as e:  # the exporter's errors are of many kinds; each means "not this model"
            raise UserError(f"model {folder}: cannot export it to ONNX ({first_line(e)})") from None
    proto = program.model_proto
    meta = {
        META_POSITIONS: str(config.max_position_embeddings),
        META_VOCAB: str(config.vocab_size),
        META_WEIGHTS: _weights_sha256(folder) or "",
    }
    if getattr(config, PROMPT_FORMAT_KEY, None):
        meta[PROMPT_FORMAT_KEY] = getattr(config, PROMPT_FORMAT_KEY)
    if getattr(config, CONTROL_TOKENS_KEY, None):
        meta[CONTROL_TOKENS_KEY] = json.dumps(getattr(config, CONTROL_TOKENS_KEY))
    onnx.helper.set_model_props(proto, meta)
    partial = target.with_suffix(".onnx.partial")
    onnx.save(proto, str(partial))  # one file: a small model's weights fit in the protobuf
    _check_parity(step, partial, ids[:1], heads, head_dim, layers)
    partial.replace(target)
    return target


def _check_parity(step, path: Path, ids, heads: int, head_dim: int, layers: int) -> None:
    """The exported graph's logits match PyTorch's for a prompt (empty cache) and the next token."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    empty = torch.zeros(layers, 1, heads, 0, head_dim)
    with torch.inference_mode():
        ref_logits, ref_keys, ref_values = step(ids, empty, empty)
        ref_next, _, _ = step(ids[:, :1], ref_keys, ref_values)
    feeds = {"input_ids": ids.numpy(), "past_keys": empty.numpy(), "past_values": empty.numpy()}
    logits, keys, values = session.run(None, feeds)
    [next_logits, _, _] = session.run(None, {"input_ids": ids[:, :1].numpy(), "past_keys": keys, "past_values": values})
    diff = max(np.abs(logits - ref_logits.numpy()).max(), np.abs(next_logits - ref_next.numpy()).max())
    if not diff <= PARITY_TOLERANCE:
        path.unlink()
        raise UserError(f"the ONNX export of {path.parent} differs from PyTorch by {diff:.2g} in its logits")
