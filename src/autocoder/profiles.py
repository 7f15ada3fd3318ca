"""Profiles: setups that differ from params.yaml in a few keys, one file each (profiles/NAME.yaml).

A profile states only what it changes. Its mappings merge into params.yaml's key by key; anything
else (a value, a list, null) replaces params.yaml's value. A profile cannot remove a key. The result
is validated by the params schema before anything is written, with errors naming the profile.

`autocoder profile NAME` writes params.yaml with the profile's changes and keeps its comments, so
`git diff params.yaml` and `dvc params diff` show what the profile changed. `dvc repro` or
`dvc exp run` then runs it; `git checkout params.yaml` goes back. A profile is relative to the
params.yaml committed with it: a later change to a default carries over to every profile that does
not set that key.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from autocoder.atomic import write_text
from autocoder.params import DEFAULT_PARAMS, Params, ParamsError, format_error, read_yaml_mapping

PROFILES_DIR = Path("profiles")


def names(folder: Path = PROFILES_DIR) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.yaml"))


def profile_file(name: str, folder: Path = PROFILES_DIR) -> Path:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise ParamsError(f"profile {name!r}: no {path} (profiles: {', '.join(names(folder)) or 'none'})")
    return path


def merge(base, changes):
    """`base` with `changes` merged in (the module docstring): mappings key by key, in place where
    `base` is a mapping (so that a round-trip YAML mapping keeps its comments)."""
    if not isinstance(changes, dict) or not isinstance(base, dict):
        return changes
    for key, value in changes.items():
        base[key] = merge(base.get(key), value)
    return base


def load_profile(name: str, params_file: Path = DEFAULT_PARAMS, folder: Path = PROFILES_DIR) -> Params:
    """The params of a profile: params_file with its changes, validated."""
    path = profile_file(name, folder)
    merged = merge(read_yaml_mapping(params_file), read_yaml_mapping(path))
    try:
        return Params.model_validate(merged)
    except ValidationError as e:
        raise ParamsError(format_error(e, Path(f"{path} (over {params_file})"))) from None


def apply_profile(name: str, params_file: Path = DEFAULT_PARAMS, folder: Path = PROFILES_DIR) -> list[str]:
    """Write the profile's changes into params_file, its comments kept; returns the changed keys."""
    load_profile(name, params_file, folder)  # every error before params_file is touched
    before = read_yaml_mapping(params_file)
    round_trip = _round_trip_yaml()
    document = round_trip.load(params_file.read_text())
    merge(document, _flow_scalar_lists(read_yaml_mapping(profile_file(name, folder))))
    out = io.StringIO()
    round_trip.dump(document, out)
    # a replaced value takes the blank line after it along: sections stay apart
    text = re.sub(r"(?m)^(?!$)(.*)\n(?=[A-Za-z_])", r"\1\n\n", out.getvalue())
    write_text(params_file, text)
    return _changed(before, yaml.safe_load(text))


def _round_trip_yaml():
    """ruamel.yaml (DVC's own YAML library) as params.yaml is written: a round trip keeps its comments,
    quotes, list indentation and `null`s."""
    from ruamel.yaml import YAML

    round_trip = YAML()
    round_trip.preserve_quotes = True
    round_trip.width = 4096  # long lines stay as they are
    round_trip.indent(mapping=2, sequence=4, offset=2)
    round_trip.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return round_trip


def _flow_scalar_lists(value):
    """Lists of plain values as `[a, b]`, the others in block style, as params.yaml writes them."""
    from ruamel.yaml.comments import CommentedSeq

    if isinstance(value, dict):
        return {key: _flow_scalar_lists(item) for key, item in value.items()}
    if isinstance(value, list):
        seq = CommentedSeq(_flow_scalar_lists(item) for item in value)
        if not any(isinstance(item, (dict, list)) for item in value):
            seq.fa.set_flow_style()
        return seq
    return value


def _changed(before, after, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = list(before) + [key for key in after if key not in before]
        return [k for key in keys for k in _changed(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [prefix.rstrip(".")]
