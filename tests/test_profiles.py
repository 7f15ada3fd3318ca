"""Profiles state what they change from params.yaml, and `autocoder profile NAME` writes it there."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from autocoder.params import ParamsError, load_params
from autocoder.profiles import apply_profile, load_profile, names
from helpers import ROOT, VENV_BIN

PROFILES = names(ROOT / "profiles")


def test_every_profile_is_found():
    assert {"seed", "autocoder-base", "base", "base-continued", "base-phase3", "base-phase4", "base-phase5"} <= set(
        PROFILES
    )


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_is_valid_and_states_only_what_it_changes(name):
    params = load_profile(name, ROOT / "params.yaml", ROOT / "profiles")
    assert params.control_tokens() == {"python": "<python>", "java": "<java>"}
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    changes = yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text())

    def same(path, value, base):
        if isinstance(value, dict) and isinstance(base, dict):
            return [p for key, v in value.items() for p in same(f"{path}{key}.", v, base.get(key))]
        return [path.rstrip(".")] if value == base else []

    assert not same("", changes, default), "keys set to params.yaml's own value"


@pytest.fixture
def project(tmp_path):
    shutil.copyfile(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    return tmp_path


def test_the_profile_command_writes_the_profile_into_params_yaml_keeping_its_comments(project):
    before = (project / "params.yaml").read_text()
    done = subprocess.run(
        [VENV_BIN / "autocoder", "profile", "seed"], cwd=project, capture_output=True, text=True, check=True
    )
    assert "params.yaml: profile seed changed" in done.stdout and "finetune.model" in done.stdout
    after = (project / "params.yaml").read_text()
    assert load_params(project / "params.yaml") == load_profile("seed", project / "params.yaml", project / "profiles")
    assert load_params(project / "params.yaml").finetune.model == "distilgpt2"
    kept = [line for line in before.splitlines() if line.lstrip().startswith("#") and "finetune" in line]
    assert kept and all(line in after.splitlines() for line in kept)  # params.yaml's comments stay
    assert "\n\nfinetune:\n" in after and 'extensions: [".py"]' in after  # its layout too
    listed = subprocess.run([VENV_BIN / "autocoder", "profile"], cwd=project, capture_output=True, text=True)
    assert listed.stdout.split() == PROFILES


def test_a_bad_profile_names_itself_and_the_key_and_leaves_params_yaml_alone(project):
    (project / "profiles" / "typo.yaml").write_text("finetune:\n  learning_rat: 0.1\n")
    before = (project / "params.yaml").read_text()
    with pytest.raises(ParamsError, match=r"profiles/typo.yaml \(over .*params.yaml\): finetune.learning_rat: unknown"):
        apply_profile("typo", project / "params.yaml", project / "profiles")
    with pytest.raises(ParamsError, match=r"profile 'nope': no .*nope.yaml \(profiles: autocoder-base, base"):
        apply_profile("nope", project / "params.yaml", project / "profiles")
    assert (project / "params.yaml").read_text() == before
