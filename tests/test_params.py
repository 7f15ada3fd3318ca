"""The params schema: bad params fail before any work, naming the key."""

import pytest
import yaml

from autocoder.params import ParamsError, load_params
from helpers import ROOT, profile


def _write(tmp_path, mutate):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_committed_params_are_valid():
    """(Every profile over them: tests/test_profiles.py.)"""
    assert load_params(ROOT / "params.yaml").control_tokens() == {"python": "<python>", "java": "<java>"}
    seed = profile("seed")  # the seed's windows
    assert seed.segment.segment_len == 254 and seed.segment.stride == 10


def test_base_profile_never_trains_on_the_defaults_dev_files():
    """A file is dev by a seeded hash of its content against dev_ratio: with the same seed and a dev
    ratio at least the default's, every default dev file is a base dev file."""
    default, base = load_params(ROOT / "params.yaml"), profile("base")
    assert base.split.seed == default.split.seed and base.split.dev_ratio >= default.split.dev_ratio


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda p: p["segment"].update(strid=3), "segment.strid: unknown key"),
        (lambda p: p["segment"].update(stride=0), "segment.stride"),
        (lambda p: p["segment"].update(stride="ten"), "segment.stride"),
        (lambda p: p["segment"].update(segment_len=1000), "segment.segment_len"),
        (lambda p: p["finetune"].update(model="scratch", max_length=4096), "finetune.max_length"),
        (
            lambda p: (p["segment"].update(tokenizer="learn"), p["finetune"].update(model="distilgpt2")),
            "segment.tokenizer: 'learn'",
        ),
        (lambda p: p["finetune"]["scratch"].update(architecture="mamba"), "finetune.scratch.architecture"),
        (lambda p: p["finetune"].update(fim_rate=1.5), "finetune.fim_rate"),
        (lambda p: p["split"].update(dev_ratio=0.6, test_ratio=0.5), "split"),
        (lambda p: p["clone"]["sources"][0].update(languages=["cobol"]), "cobol"),
        (lambda p: p["clone"]["sources"][0].update(git="https://example.org/x.git"), "exactly one of"),
        (lambda p: p.update(finetun={}), "finetun: unknown key"),
        (
            lambda p: p["languages"].update(c={"extensions": [".c", ".h"]}, cpp={"extensions": [".cpp", ".h"]}),
            "languages.cpp.extensions: '.h' is also an extension of c",
        ),
    ],
)
def test_bad_params_name_the_key(tmp_path, mutate, key):
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, mutate))
    assert key in str(err.value)
    assert str(tmp_path / "params.yaml") in str(err.value)


def test_a_path_s_language_is_its_longest_matching_extension(tmp_path):
    params = load_params(
        _write(tmp_path, lambda p: p["languages"].update(ts={"extensions": [".ts"]}, dts={"extensions": [".d.ts"]}))
    )
    assert params.language_of("src/types.d.ts") == "dts" and params.language_of("src/app.ts") == "ts"
    assert params.language_of("src/types.d.ts", among=["python", "ts"]) == "ts"  # a source without dts
    assert params.language_of("README.md") is None and params.language_of("a/b.py") == "python"


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def _leaves(tree: dict, prefix: str = "") -> dict:
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "prompts":
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def test_schema_defaults_are_the_default_params_yaml():
    """One source for each default: a key left out of a params file means what params.yaml says."""
    from autocoder.params import Params

    committed = load_params(ROOT / "params.yaml")
    defaults = Params(languages=committed.languages, clone=committed.clone)
    differ = {
        key: (value, _leaves(committed.model_dump())[key])
        for key, value in _leaves(defaults.model_dump()).items()
        if key != "evaluate.prompts" and value != _leaves(committed.model_dump())[key]
    }
    assert differ == {}
