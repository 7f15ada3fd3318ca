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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
import voluptuous
import yaml

from helpers import VENV_BIN, kill_processes_in, make_tiny_project, run

pytestmark = pytest.mark.e2e

STAGES = ["clone", "segment", "split", "finetune", "evaluate"]  # the stages killed
PIPELINE = ["clone", "pretrained", "segment", "split", "finetune", "evaluate"]  # as dvc repro runs them
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
FAULT_PARAMS = {
    "finetune": {"max_steps": MAX_STEPS, "eval_every": 8, "checkpoint_every": CHECKPOINT_EVERY, "log_every": 1},
    "evaluate": {
        "perplexity_max_bytes": 8000,
        "latency_repeats": 1,
        "line_completion_lines": 2,
        "infill_lines": 2,
        "line_max_new_tokens": 8,
    },
}


@dataclass
class KillPoint:
    """Where a kill lands inside `stage`, from that stage's own progress, not from the clock: `delay`
    seconds after the first line matching `anchor` that the stage's run prints (at or after its
    "Running stage" line), and at the latest as soon as the first later line matching `bound` comes,
    a line still inside the stage. However fast or slow the machine, the kill lands in `stage`."""

    stage: str
    anchor: str  # a regex of the line the delay counts from
    bound: str  # a regex of a later line of the same stage: the kill comes no later than it
    delay: float  # seconds


@dataclass
class Repro:
    """`dvc repro` in its own process group, its output lines collected with their times; with a
    kill point, SIGKILLed there (see `kill_at_point`)."""

    project: Path
    point: KillPoint | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self):
        self._changed = threading.Condition()
        self._in_stage = self._killed = False
        self.anchored: float | None = None  # when the point's anchor line came
        self.bounded = False  # whether the point's bound line came (and killed the run)
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = subprocess.Popen(
            ["dvc", "repro"],
            cwd=self.project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self._changed:
                self.lines.append((time.monotonic(), line))
                if self.point is not None:
                    self._follow(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _follow(self, line: str) -> None:
        """The point's progress on one more line; the bound kills here, on the line's arrival, with no
        polling delay in between (the next stage starts within a fraction of a second of it)."""
        point, stage = self.point, STAGE_LINE.search(line)
        if stage:
            self._in_stage = stage[1] == point.stage
            if not self._in_stage and self.anchored is not None:
                self._kill()  # too late already: the assertion on the stage hit says so
        if not self._in_stage:
            return
        if self.anchored is None:
            if re.search(point.anchor, line):
                self.anchored = time.monotonic()
        elif re.search(point.bound, line):
            self.bounded = True
            self._kill()

    def _kill(self) -> None:
        # Once, and only before the process is reaped: until then its process group id is its own.
        if not self._killed and self.proc.poll() is None:
            self._killed = True
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # dvc and every stage process it started
            except ProcessLookupError:
                pass

    def time_of(self, pattern: str) -> float | None:
        """When the first output line matching `pattern` came."""
        return next((t for t, line in list(self.lines) if re.search(pattern, line)), None)

    def current_stage(self) -> str | None:
        started = [m[1] for _, line in list(self.lines) if (m := STAGE_LINE.search(line))]
        return started[-1] if started else None

    def kill_at_point(self, timeout: float = 600) -> None:
        """SIGKILL the run at its kill point: `delay` after the anchor line, or on the bound line if that
        comes first. If the run ends, or a later stage starts, before the anchor came, it is killed
        there (and the test fails on the stage that was hit: a planned kill never moves to another)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._killed:
                now = time.monotonic()
                if self.anchored is not None and now >= self.anchored + self.point.delay:
                    break
                if self.proc.poll() is not None or (self.anchored is None and self._passed()):
                    break
                if now >= deadline:
                    stuck = self.processes()
                    self._kill()
                    raise AssertionError(
                        f"no line /{self.point.bound if self.anchored else self.point.anchor}/ "
                        f"of {self.point.stage} in {timeout} s:\n{self.output()}\n{stuck}"
                    )
                wait = 0.05 if self.anchored is None else self.anchored + self.point.delay - now
                self._changed.wait(min(wait, 0.05))
            self._kill()
        self.proc.wait()
        self.reader.join()

    def processes(self) -> str:
        """The run's processes, what each is doing (state, kernel wait channel): for a run that hangs."""
        import psutil

        rows = []
        for proc in psutil.process_iter(["pid", "ppid", "status", "cmdline"]):
            try:
                if os.getpgid(proc.pid) != self.proc.pid:
                    continue
                wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
            except (OSError, psutil.Error):
                continue
            rows.append(
                f"{proc.info['pid']} (parent {proc.info['ppid']}) {proc.info['status']} in {wchan}: "
                f"{' '.join(proc.info['cmdline'] or [])[:150]}"
            )
        return "processes:\n" + "\n".join(rows)

    def _passed(self) -> bool:
        """Whether a stage after the point's stage has started."""
        current = self.current_stage()
        return current is not None and PIPELINE.index(current) > PIPELINE.index(self.point.stage)

    def kill(self) -> None:
        with self._changed:
            self._kill()
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


def start(stage: str) -> str:
    return f"Running stage '{stage}'"


LOCK_LINE = r"(Generating|Updating) lock file"  # DVC, once a stage's outputs are hashed and cached
SUMMARY = {"clone": r"^clone: ", "segment": r"^segment: kept ", "split": r"^split: "}  # a data stage's last line


def kill_points(rng: random.Random, reference: Repro) -> list[KillPoint]:
    """11 random points, in pipeline order, each between two lines of one stage: a random delay after
    the first, within the time the uninterrupted `reference` run took between the two (how far into
    the phase the kill lands on this machine), and never later than the second line."""

    def point(stage: str, anchor: str, bound: str) -> KillPoint:
        begin = reference.time_of(start(stage))
        at = next(t for t, line in reference.lines if t >= begin and re.search(anchor, line))
        until = next(t for t, line in reference.lines if t > at and re.search(bound, line))
        return KillPoint(stage, anchor, bound, rng.uniform(0, until - at))

    first_step, later_step = rng.randint(1, CHECKPOINT_EVERY - 2), rng.randint(CHECKPOINT_EVERY + 1, MAX_STEPS - 1)
    return [
        *[
            kill
            for stage in STAGES[:3]
            for kill in (
                # python's start-up, imports, the stage's work: its output is rebuilt from scratch
                point(stage, start(stage), SUMMARY[stage]),
                # the stage's work, or DVC hashing its output into the cache, writing the run cache and the
                # lock: the last kill of the stage, for the next attempt may find it done (or run-cached)
                point(stage, rng.choice([start(stage), SUMMARY[stage]]), LOCK_LINE),
            )
        ],
        # imports, creating the MLflow store, accelerate launch, set-up
        point("finetune", start("finetune"), "finetune: step 1/"),
        # the MLflow run exists, no checkpoint yet: the next attempt starts over and must end that run
        point("finetune", f"finetune: step {first_step}/", f"finetune: step {first_step + 1}/"),
        # between later checkpoints, or while one is written: the next attempt resumes
        point("finetune", f"finetune: step {later_step}/", f"finetune: step {later_step + 1}/"),
        # imports, loading, dev perplexity
        point("evaluate", start("evaluate"), "evaluate: dev perplexity"),
        # line completion, samples, logging to the finetune's MLflow run, registering the model, the lock
        point("evaluate", "evaluate: dev perplexity", LOCK_LINE),
    ]


def lock_is_sound(project: Path) -> bool:
    """Whether dvc.lock (if any) is one DVC accepts: whole YAML that its lock-file schema validates."""
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA

    lock = project / "dvc.lock"
    if not lock.exists():
        return True
    try:
        COMPILED_LOCKFILE_SCHEMA(yaml.safe_load(lock.read_text()))
    except (yaml.YAMLError, voluptuous.Invalid):  # either way DVC refuses the file
        return False
    return True


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
    print(
        f"seed {seed} (rerun with AUTOCODER_FAULT_SEED={seed}); uninterrupted run: "
        + ", ".join(
            f"{stage} at {uninterrupted.time_of(start(stage)) - uninterrupted.lines[0][0]:.1f} s" for stage in STAGES
        )
        + f", end at {uninterrupted.lines[-1][0] - uninterrupted.lines[0][0]:.1f} s"
    )
    hits = []
    for point in kill_points(random.Random(seed), uninterrupted):
        attempt = Repro(faulty, point)
        try:
            attempt.kill_at_point()
        finally:
            attempt.kill()
        assert attempt.anchored is not None, (
            f"seed {seed}: the attempt left {point.stage} without a line /{point.anchor}/:\n{attempt.output()}"
        )
        # Also the first sign of a lock that outlived its killed dvc: DVC's own (.dvc/tmp/lock: fcntl;
        # .dvc/tmp/rwlock: pids it checks) must not stop the next attempt.
        assert attempt.proc.returncode == -signal.SIGKILL, f"attempt failed on its own:\n{attempt.output()}"
        hit = attempt.current_stage()
        hits.append(hit)
        when = "on /" + point.bound + "/" if attempt.bounded else f"{point.delay:.2f} s after /{point.anchor}/"
        print(
            f"killed in {hit} (planned: {point.stage}, {when}); "
            f"last line: {attempt.lines[-1][1][:120] if attempt.lines else ''}"
        )
        assert hit == point.stage, (
            f"seed {seed}: a kill planned in {point.stage} after /{point.anchor}/ landed in {hit}:\n{attempt.output()}"
        )
        if not lock_is_sound(faulty):
            # DVC rewrites dvc.lock in place: a kill within the milliseconds of that write truncates
            # it, and no stage code runs then. The README's recovery: delete it, rerun; the run cache
            # restores every stage that had finished.
            assert re.search(LOCK_LINE, attempt.lines[-1][1]), (
                f"seed {seed}: dvc.lock damaged by a kill outside DVC's lock write:\n{attempt.output()}"
            )
            print("dvc.lock damaged by the kill during its write: deleted, as the README says")
            (faulty / "dvc.lock").unlink()
    Repro(faulty).finish()  # the rerun after the last kill completes

    assert len(hits) == 11 and set(hits) == set(STAGES), hits
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
    assert [r.split(",")[0] for r in (faulty / "plots/finetune.csv").read_text().splitlines()] == [
        r.split(",")[0] for r in (reference / "plots/finetune.csv").read_text().splitlines()
    ]

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

    # The README's recovery from a dvc.lock truncated by a kill during DVC's write of it, on demand
    # (the random kills reach that write only now and then): every stage comes back from the run
    # cache, none runs again.
    (faulty / "dvc.lock").write_text("")
    refused = Repro(faulty)
    refused.proc.wait(120)
    refused.reader.join()
    assert refused.proc.returncode != 0 and "dvc.lock' validation failed" in refused.output()
    (faulty / "dvc.lock").unlink()
    restored = Repro(faulty)
    restored.finish()
    assert re.findall(r"Stage '(\w+)' is cached - skipping run", restored.output()) == PIPELINE, restored.output()
    assert lock_md5s(faulty) == got


# --- A full disk ---


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (needs root); always unmounted."""
    path.mkdir(parents=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
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
        proc = run_stage(
            split_project, "finetune", finetune={"checkpoint_dir": str(ckpt), "out_dir": str(disk / "finetune")}
        )
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
    proc = run_stage(
        split_project, "finetune", finetune={"checkpoint_dir": str(ckpt), "out_dir": str(tmp_path / "finetune")}
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"autocoder finetune: finetune.checkpoint_dir: cannot resume from {saved}")
    ), proc.stderr
    assert not (tmp_path / "finetune").exists()
