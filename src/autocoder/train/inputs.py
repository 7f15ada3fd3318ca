"""Everything the finetune stage reads, checked before anything is trained or written: the data,
its tokenizer and the model (a one-line UserError naming the key for each problem)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from autocoder.corpus import FILES_FILE, META_FILE, SPLIT_FILE, TOKENIZER_DIR, Corpus, split_rows
from autocoder.errors import UserError, first_line
from autocoder.format import FIM_TOKENS, PromptFormat
from autocoder.hub import hub_offline
from autocoder.params import FinetuneParams, LoraParams, Params, ScratchModel
from autocoder.scoring import dev_split_hash
from autocoder.tokenizer import fingerprint, has_fim_tokens


@dataclass
class Inputs:
    corpus: Corpus
    tokenizer: object  # PreTrainedTokenizerFast, saved by the segment stage: exactly the data's ids
    train_rows: np.ndarray
    dev_rows: np.ndarray
    model_config: PretrainedConfig
    data_hash: str  # changes whenever the segments, the split, the tokenizer or a local model's files change
    dev_split: str  # see scoring.dev_split_hash
    tokenizer_fingerprint: str


def check_inputs(params: Params) -> Inputs:
    ft, seg_dir, split_dir = params.finetune, Path(params.segment.out_dir), Path(params.split.out_dir)
    if not (seg_dir / META_FILE).exists():
        raise UserError(f"segment.out_dir: {seg_dir / META_FILE} not found; run the segment stage first")
    if not (split_dir / SPLIT_FILE).exists():
        raise UserError(f"split.out_dir: {split_dir / SPLIT_FILE} not found; run the split stage first")
    corpus = Corpus(seg_dir)
    train_rows, dev_rows = split_rows(corpus, split_dir, "train"), split_rows(corpus, split_dir, "dev")
    if len(train_rows) == 0 or len(dev_rows) == 0:
        raise UserError(
            f"split.out_dir: {split_dir} has {len(train_rows)} train and {len(dev_rows)} dev files; finetune needs both"
        )
    window = corpus.meta.segment_len + 2
    if ft.windows == "sliding" and window > ft.max_length:
        raise UserError(
            f"finetune.max_length: {ft.max_length} is shorter than the data's windows "
            f"(segment_len {corpus.meta.segment_len} + control token + eos = {window})"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(seg_dir / TOKENIZER_DIR, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(f"segment.out_dir: cannot load {seg_dir / TOKENIZER_DIR} ({first_line(e)})") from None
    if ft.fim_rate > 0 and not has_fim_tokens(tokenizer):
        raise UserError(
            f"finetune.fim_rate: {ft.fim_rate} needs the tokenizer's fill-in-the-middle tokens "
            f"({', '.join(FIM_TOKENS)}), which {seg_dir / TOKENIZER_DIR} lacks (segment.tokenizer: "
            "learn makes them); set fim_rate: 0"
        )
    model_config = check_model(ft, tokenizer)
    tok_fingerprint = fingerprint(tokenizer)
    data_hash = hashlib.sha256(tok_fingerprint.encode())
    model_path, local = _source(ft.model)
    local = local and ft.model != "scratch"
    model_files = sorted(p for p in Path(model_path).rglob("*") if p.is_file()) if local else []
    for path in [seg_dir / META_FILE, seg_dir / FILES_FILE, split_dir / SPLIT_FILE, *model_files]:
        with open(path, "rb") as f:
            data_hash.update(hashlib.file_digest(f, "sha256").digest())
    dev_split = dev_split_hash(corpus, dev_rows)
    return Inputs(
        corpus, tokenizer, train_rows, dev_rows, model_config, data_hash.hexdigest(), dev_split, tok_fingerprint
    )


def _source(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder rather than a Hub id)."""
    path = Path(name).expanduser()
    local = path.is_dir() or name.startswith(("/", ".", "~")) or name.count("/") > 1  # Hub ids: [org/]name
    return (str(path) if local else name), local


def check_model(ft: FinetuneParams, tokenizer) -> PretrainedConfig:
    """The model's config, after checking (cheaply: no weights are loaded) that it can be trained here."""
    if ft.model == "scratch":
        return scratch_config(ft.scratch, tokenizer)
    name, local = _source(ft.model)
    if local and not Path(name).is_dir():
        raise UserError(f"finetune.model: {ft.model!r} is not a folder")
    try:
        # never the model's own Python: left unset, transformers asks on stdin whether to run it
        config = AutoConfig.from_pretrained(name, local_files_only=not local and hub_offline(), trust_remote_code=False)
    except (OSError, ValueError) as e:
        where = (
            "local folder"
            if local
            else "Hub id" + (" (the Hub is unreachable and it is not in the local cache)" if hub_offline() else "")
        )
        raise UserError(f"finetune.model: cannot load {ft.model!r} as a {where}: {first_line(e)}") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UserError(f"finetune.model: {ft.model!r} is a {config.model_type} model, not a causal language model")
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if context is not None and context < ft.max_length:
        if not _plain_rope(config):
            raise UserError(
                f"finetune.max_length: {ft.max_length} exceeds the context of finetune.model {ft.model!r} "
                f"({context} positions, learned or scaled: only a plain RoPE model can be trained longer)"
            )
        # Rotary positions have no table to outgrow: the model trains at the longer context as it is,
        # and its saved config says the context it was trained for.
        print(f"finetune: {ft.model!r} has {context} positions; trained at {ft.max_length} (RoPE)")
        config.max_position_embeddings = ft.max_length
    if local:
        weights = sorted(Path(name).glob("*.safetensors"))
        if not weights:
            raise UserError(f"finetune.model: {ft.model!r} has no *.safetensors weights (other formats are not loaded)")
        for path in weights:
            try:
                with safe_open(str(path), "pt"):  # reads the header: a truncated or garbled file fails here
                    pass
            except (SafetensorError, OSError) as e:
                raise UserError(f"finetune.model: {path} is corrupt ({first_line(e)})") from None
    return config


def _plain_rope(config: PretrainedConfig) -> bool:
    """Whether the model's positions are rotary without scaling (RoPE as Llama's): no learned table
    (GPT-2's n_positions), no scaling tied to the original context (YaRN, dynamic NTK)."""
    rope = getattr(config, "rope_parameters", None)
    return not hasattr(config, "n_positions") and isinstance(rope, dict) and rope.get("rope_type") == "default"


def scratch_config(s: ScratchModel, tokenizer) -> PretrainedConfig:
    """The config of finetune.scratch: a Llama-style decoder (RoPE, RMSNorm, SwiGLU, tied embeddings)
    or GPT-2's shape, sized for the data's tokenizer."""
    tokens = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if s.architecture == "gpt2":
        return GPT2Config(
            n_layer=s.n_layer,
            n_embd=s.n_embd,
            n_head=s.n_head,
            n_positions=s.n_positions,
            n_inner=s.intermediate_size,
            resid_pdrop=s.dropout,
            embd_pdrop=s.dropout,
            attn_pdrop=s.dropout,
            **tokens,
        )
    # SwiGLU's three matrices at 8/3 the width cost what GPT-2's two at 4x do (LLaMA), rounded to 64.
    intermediate = s.intermediate_size or 64 * round(8 * s.n_embd / 3 / 64)
    return LlamaConfig(
        hidden_size=s.n_embd,
        num_hidden_layers=s.n_layer,
        num_attention_heads=s.n_head,
        num_key_value_heads=s.n_kv_head or s.n_head,
        intermediate_size=intermediate,
        max_position_embeddings=s.n_positions,
        rope_theta=s.rope_theta,
        attention_dropout=s.dropout,
        tie_word_embeddings=True,
        **tokens,
    )


def build_model(
    ft: FinetuneParams, config: PretrainedConfig, tokenizer, control_token_ids: dict[str, int]
) -> torch.nn.Module:
    """The model to train, with embeddings for every token of the data's tokenizer (control tokens, pad),
    and its prompt format and control tokens in its config."""
    if ft.model == "scratch":
        model = AutoModelForCausalLM.from_config(config)
    else:
        name, local = _source(ft.model)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                name,
                config=config,
                use_safetensors=True,
                dtype=torch.float32,
                local_files_only=not local and hub_offline(),
                trust_remote_code=False,
            )
        except (OSError, ValueError, SafetensorError) as e:
            raise UserError(f"finetune.model: cannot load the weights of {ft.model!r}: {first_line(e)}") from None
    if ft.grow_layers is not None:
        model = grown(model, ft.grow_layers)
    old = model.get_input_embeddings().num_embeddings
    added = range(old, len(tokenizer))  # the data's new tokens (empty when it adds none)
    if old != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
        if ft.new_token_init == "spelling" and ft.model != "scratch" and len(added):
            _init_from_spelling(model, tokenizer, added)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.loss_type is None:
        # transformers picks a model's loss by its class name; GPT2LMHeadModel's names none, so the
        # first forward warns "loss_type=None ... unrecognized" and falls back to this same loss.
        model.loss_type = "ForCausalLM"
    # Saved with every checkpoint: `autocoder complete --model DIR` then prompts as windows are built.
    PromptFormat.trained(tokenizer, control_token_ids).save(model.config)
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return with_lora(model, ft.lora, added) if ft.lora is not None else model


def with_lora(model: torch.nn.Module, lora: LoraParams, added: range) -> torch.nn.Module:
    """The model wrapped in LoRA adapters (peft): only the adapters and the added tokens' rows train
    (peft's trainable tokens: the rest of the embedding stays frozen, and a tied output layer follows)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        trainable_token_indices=list(added) or None,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # e.g. target_modules naming no module of this model
        raise UserError(f"finetune.lora: {first_line(e)}") from None


@torch.no_grad()
def _init_from_spelling(model: torch.nn.Module, tokenizer, new_ids: range) -> None:
    """Each new token's embedding row (and output row, when untied) becomes the mean of the rows of the
    old tokens that spell its text: "<python>" starts near "<", "python", ">", which the model knows."""
    rows = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not rows[0]:
        rows.append(output.weight)
    from tokenizers import Tokenizer

    as_text = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    as_text.encode_special_tokens = True  # "<python>" spelled with the old vocabulary, not as itself
    for token_id in new_ids:
        pieces = as_text.encode(tokenizer.convert_ids_to_tokens(token_id), add_special_tokens=False).ids
        pieces = [i for i in pieces if i < new_ids.start]
        if pieces:
            for weight in rows:
                weight[token_id] = weight[pieces].mean(0)


def grown(model: torch.nn.Module, n_layers: int) -> torch.nn.Module:
    """`model` deepened to `n_layers`: new layer j is a copy of layer j * L // n_layers of the L it has,
    and every copy after the first of a layer has its attention and MLP output projections zeroed, so
    it adds nothing to the residual stream: the deeper model computes what `model` did, and training
    grows the copies from there (progressive stacking with zero-initialised residual branches)."""
    config, layers = model.config, getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not all(hasattr(m, "self_attn") and hasattr(m.self_attn, "o_proj") for m in layers):
        raise UserError(f"finetune.grow_layers: {config.model_type} models cannot be grown (Llama-style only)")
    if n_layers < len(layers):
        raise UserError(f"finetune.grow_layers: {n_layers} is fewer than the model's {len(layers)} layers")
    sources = [j * len(layers) // n_layers for j in range(n_layers)]
    deeper = type(model)(type(config).from_dict({**config.to_dict(), "num_hidden_layers": n_layers}))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("model.layers.")}
    for j, i in enumerate(sources):
        prefix = f"model.layers.{i}."
        for key, value in model.state_dict().items():
            if key.startswith(prefix):
                copy = value.clone()
                if j > 0 and sources[j - 1] == i and key.endswith(("o_proj.weight", "down_proj.weight")):
                    copy.zero_()
                state[f"model.layers.{j}.{key[len(prefix) :]}"] = copy
    deeper.load_state_dict(state)
    deeper.generation_config = model.generation_config
    return deeper
