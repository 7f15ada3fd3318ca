"""The clone stage with real git (file:// repositories made here), real directories and archives."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from autocoder import sources
from autocoder.errors import UserError
from autocoder.params import Params
from helpers import ROOT, profile

LANGUAGES = {"python": {"extensions": [".py"]}, "java": {"extensions": [".java"]}}
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_AUTHOR_DATE": "2020-06-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.org",
    "GIT_COMMITTER_DATE": "2020-06-01T00:00:00Z",
}
TREE = {
    "LICENSE": "MIT License\n",
    "Main.java": "public class Main {\n    public static void main(String[] args) {}\n}\n",
    "algos/sort.py": "def sort(xs):\n    return sorted(xs)\n",
    "algos/Sort.java": "class Sort {}\n",
    "algos/nested/deep/search.py": "def search(xs, x):\n    return x in xs\n",
    "tool.rb": "puts 'another language'\n",
}
TAKEN = {"LICENSE", "Main.java", "algos/sort.py", "algos/Sort.java", "algos/nested/deep/search.py"}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env={**os.environ, **GIT_IDENTITY}
    )
    return result.stdout.strip()


def write_tree(root: Path, files: dict[str, str] = TREE) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    # A symlink loop (walking through it would never end) and a link to a wanted file: both skipped.
    os.symlink(".", root / "algos" / "loop")
    os.symlink("algos/sort.py", root / "link.py")
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> dict[str, str]:
    """Commits A (untagged), B (annotated tag v1, adds extra.py), C (tip of main, adds later.py)."""
    root = write_tree(tmp_path_factory.mktemp("repo"))
    git(root, "init", "-q", "-b", "main")
    commits = {}
    for name, new_file in [("A", None), ("B", "algos/extra.py"), ("C", "algos/later.py")]:
        if new_file:
            (root / new_file).write_text(f"# {name}\n")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", name)
        commits[name] = git(root, "rev-parse", "HEAD")
        if name == "B":
            git(root, "tag", "-a", "v1", "-m", "v1")
    return {"url": root.as_uri(), **commits}


def make_params(tmp_path: Path, *srcs: dict, out: str = "raw") -> Params:
    return Params.model_validate(
        {"languages": LANGUAGES, "clone": {"sources": list(srcs), "out_dir": str(tmp_path / out)}}
    )


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def record(tmp_path: Path, out: str = "raw") -> dict:
    return json.loads((tmp_path / out / "sources.json").read_text())


@pytest.mark.parametrize(
    "rev, commit, extra",
    [
        ("A", "A", set()),
        ("v1", "B", {"algos/extra.py"}),
        ("main", "C", {"algos/extra.py", "algos/later.py"}),
    ],
    ids=["commit", "tag", "branch"],
)
def test_git_by_commit_tag_branch(tmp_path, repo, rev, commit, extra):
    rev = repo.get(rev, rev)  # "A" means commit A's id
    src = {"name": "algo", "git": repo["url"], "rev": rev, "languages": ["python", "java"]}
    sources.run(make_params(tmp_path, src))
    rec = record(tmp_path)["algo"]
    assert rec["kind"] == "git" and rec["rev"] == rev and rec["commit"] == repo[commit]
    taken = files_of(tmp_path / "raw" / "algo")
    assert set(taken) == TAKEN | extra
    assert rec["license_files"] == ["LICENSE"]
    assert rec["skipped"] == {"symlinks": 2, "special": 0, "unreadable": 0}
    assert rec["languages"] == {
        lang: {"files": len(files), "bytes": sum(len(taken[f]) for f in files)}
        for lang, ext in [("python", ".py"), ("java", ".java")]
        for files in [[f for f in taken if f.endswith(ext)]]
    }
    assert rec["languages"]["python"]["files"] == 2 + len(extra)


def test_commit_id_when_server_refuses_shallow_fetch_by_id(tmp_path, repo, monkeypatch):
    # Git protocol v0 refuses a fetch of a commit no ref points at, like some servers do.
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.version")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "0")
    git(tmp_path, "init", "-q", "probe")
    refused = subprocess.run(
        ["git", "fetch", "--depth", "1", repo["url"], repo["A"]], cwd=tmp_path / "probe", capture_output=True, text=True
    )
    assert refused.returncode != 0
    for name, rev in [("full", repo["A"]), ("abbrev", repo["A"][:10])]:
        sources.run(
            make_params(tmp_path, {"name": name, "git": repo["url"], "rev": rev, "languages": ["python"]}, out=name)
        )
        assert record(tmp_path, name)[name]["commit"] == repo["A"]
        assert "algos/extra.py" not in files_of(tmp_path / name / name)


def test_local_repo_path(tmp_path, repo):
    path = repo["url"].removeprefix("file://")
    sources.run(make_params(tmp_path, {"name": "local", "git": path, "rev": "v1", "languages": ["java"]}))
    rec = record(tmp_path)["local"]
    assert rec["location"] == path and rec["commit"] == repo["B"]
    assert set(files_of(tmp_path / "raw" / "local")) == {"LICENSE", "Main.java", "algos/Sort.java"}


def zip_tree(root: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():  # stored as a link, as `zip --symlinks` does
                info = zipfile.ZipInfo(rel)
                info.external_attr = 0o120777 << 16
                zf.writestr(info, os.readlink(path))
            elif path.is_file():
                zf.write(path, rel)
    return dest


def tar_tree(root: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(root, arcname=".")  # links are stored as links; members read "./algos/..."
    return dest


def test_directory_zip_and_tar_take_the_same_content(tmp_path):
    tree = write_tree(tmp_path / "tree")
    srcs = [
        {"name": "dir", "path": str(tree)},
        {"name": "zip", "path": str(zip_tree(tree, tmp_path / "tree.zip"))},
        {"name": "tgz", "path": str(tar_tree(tree, tmp_path / "tree.tar.gz"))},
    ]
    sources.run(make_params(tmp_path, *[{**s, "languages": ["python", "java"]} for s in srcs]))
    recs = record(tmp_path)
    assert [recs[n]["kind"] for n in ("dir", "zip", "tgz")] == ["dir", "archive", "archive"]
    assert len({recs[n]["sha256"] for n in recs}) == 1
    for name in recs:
        assert files_of(tmp_path / "raw" / name) == {rel: TREE[rel].encode() for rel in TAKEN}
        assert recs[name]["skipped"]["symlinks"] == 2 and recs[name]["license_files"] == ["LICENSE"]
        assert recs[name]["commit"] is None and recs[name]["rev"] is None


def test_globs_are_gitignore_patterns():
    match = lambda pattern, path: sources.globs([pattern]).match_file(path)  # noqa: E731
    assert match("**/test/**", "test/a.py") and match("**/test/**", "x/y/test/a.py")
    assert not match("**/test/**", "xtest/a.py") and not match("**/test/**", "test.py")
    assert match("*.py", "a.py") and match("*.py", "x/a.py") and match("**/*.py", "x/y/a.py")  # any depth
    assert match("site-packages/**", "site-packages/a.py") and not match("site-packages/**", "x/site-packages/a.py")
    assert match("java.base/java/util/**", "java.base/java/util/concurrent/Lock.java")
    assert match("a?c/[!x]*.py", "abc/y.py") and not match("a?c/[!x]*.py", "a/c/y.py")
    assert not match("a?c/[!x]*.py", "abc/x.py") and match("f[0-9].py", "f7.py")
    assert not sources.globs(["**/tests/**", "!**/tests/keep.py"]).match_file("x/tests/keep.py")  # re-taken


def test_include_exclude(tmp_path):
    tree = write_tree(tmp_path / "tree")
    sources.run(
        make_params(
            tmp_path,
            {
                "name": "dir",
                "path": str(tree),
                "languages": ["python", "java"],
                "include": ["algos/**"],
                "exclude": ["**/deep/**"],
            },
        )
    )
    assert set(files_of(tmp_path / "raw" / "dir")) == {"LICENSE", "algos/sort.py", "algos/Sort.java"}


def test_license_param_and_python_stdlib(tmp_path):
    licence = tmp_path / "legal" / "NOTICE"
    licence.parent.mkdir()
    licence.write_text("terms\n")
    sources.run(
        make_params(
            tmp_path,
            {
                "name": "std",
                "path": "{python_stdlib}",
                "languages": ["python"],
                "include": ["json/*.py"],
                "license": str(licence),
            },
        )
    )
    rec = record(tmp_path)["std"]
    assert rec["license_files"] == ["NOTICE"] and (tmp_path / "raw" / "std" / "NOTICE").read_text() == "terms\n"
    assert set(files_of(tmp_path / "raw" / "std")) == {
        "NOTICE",
        "json/__init__.py",
        "json/decoder.py",
        "json/encoder.py",
        "json/scanner.py",
        "json/tool.py",
    }


def test_site_packages_placeholder(tmp_path):
    """{site_packages} is the running interpreter's installed packages: this venv's pinned ones."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    sources.run(
        make_params(
            tmp_path, {"name": "pkgs", "path": "{site_packages}", "languages": ["python"], "include": ["filelock/*.py"]}
        )
    )
    rec = record(tmp_path)["pkgs"]
    assert rec["location"] == str(purelib)
    expected = {p.name for p in (purelib / "filelock").glob("*.py")}
    taken = {Path(f).name for f in files_of(tmp_path / "raw" / "pkgs") if f.endswith(".py")}
    assert expected and taken == expected


def test_sha256_pin(tmp_path):
    tree = write_tree(tmp_path / "tree")
    src = {"name": "pinned", "path": str(tree), "languages": ["python"]}
    sources.run(make_params(tmp_path, src))
    actual = record(tmp_path)["pinned"]["sha256"]
    sources.run(make_params(tmp_path, {**src, "sha256": actual}, out="again"))
    with pytest.raises(UserError) as err:
        sources.run(make_params(tmp_path, {**src, "sha256": "0" * 64}, out="bad"))
    msg = str(err.value)
    assert "\n" not in msg and "'pinned'" in msg and actual in msg and "0" * 64 in msg
    assert f"clone.sources[pinned].sha256: {actual}" in msg
    assert not (tmp_path / "bad").exists()


def corrupt_zip(tmp_path: Path) -> str:
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 this is not really a zip file" * 10)
    return str(tmp_path / "bad.zip")


def truncated_tar(tmp_path: Path) -> str:
    data = Path(tar_tree(write_tree(tmp_path / "t"), tmp_path / "t.tar.gz")).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    return str(tmp_path / "cut.tar.gz")


def unsafe_tar(tmp_path: Path) -> str:
    (tmp_path / "evil.py").write_text("print('escaped')\n")
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        tar.add(tmp_path / "evil.py", arcname="../evil.py")
    return str(tmp_path / "evil.tar")


@pytest.mark.parametrize(
    "bad, reason",
    [
        (lambda tmp, repo: {"git": "file:///nonexistent/repo.git", "rev": "main"}, "cannot reach git repository"),
        (lambda tmp, repo: {"git": repo["url"], "rev": "no-such-branch"}, "not a branch or tag"),
        (lambda tmp, repo: {"git": repo["url"], "rev": "0123456789" * 4}, "not found in"),
        (lambda tmp, repo: {"path": corrupt_zip(tmp)}, "corrupt archive"),
        (lambda tmp, repo: {"path": truncated_tar(tmp)}, "corrupt archive"),
        (lambda tmp, repo: {"path": unsafe_tar(tmp)}, "unsafe archive member '../evil.py'"),
        (lambda tmp, repo: {"path": str(tmp / "missing" / "src.zip")}, "does not exist on this machine"),
    ],
    ids=["unreachable", "no-such-branch", "no-such-commit", "corrupt-zip", "truncated-tar", "unsafe-tar", "missing"],
)
def test_errors_leave_previous_output_untouched(tmp_path, repo, bad, reason):
    raw = tmp_path / "raw"
    (raw / "old").mkdir(parents=True)
    (raw / "old" / "kept.py").write_text("previous output\n")
    before = files_of(raw)
    good = {"name": "good", "path": str(write_tree(tmp_path / "good")), "languages": ["python"]}
    with pytest.raises(UserError) as err:
        sources.run(make_params(tmp_path, good, {"name": "bad", "languages": ["python"], **bad(tmp_path, repo)}))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("source 'bad': ") and reason in msg, msg
    assert files_of(raw) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".raw")) == []


def test_a_repository_missing_an_object_fails_with_git_s_cause(tmp_path):
    """git names the symptom first ("git-pack-objects died") and the cause in other lines: all are kept."""
    root = write_tree(tmp_path / "broken")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "A")
    blob = git(root, "rev-parse", "HEAD:algos/sort.py")
    loose = root / ".git" / "objects" / blob[:2] / blob[2:]
    assert loose.is_file()
    loose.unlink()  # the repository's refs still answer; its content cannot be sent
    src = {"name": "broken", "git": root.as_uri(), "rev": "main", "languages": ["python"]}
    with pytest.raises(UserError) as err:
        sources.run(make_params(tmp_path, src))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"source 'broken': cannot fetch {root.as_uri()}: "), msg
    assert f"unable to read {blob}" in msg and "possible repository corruption" in msg, msg
    assert "\0" not in msg and not (tmp_path / "raw").exists()


def test_default_params_missing_jdk(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    jdk = next(s for s in raw["clone"]["sources"] if s["name"] == "jdk-java-base")
    jdk["path"] = str(tmp_path / "no-jdk" / "src.zip")
    raw["clone"]["out_dir"] = str(tmp_path / "raw")
    with pytest.raises(UserError) as err:
        sources.run(Params.model_validate(raw))
    msg = str(err.value)
    assert "\n" not in msg and "'jdk-java-base'" in msg and "clone.sources[jdk-java-base].path" in msg
    assert not (tmp_path / "raw").exists()


def test_deterministic(tmp_path, repo):
    tree = write_tree(tmp_path / "tree")
    srcs = [
        {"name": "git", "git": repo["url"], "rev": "v1", "languages": ["python", "java"]},
        {"name": "dir", "path": str(tree), "languages": ["java"]},
        {"name": "tgz", "path": str(tar_tree(tree, tmp_path / "t.tgz")), "languages": ["python"]},
    ]
    sources.run(make_params(tmp_path, *srcs, out="one"))
    sources.run(make_params(tmp_path, *srcs, out="two"))
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")
    assert list(record(tmp_path, "one")) == ["dir", "git", "tgz"]  # sorted keys


def test_seed_profile(tmp_path, repo):
    seed = profile("seed")
    raw = seed.model_dump(mode="json")
    assert seed.finetune.model == "distilgpt2" and seed.segment.segment_len == 254 and seed.split.dev_ratio == 0.1
    by_lang = {}
    for src in raw["clone"]["sources"]:
        assert src["git"].startswith("https://github.com/TheAlgorithms/") and len(src["rev"]) == 40
        src.update(git=repo["url"], rev=repo["B"] if src["languages"] == ["python"] else "main")
        by_lang[src["languages"][0]] = src["name"]
    raw["clone"]["out_dir"] = str(tmp_path / "raw")
    sources.run(Params.model_validate(raw))
    recs = record(tmp_path)
    assert recs[by_lang["python"]]["commit"] == repo["B"] and recs[by_lang["java"]]["commit"] == repo["C"]
    py_bytes = len(TREE["algos/sort.py"]) + len(TREE["algos/nested/deep/search.py"]) + len("# B\n")
    assert recs[by_lang["python"]]["languages"] == {"python": {"files": 3, "bytes": py_bytes}}
    assert set(files_of(tmp_path / "raw" / by_lang["java"])) == {"LICENSE", "Main.java", "algos/Sort.java"}


@pytest.mark.parametrize(
    "src, key",
    [
        ({"git": "https://example.org/x.git", "rev": "main", "sha256": "0" * 64}, "only applies to path sources"),
        ({"path": "/x", "sha256": "not-a-hash"}, "sha256"),
        ({"path": "/x", "name": "sources.json"}, "reserved"),
    ],
)
def test_source_schema(tmp_path, src, key):
    with pytest.raises(ValueError, match=key):
        make_params(tmp_path, {"name": "s", "languages": ["python"], **src})
