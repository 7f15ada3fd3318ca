"""Fault tolerance of the pipeline, on tiny projects: `dvc repro` SIGKILLed again and again at random
points of every stage still ends with the outputs of an uninterrupted run, a clean `dvc status`, a
sound DVC cache and no MLflow run left RUNNING; a full disk under an output folder is one clear line
and leaves nothing that a later run would trust; a damaged checkpoint is rejected in one line."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import mlflow
import pytest
import yaml

from helpers import VENV_BIN, kill_processes_in, make_tiny_project, run

pytestmark = pytest.mark.slow

STAGES = ["clone", "segment", "split", "finetune", "evaluate"]
DATA_OUTS = ["data/raw", "data/segments", "data/split"]  # deterministic: byte-identical after any kills
# A resumed finetune ends where an uninterrupted one ends, up to float reassociation: the same
# tolerance as tests/test_finetune.py's resume test.
RESUME_REL_TOL = 1e-4
STAGE_LINE = re.compile(r"Running stage '(\w+)'")


def set_params(project: Path, corpus: Path, **sections) -> None:
    """Point the clone stage at `corpus` and update params' sections."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["clone"]["sources"][0]["path"] = str(corpus)
    for section, values in sections.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# More optimizer steps, a checkpoint every 4 and a log line every step: kills land between checkpoints
# and in the middle of writing one. A cheaper evaluation keeps the test short.
MAX_STEPS, CHECKPOINT_EVERY = 16, 4
FAULT_PARAMS = {"finetune": {"max_steps": MAX_STEPS, "eval_every": 8, "checkpoint_every": CHECKPOINT_EVERY,
                             "log_every": 1},
                "evaluate": {"perplexity_max_tokens": 2000, "latency_repeats": 1, "line_completion_lines": 2,
                             "infill_lines": 2, "line_max_new_tokens": 8}}


@dataclass
class Repro:
    """`dvc repro` in its own process group, its output lines collected with their times."""

    project: Path
    lines: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self):
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = subprocess.Popen(["dvc", "repro"], cwd=self.project, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def time_of(self, pattern: str) -> float | None:
        """When the first output line matching `pattern` came."""
        return next((t for t, line in list(self.lines) if re.search(pattern, line)), None)

    def current_stage(self) -> str | None:
        started = [m[1] for _, line in list(self.lines) if (m := STAGE_LINE.search(line))]
        return started[-1] if started else None

    def past(self, stage: str) -> bool:
        """Whether a stage after `stage` has started."""
        current = self.current_stage()
        return current is not None and STAGES.index(current) > STAGES.index(stage)

    def wait_for(self, pattern: str, stage: str, timeout: float = 600) -> float | None:
        """The time of the first output line matching `pattern`; None as soon as a stage after `stage`
        started or the process ended without such a line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = self.proc.poll() is not None
            if ended:
                self.reader.join()
            found = self.time_of(pattern)
            if found is not None or ended or self.past(stage):
                return found
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n{self.output()}")

    def wait_until(self, moment: float, stage: str) -> None:
        """Until `moment`, or earlier when the process ended or a stage after `stage` started: a kill
        planned late in a stage that ran faster than in the reference then lands at the very start of
        the next stage instead of after it (a stage passed over would never be killed)."""
        while time.monotonic() < moment and self.proc.poll() is None and not self.past(stage):
            time.sleep(0.01)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # dvc and every stage process it started
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.reader.join()

    def finish(self, timeout: float = 600) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"dvc repro did not finish in {timeout} s:\n{self.output()}") from None
        self.reader.join()
        assert self.proc.returncode == 0, self.output()

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)


@dataclass
class KillPoint:
    stage: str
    after: str  # a regex of the output line the delay counts from
    delay: float  # seconds


def start(stage: str) -> str:
    return f"Running stage '{stage}'"


def kill_points(rng: random.Random, reference: Repro) -> list[KillPoint]:
    """11 random points, in pipeline order: each a random delay after an output line, within the time
    that the uninterrupted `reference` run took from that line to the next phase."""
    def span(line: str, until: str | None) -> float:
        end = reference.time_of(until) if until else reference.lines[-1][0]
        return end - reference.time_of(line)

    step_s = span("finetune: step 1/", f"finetune: step {MAX_STEPS}/") / (MAX_STEPS - 1)
    phases = [  # (stage, line, seconds to draw the delay from)
        *[(stage, start(stage), span(start(stage), start(after)))
          for stage, after in zip(STAGES[:3], STAGES[1:4]) for _ in range(2)],
        # imports, creating the MLflow store, accelerate launch, set-up
        ("finetune", start("finetune"), span(start("finetune"), "finetune: step 1/")),
        # the MLflow run exists, no checkpoint yet: the next attempt starts over and must end that run
        ("finetune", f"finetune: step {rng.randint(1, CHECKPOINT_EVERY - 2)}/", step_s),
        # between later checkpoints, or while one is written: the next attempt resumes
        ("finetune", f"finetune: step {rng.randint(CHECKPOINT_EVERY + 1, MAX_STEPS - 1)}/", 2 * step_s),
        # imports, loading, dev perplexity
        ("evaluate", start("evaluate"), span(start("evaluate"), "evaluate: dev perplexity")),
        # line completion, samples, logging to the finetune's MLflow run, registering the model
        ("evaluate", "evaluate: dev perplexity", span("evaluate: dev perplexity", None)),
    ]
    return [KillPoint(stage, line, rng.uniform(0, seconds)) for stage, line, seconds in phases]


def lock_md5s(project: Path) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def check_cache(project: Path) -> int:
    """What `dvc fsck` would do (DVC 3.67 has none): every object in the local cache hashes (DVC's own
    md5) to its name, and every file of every cached output's manifest is there. Returns the count."""
    from dvc_data.hashfile.hash import file_md5

    cache = project / ".dvc/cache/files/md5"
    objects = {p.parent.name + p.name: p for p in cache.glob("*/*")}
    for oid, path in objects.items():
        assert file_md5(str(path)) == oid.removesuffix(".dir"), f"corrupt cache object {path}"
    for path, md5 in lock_md5s(project).items():
        if md5.endswith(".dir"):
            assert md5 in objects, f"{path}: manifest {md5} not in the cache"
            for entry in json.loads(objects[md5].read_text()):
                assert entry["md5"] in objects, f"{path}/{entry['relpath']}: {entry['md5']} not in the cache"
    return len(objects)


def comparable(metrics: dict) -> dict:
    """Finetune metrics without the timings."""
    return {k: v for k, v in metrics.items() if k not in ("train_seconds", "tokens_per_s")}


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    """(reference, faulty): two tiny projects with the same params and the same corpus."""
    root = tmp_path_factory.mktemp("faults")
    reference, faulty = make_tiny_project(root / "reference"), make_tiny_project(root / "faulty")
    for project in (reference, faulty):
        set_params(project, root / "reference/corpus", **FAULT_PARAMS)
    try:
        yield reference, faulty
    finally:
        kill_processes_in(root)


def test_repro_killed_at_random_points_of_every_stage_ends_like_an_uninterrupted_run(projects):
    reference, faulty = projects
    uninterrupted = Repro(reference)
    uninterrupted.finish()
    seed = int(os.environ.get("AUTOCODER_FAULT_SEED", random.SystemRandom().randrange(2**32)))
    print(f"seed {seed} (rerun with AUTOCODER_FAULT_SEED={seed}); uninterrupted run: "
          + ", ".join(f"{stage} at {uninterrupted.time_of(start(stage)) - uninterrupted.lines[0][0]:.1f} s"
                      for stage in STAGES) + f", end at {uninterrupted.lines[-1][0] - uninterrupted.lines[0][0]:.1f} s")
    hits = []
    for point in kill_points(random.Random(seed), uninterrupted):
        attempt = Repro(faulty)
        try:
            anchor = attempt.wait_for(point.after, point.stage)
            if anchor is not None:  # else the attempt got past the point: kill it now
                attempt.wait_until(anchor + point.delay, point.stage)
        finally:
            attempt.kill()
        if attempt.proc.returncode == 0:
            print(f"planned kill in {point.stage} came too late: the pipeline finished")
            continue
        # Also the first sign of a lock that outlived its killed dvc: DVC's own (.dvc/tmp/lock: fcntl;
        # .dvc/tmp/rwlock: pids it checks) must not stop the next attempt.
        assert attempt.proc.returncode == -signal.SIGKILL, f"attempt failed on its own:\n{attempt.output()}"
        hit = attempt.current_stage()
        hits.append(hit)
        print(f"killed in {hit} (planned: {point.stage}, {point.delay:.2f} s after /{point.after}/); "
              f"last line: {attempt.lines[-1][1][:120] if attempt.lines else ''}")
    Repro(faulty).finish()  # the rerun after the last kill completes

    assert len(hits) >= 10 and set(hits) == set(STAGES), hits
    assert "up to date" in run(["dvc", "status"], faulty).stdout
    print(f"{check_cache(faulty)} cache objects verified")
    expected, got = lock_md5s(reference), lock_md5s(faulty)
    assert {p: got[p] for p in DATA_OUTS} == {p: expected[p] for p in DATA_OUTS}

    def read(project, path):
        return json.loads((project / path).read_text())

    want, have = comparable(read(reference, "metrics/finetune.json")), comparable(read(faulty, "metrics/finetune.json"))
    assert have == pytest.approx(want, rel=RESUME_REL_TOL)
    want, have = read(reference, "metrics/metrics.json"), read(faulty, "metrics/metrics.json")
    assert have["dev_tokens"] == want["dev_tokens"]
    assert have["dev_perplexity"] == pytest.approx(want["dev_perplexity"], rel=RESUME_REL_TOL)
    assert [r.split(",")[0] for r in (faulty / "plots/finetune.csv").read_text().splitlines()] == \
           [r.split(",")[0] for r in (reference / "plots/finetune.csv").read_text().splitlines()]

    # Killed runs do not stay RUNNING: the next attempt marks them KILLED, or a resumed one finishes.
    client = mlflow.MlflowClient(f"sqlite:///{faulty}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("autocoder").experiment_id])
    statuses = {r.info.run_id: r.info.status for r in runs}
    print(f"MLflow runs: {sorted(statuses.values())}")
    assert "RUNNING" not in statuses.values()
    assert "KILLED" in statuses.values()  # the run of the attempt killed before its first checkpoint
    assert statuses[read(faulty, "models/finetune/mlflow_run.json")["run_id"]] == "FINISHED"
    # Nothing half-written left beside the outputs (a killed stage's temporary folders are its own).
    assert not [p for p in faulty.glob("**/.*.tmp*") if ".dvc" not in p.parts and ".git" not in p.parts]


# --- A full disk ---


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (needs root); always unmounted."""
    path.mkdir(parents=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


@pytest.fixture(scope="module")
def split_project(tmp_path_factory) -> Iterator[Path]:
    """A tiny project with data/raw, data/segments and data/split built."""
    project = make_tiny_project(tmp_path_factory.mktemp("full-disk"))
    try:
        run(["dvc", "repro", "split"], project)
        yield project
    finally:
        kill_processes_in(project)


def run_stage(project: Path, stage: str, **sections) -> subprocess.CompletedProcess:
    """`autocoder <stage>` with params' sections updated (in a params file of its own)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    path = project / f"params-{stage}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return run(["autocoder", "--params", str(path), stage], project, check=False)


def assert_one_line_disk_full(proc: subprocess.CompletedProcess, stage: str, folder: Path) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"autocoder {stage}: {folder}") and "no space left on device" in last, proc.stderr


def test_full_disk_under_segments_is_one_line_and_leaves_no_output(split_project, tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "segments"
        proc = run_stage(split_project, "segment", segment={"out_dir": str(out)})
        assert_one_line_disk_full(proc, "segment", out)
        assert list(disk.iterdir()) == []  # neither the output nor its temporary folder


def test_full_disk_under_finetune_checkpoints_is_one_line_and_leaves_nothing_to_resume(split_project, tmp_path):
    # Room for the best model (~6.5 MB) but not for a checkpoint (model, optimizer state: ~20 MB).
    with small_disk(tmp_path / "disk", "12m") as disk:
        ckpt = disk / "checkpoints"
        proc = run_stage(split_project, "finetune", finetune={"checkpoint_dir": str(ckpt),
                                                              "out_dir": str(disk / "finetune")})
        assert_one_line_disk_full(proc, "finetune", ckpt / "step-00000004")
        assert sorted(p.name for p in ckpt.iterdir()) == ["best-step-00000004"]  # no checkpoint to resume
        assert not (disk / "finetune").exists()
    client = mlflow.MlflowClient(f"sqlite:///{split_project}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("autocoder").experiment_id])
    assert runs and "RUNNING" not in {r.info.status for r in runs}


def test_full_disk_under_finetune_output_then_a_damaged_checkpoint(split_project, tmp_path):
    ckpt = tmp_path / "checkpoints"
    with small_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "finetune"
        proc = run_stage(split_project, "finetune", finetune={"checkpoint_dir": str(ckpt), "out_dir": str(out)})
        assert_one_line_disk_full(proc, "finetune", out)
        assert list(disk.iterdir()) == []
    # The checkpoints survived the failure (a rerun with room resumes from them), but one that a crash
    # truncated after it was complete must be refused in one line, not crash the resumed run.
    [saved] = ckpt.glob("step-*")
    optimizer = saved / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    proc = run_stage(split_project, "finetune", finetune={"checkpoint_dir": str(ckpt),
                                                          "out_dir": str(tmp_path / "finetune")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"autocoder finetune: finetune.checkpoint_dir: cannot resume from {saved}"), proc.stderr
    assert not (tmp_path / "finetune").exists()
