"""The model registry: every evaluated model becomes a version of `evaluate.registered_model_name`,
and the alias `champion` names the best one.

A new version takes the alias only when its dev bits per byte are lower than the champion's over the
same dev files (a hash of the scored files' contents). Bits per byte (the summed negative
log-likelihood over the files' bytes) compare across tokenizers, where perplexity per token does not:
a 49k-token pretrained vocabulary and an 8k-token code BPE cut the same file into different numbers of
tokens. The version is tagged with its measurement (perplexity and tokenizer too, to read in `mlflow
ui`) and `champion_decision` (the reason, in words); no champion yet -> it becomes the champion.

Two evaluations finishing at once must not both read "champion = v3", both decide, and leave the
alias to whichever writes last. Registering the version, re-reading the champion and its tags, and
moving the alias happen under one exclusive lock (filelock, an flock on Unix): a file next to the SQLite database
(`mlruns.db.lock`) or inside a file store; for a tracking server, a file in the temp folder keyed by
its URI, which serialises the evaluations of this machine only.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException

from autocoder.champion import CHAMPION

DECISION_TAG = "champion_decision"
# Scores besides the champion rule's (tagged on each version, higher is better): a version worse than
# the champion in one of them gets REGRESSION_TAG, saying which; the rule itself stays dev bits per byte.
REGRESSION_TAG = "quality_regression"


@dataclass(frozen=True)
class Measurement:
    dev_bits_per_byte: float  # the rule
    dev_files: str  # hash of the scored dev files' contents: bits per byte compare only over the same files
    dev_perplexity: float  # per token of this model's tokenizer: shown, not compared
    tokenizer_fingerprint: str

    def tags(self) -> dict[str, str]:
        return {
            "dev_bits_per_byte": repr(self.dev_bits_per_byte),
            "dev_files": self.dev_files,
            "dev_perplexity": repr(self.dev_perplexity),
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Measurement | None:
        try:
            return cls(
                float(tags["dev_bits_per_byte"]),
                tags["dev_files"],
                float(tags["dev_perplexity"]),
                tags["tokenizer_fingerprint"],
            )
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class Decision:
    version: str
    promoted: bool
    reason: str


def decide(new: Measurement, current: tuple[str, Measurement | None] | None) -> tuple[bool, str]:
    """(take the alias?, why), given the current champion's (version, measurement) or None."""
    if current is None:
        return True, "no champion yet"
    champion_version, champion = current
    old = f"champion v{champion_version}"
    if champion is None:
        return False, f"not compared: {old} has no complete measurement tags"
    if champion.dev_files != new.dev_files:
        return False, f"not compared: dev files {new.dev_files[:12]} differ from {old}'s {champion.dev_files[:12]}"
    new_bpb, old_bpb = new.dev_bits_per_byte, champion.dev_bits_per_byte
    if new_bpb < old_bpb:
        return True, f"dev bits/byte {new_bpb:.6g} < {old}'s {old_bpb:.6g} over the same dev files"
    return False, f"dev bits/byte {new_bpb:.6g} >= {old}'s {old_bpb:.6g} over the same dev files"


def lock_path(registry_uri: str) -> Path:
    """Where the registry's lock file lives (see the module docstring)."""
    if registry_uri.startswith("sqlite:///"):
        return Path(registry_uri[len("sqlite:///") :] + ".lock")
    url = urlparse(registry_uri)
    if url.scheme in ("", "file"):
        return Path(url.path) / ".registry.lock"
    return (
        Path(tempfile.gettempdir())
        / f"autocoder-registry-{hashlib.sha256(registry_uri.encode()).hexdigest()[:16]}.lock"
    )


@contextmanager
def registry_lock(registry_uri: str) -> Iterator[None]:
    path = lock_path(registry_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):  # an OS lock (flock): released also when the process dies
        yield


def champion(name: str) -> tuple[str, Measurement | None] | None:
    """(version, its measurement) of the current champion, or None."""
    try:
        version = mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no such model / alias
            return None
        raise  # an unreachable store must not read as "no champion"
    return str(version.version), Measurement.from_tags(version.tags)


def regressions(scores: dict[str, float], champion_version: str, champion_tags: dict[str, str]) -> str | None:
    """Which of `scores` are below the champion's own (its version tags), in one line; None if none."""
    worse = []
    for key, value in sorted(scores.items()):
        try:
            theirs = float(champion_tags[key])
        except (KeyError, ValueError):
            continue  # the champion was not measured so: nothing to compare
        if value < theirs:
            worse.append(f"{key} {value:.4g} < champion v{champion_version}'s {theirs:.4g}")
    return "; ".join(worse) or None


def register(model_uri: str, name: str, measured: Measurement, scores: dict[str, float] | None = None) -> Decision:
    """Register `model_uri` as a new version of `name`, tagged with `measured` and `scores`; move the
    champion alias to it if it is the better model (see `decide`); tag it with REGRESSION_TAG if one
    of `scores` is below the champion's."""
    client = mlflow.MlflowClient()
    scores = scores or {}
    with registry_lock(mlflow.get_registry_uri()):
        tags = measured.tags() | {key: repr(value) for key, value in scores.items()}
        version = str(mlflow.register_model(model_uri, name, tags=tags).version)
        # Read under the lock: no other evaluation moves the alias between this read and the move.
        current = champion(name)
        if current is not None and scores:
            worse = regressions(scores, current[0], client.get_model_version(name, current[0]).tags)
            if worse:
                client.set_model_version_tag(name, version, REGRESSION_TAG, worse)
                print(f"registry: {name} v{version} regresses: {worse}")
        promoted, reason = decide(measured, current)
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, DECISION_TAG, reason)
    print(f"registry: {name} v{version} {'is the new champion' if promoted else 'stays a challenger'}: {reason}")
    return Decision(version, promoted, reason)
