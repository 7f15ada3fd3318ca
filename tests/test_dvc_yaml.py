"""dvc.yaml says what each stage depends on, and DVC reruns a stage exactly when one of those changed.
These read the code and the params schema to check that the deps list every project file a stage
runs, and that the params list what changes a stage's outputs and nothing else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from autocoder import outputs
from autocoder.params import UNTRACKED_KEYS, Params
from helpers import ROOT

SRC = ROOT / "src"
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]


def module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, *, top_level_only: bool) -> set[str]:
    """The `autocoder` modules `path` imports: all of them, function-local ones too (a function of the
    module may run), or only the module-level ones (a package only initialised as a submodule's parent)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(SRC).with_suffix("").parts) if SRC in path.parents else ""
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]  # what a relative import is relative to
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == "autocoder"}


def stage_files(stage: str) -> set[Path]:
    """Every project file that running `stage` can execute: its script, the modules it imports, and
    theirs, with the package __init__.py files that importing a submodule runs."""
    starts = [ROOT / "stages" / f"{stage}.py", ROOT / "stages" / "_env.py"]
    seen: dict[Path, bool] = {}  # file -> followed in full
    todo = [(path, False) for path in starts]
    while todo:
        path, top_level_only = todo.pop()
        if path in seen and (seen[path] or top_level_only):
            continue
        seen[path] = not top_level_only
        for name in imported_modules(path, top_level_only=top_level_only):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                found = module_file(".".join(parts[:i]))
                if found is not None:
                    todo.append((found, i < len(parts) and found.name == "__init__.py"))
    return set(seen)


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == ROOT / dep or (ROOT / dep) in path.parents for dep in deps)


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_list_every_project_file_the_stage_runs(stage):
    files = stage_files(stage)
    assert ROOT / "stages" / f"{stage}.py" in files and len(files) > 3  # the walk found the imports
    missing = sorted(str(path.relative_to(ROOT)) for path in files if not covered(path, STAGES[stage]["deps"]))
    assert not missing, f"dvc.yaml: stage {stage} runs these files but does not list them in its deps: {missing}"


# project files a stage reads rather than imports: data, and code MLflow logs with the model
READ_NOT_RUN = {"src/autocoder/data", "src/autocoder/serving_model.py"}


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_list_no_code_the_stage_does_not_run(stage):
    """A dep the stage never runs would rerun it for nothing: a stale dep after a refactor fails here."""
    files = stage_files(stage)
    code = [dep.split("#")[0].strip() for dep in STAGES[stage]["deps"] if dep.startswith(("src/", "stages/"))]
    unused = [dep for dep in code if dep not in READ_NOT_RUN and not any(covered(path, [dep]) for path in files)]
    assert not unused, f"dvc.yaml: stage {stage} lists deps it never runs: {unused}"


def test_deps_walk_sees_function_local_imports():
    """The walk is not vacuous: a stage whose code imports a module inside a function depends on it."""
    assert ROOT / "src/autocoder/train/loop.py" in stage_files("finetune")  # imported inside train.run
    assert not [path for path in stage_files("evaluate") if path.parent.name == "train"]  # evaluate never trains


@pytest.mark.parametrize("stage", list(STAGES))
def test_outputs_are_where_the_code_and_the_params_put_them(stage):
    """A stage's outs are its params section's out_dir (templated), its metrics and plots the files
    autocoder.outputs names: one home each, so that DVC tracks what the code writes."""
    spec = STAGES[stage]
    if stage in Params.model_fields and "out_dir" in _section_keys(stage):
        assert spec["outs"] == [f"${{{stage}.out_dir}}"]
    metrics, plots = outputs.BY_STAGE.get(stage, ([], []))
    assert [next(iter(m)) for m in spec.get("metrics", [])] == [str(path) for path in metrics]
    assert [next(iter(p)) for p in spec.get("plots", [])] == [str(path) for path in plots]


def _section_keys(section: str) -> list[str]:
    return list(Params.model_fields[section].annotation.model_fields)


@pytest.mark.parametrize("stage", list(STAGES))
def test_params_are_what_changes_the_outputs(stage):
    """A stage lists its own section whole, or key by key less UNTRACKED_KEYS (logging, checkpoint
    timing, worker counts, out_dir): changing one of those reruns nothing. MLflow's store and
    experiment say where runs are logged, not what the stage writes."""
    listed = [entry if isinstance(entry, str) else next(iter(entry)) for entry in STAGES[stage].get("params", [])]
    own = [entry for entry in listed if entry.split(".")[0] == stage]
    untracked = UNTRACKED_KEYS.get(stage, set())
    if untracked:
        expected = [f"{stage}.{key}" for key in _section_keys(stage) if key not in untracked]
        assert own == expected, f"dvc.yaml: stage {stage}'s params should be {expected}"
    elif stage in Params.model_fields:
        assert own == [stage]
    assert "mlflow" not in {entry.split(".")[0] for entry in listed}


def test_untracked_keys_are_keys_of_the_schema():
    for section, keys in UNTRACKED_KEYS.items():
        assert keys <= set(_section_keys(section)), section
