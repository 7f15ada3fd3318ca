"""Clone stage: take the pinned sources of `params.clone` into data/raw/<source>/<relpath>.

A source is a git repository at a pinned revision, a plain directory, or a zip/tar archive. Only
files of the source's languages (by extension, from `params.languages`) that pass its
include/exclude globs are taken. data/raw/sources.json records, per source, where it came from
(resolved commit, content hash), what was taken per language, its licence file(s) and what was
skipped. Links are never followed and archives are never extracted as such: each regular member
is read and written under its checked relative path, so a symlink loop cannot hang the walk and an
archive cannot write outside data/raw. All sources are checked (paths exist, archives open,
repositories answer) before anything is copied, and everything is written through `atomic_dir`:
a failed run leaves the previous data/raw untouched.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import stat
import subprocess
import sysconfig
import tarfile
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import pathspec

from autocoder.atomic import atomic_dir, write_json
from autocoder.errors import UserError
from autocoder.params import Params, Source

SOURCES_JSON = "sources.json"
# Path placeholders: the running interpreter's standard library and its installed packages (the
# venv's, pinned by requirements.lock), so a profile names them the same way on every machine.
PATH_PLACEHOLDERS = {"{python_stdlib}": "stdlib", "{site_packages}": "purelib"}
LICENSE_PREFIXES = ("LICENSE", "LICENCE", "COPYING")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)
SKIP_REASONS = ("symlinks", "special", "unreadable")  # links, devices/fifos, files that cannot be read
COMMIT_ID = re.compile(r"[0-9a-fA-F]{4,64}")
GIT_REASON_LINES, GIT_REASON_CHARS = 6, 300  # of git's stderr, in an error message
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b\x0e-\x1f\x7f]")
_GIT_BOILERPLATE = {"Please make sure you have the correct access rights", "and the repository exists."}

# (relative path, reader of a regular file's bytes (None when unreadable) | why the entry is skipped)
Entry = tuple[str, Callable[[], bytes | None] | str]


class _Problem(Exception):
    """A problem with one source; `_about(source)` turns it into a one-line UserError naming it."""


@contextmanager
def _about(source: Source) -> Iterator[None]:
    try:
        yield
    except _Problem as e:
        raise UserError(f"source {source.name!r}: {e}") from None
    except ARCHIVE_ERRORS as e:
        raise UserError(f"source {source.name!r}: corrupt archive {source.path}: {e or type(e).__name__}") from None


# ---- which files to take -------------------------------------------------------------------------
# Include/exclude patterns are .gitignore's (pathspec, the library DVC reads .dvcignore with), on the
# relative path ("/"-separated): "*.py" matches at any depth, "a/b/**" only under a/b/ ("/" inside
# anchors a pattern), "**/test/**" any folder named test, "!" re-takes what an earlier line left out.
# An empty include takes every file of the source's languages; exclude wins over include.
def globs(patterns: list[str]) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(patterns)


@dataclass(frozen=True)
class Selector:
    """The language of a relative path a source takes, or None."""

    params: Params
    languages: tuple[str, ...]  # the source's
    include: pathspec.GitIgnoreSpec
    exclude: pathspec.GitIgnoreSpec

    @classmethod
    def of(cls, source: Source, params: Params) -> Selector:
        return cls(
            params,
            tuple(source.languages),
            globs(source.include),
            globs(source.exclude),
        )

    def language(self, relpath: str) -> str | None:
        lang = self.params.language_of(relpath, among=self.languages)
        if lang is None or self.exclude.match_file(relpath):
            return None
        if self.include.patterns and not self.include.match_file(relpath):
            return None
        return lang


# ---- reading a directory or an archive -----------------------------------------------------------
def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _walk_dir(folder: Path, prefix: str = "", skip: frozenset[str] = frozenset()) -> Iterator[Entry]:
    """Entries below `folder` in sorted order; links are reported, never followed."""
    try:
        with os.scandir(folder) as it:
            children = sorted(it, key=lambda e: e.name)
    except OSError:
        yield prefix.rstrip("/"), "unreadable"
        return
    for child in children:
        rel = prefix + child.name
        if rel in skip:
            continue
        if child.is_symlink():
            yield rel, "symlinks"
        elif child.is_dir(follow_symlinks=False):
            yield from _walk_dir(Path(child.path), rel + "/")
        elif child.is_file(follow_symlinks=False):
            yield rel, partial(_read, Path(child.path))
        else:
            yield rel, "special"


def _member(name: str, is_link: bool, is_file: bool, read: Callable[[], bytes]) -> Entry:
    """An archive member's entry; absolute paths and '..' (path traversal) are refused."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise _Problem(f"unsafe archive member {name!r} (absolute path or '..')")
    return str(path), "symlinks" if is_link else read if is_file else "special"


def _zip_entries(zf: zipfile.ZipFile) -> Iterator[Entry]:
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        mode = info.external_attr >> 16  # unix mode, when the zip was made on unix (else 0)
        if not info.is_dir():
            yield _member(info.filename, stat.S_ISLNK(mode), not mode or stat.S_ISREG(mode), partial(zf.read, info))


def _tar_entries(tar: tarfile.TarFile) -> Iterator[Entry]:
    for member in tar:  # archive order: a compressed tar streams forward only
        if not member.isdir():
            read = partial(lambda m: tar.extractfile(m).read(), member)
            yield _member(member.name, member.issym() or member.islnk(), member.isfile(), read)


@contextmanager
def _archive_entries(path: Path) -> Iterator[Iterator[Entry]]:
    name = path.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            yield _zip_entries(zf)
    elif name.endswith(TAR_SUFFIXES):
        with tarfile.open(path) as tar:
            yield _tar_entries(tar)
    else:
        raise _Problem(f"{path} is neither a directory nor a .zip/.tar(.gz/.bz2/.xz) archive")


# ---- git -----------------------------------------------------------------------------------------
def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    env["GIT_TERMINAL_PROMPT"] = "0"  # an unknown or private https repository fails instead of prompting
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)


def _reason(result: subprocess.CompletedProcess) -> str:
    """Why git failed, in one line: its distinct stderr lines, in order, joined by "; ". The first line
    is often only the symptom ("git upload-pack: git-pack-objects died with error") and a later one
    the cause ("remote: fatal: unable to read <object>"), so all are kept, up to GIT_REASON_LINES;
    hints and the generic "Please make sure you have the correct access rights" advice are left out."""
    text = _TERMINAL_CODES.sub("", result.stderr)  # a remote's colours, the NUL ending a sideband line
    lines = [
        line
        for line in dict.fromkeys(line.strip() for line in text.splitlines())
        if line and not line.startswith("hint:") and line not in _GIT_BOILERPLATE
    ]
    if not lines:
        return f"git exit {result.returncode}"
    shown = [
        line if len(line) <= GIT_REASON_CHARS else line[:GIT_REASON_CHARS] + "..." for line in lines[:GIT_REASON_LINES]
    ]
    more = len(lines) - len(shown)
    return "; ".join(shown) + (f"; ({more} more lines)" if more else "")


def _check_remote(url: str, rev: str) -> None:
    """Before any fetch: the repository answers, and a rev that is not a commit id is a ref of it."""
    result = _git("ls-remote", url, rev)
    if result.returncode:
        raise _Problem(f"cannot reach git repository {url}: {_reason(result)}")
    if not result.stdout.strip() and not COMMIT_ID.fullmatch(rev):
        raise _Problem(f"revision {rev!r} is not a branch or tag of {url}")


def _fetch(url: str, rev: str, repo: Path) -> str:
    """Check out `rev` of `url` into a new repository at `repo`; return the commit id."""
    _git("init", "-q", str(repo))
    target = "FETCH_HEAD"
    if _git("fetch", "-q", "--no-tags", "--depth", "1", url, rev, cwd=repo).returncode:
        # Servers may refuse a shallow fetch (dumb http) or a fetch of a commit id they do not
        # advertise (or rev is an abbreviated id): fetch all branches and tags, look rev up here.
        full = _git(
            "fetch", "-q", "--update-head-ok", url, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*", cwd=repo
        )
        if full.returncode:
            raise _Problem(f"cannot fetch {url}: {_reason(full)}")
        target = rev
    resolved = _git("rev-parse", "--verify", "--quiet", f"{target}^{{commit}}", cwd=repo)
    if resolved.returncode:
        raise _Problem(f"revision {rev!r} not found in {url}")
    commit = resolved.stdout.strip()
    # autocrlf off: the files are the committed bytes whatever the user's git config says.
    checkout = _git(
        "-c", "core.autocrlf=false", "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit, cwd=repo
    )
    if checkout.returncode:
        raise _Problem(f"cannot check out {commit}: {_reason(checkout)}")
    return commit


# ---- the stage -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Located:
    """A source after the cheap checks: what it is and where to read it."""

    kind: str  # "git", "dir" or "archive"
    location: str  # as recorded in sources.json: the URL, or the path with its placeholders expanded
    path: Path | None = None  # dir/archive on this machine
    url: str | None = None  # what git fetches (a local repository path made absolute)


def locate(source: Source) -> Located:
    """Cheap checks before any copying: paths exist, archives open, repositories answer."""
    if source.license and os.path.isabs(source.license) and not os.path.isfile(source.license):
        raise _Problem(
            f"license file {source.license} does not exist on this machine; "
            f"fix clone.sources[{source.name}].license in params.yaml"
        )
    if source.git is not None:
        url = os.path.abspath(source.git) if os.path.exists(source.git) else source.git
        _check_remote(url, source.rev)
        return Located("git", source.git, url=url)
    path = source.path
    for placeholder, key in PATH_PLACEHOLDERS.items():
        path = path.replace(placeholder, sysconfig.get_paths()[key])
    path = Path(path)
    if path.is_dir():
        return Located("dir", str(path), path=path)
    if not path.exists():
        raise _Problem(
            f"path {path} does not exist on this machine; set clone.sources[{source.name}].path "
            f"in params.yaml to a directory or archive that does, or remove the source"
        )
    with _archive_entries(path):
        pass
    return Located("archive", str(path), path=path)


def content_sha256(file_hashes: dict[str, str]) -> str:
    """The content hash pinned by `sha256`: sha256 over sorted 'relpath NUL file-sha256 LF' lines."""
    h = hashlib.sha256()
    for rel in sorted(file_hashes):
        h.update(f"{rel}\0{file_hashes[rel]}\n".encode())
    return h.hexdigest()


def _is_license(source: Source, rel: str) -> bool:
    if source.license and not os.path.isabs(source.license):
        return rel == str(PurePosixPath(source.license))
    return not source.license and "/" not in rel and rel.upper().startswith(LICENSE_PREFIXES)


def take(source: Source, located: Located, params: Params, out: Path, work: Path) -> dict:
    """Write the files `source` takes under `out`; return its sources.json record."""
    commit = None
    if located.kind == "git":
        commit = _fetch(located.url, source.rev, work)
        entries = nullcontext(_walk_dir(work, skip=frozenset({".git"})))
    elif located.kind == "dir":
        entries = nullcontext(_walk_dir(located.path))
    else:
        entries = _archive_entries(located.path)
    selector = Selector.of(source, params)
    taken: dict[str, tuple[str, int, str]] = {}  # relpath -> (language, bytes, sha256)
    licenses: dict[str, bytes] = {}
    skipped = Counter(dict.fromkeys(SKIP_REASONS, 0))
    with entries as found:
        for rel, reader in found:
            if isinstance(reader, str):
                skipped[reader] += 1
                continue
            lang, is_license = selector.language(rel), _is_license(source, rel)
            if lang is None and not is_license:
                continue
            data = reader()
            if data is None:
                skipped["unreadable"] += 1
                continue
            if is_license:
                licenses[PurePosixPath(rel).name] = data
            if lang is not None:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).write_bytes(data)
                taken[rel] = (lang, len(data), hashlib.sha256(data).hexdigest())
    if not taken:
        raise _Problem(f"no {'/'.join(source.languages)} files match its include/exclude globs")
    if source.license and os.path.isabs(source.license):
        licenses[Path(source.license).name] = Path(source.license).read_bytes()
    elif source.license and not licenses:
        raise _Problem(f"license file {source.license!r} not found in the source")
    for name, data in licenses.items():
        (out / name).write_bytes(data)

    digest = content_sha256({rel: sha for rel, (_, _, sha) in taken.items()})
    if source.sha256 and source.sha256 != digest:
        raise _Problem(
            f"content sha256 {digest} does not match the pinned sha256 {source.sha256}; if this "
            f"content is expected, set clone.sources[{source.name}].sha256: {digest} in params.yaml"
        )
    per_language = {lang: {"files": 0, "bytes": 0} for lang in source.languages}
    for lang, size, _ in taken.values():
        per_language[lang]["files"] += 1
        per_language[lang]["bytes"] += size
    return {
        "kind": located.kind,
        "location": located.location,
        "rev": source.rev,
        "commit": commit,
        "sha256": digest,
        "languages": per_language,
        "license_files": sorted(licenses),
        "skipped": dict(skipped),
    }


def run(params: Params) -> None:
    clone = params.clone
    located = []
    for source in clone.sources:
        with _about(source):
            located.append(locate(source))
    with atomic_dir(clone.out_dir) as out, tempfile.TemporaryDirectory(prefix="autocoder-clone-") as work:
        records = {}
        for source, where in zip(clone.sources, located):
            with _about(source):
                records[source.name] = take(source, where, params, out / source.name, Path(work) / source.name)
            rec = records[source.name]
            counts = ", ".join(
                f"{v['files']} {lang} files ({v['bytes'] / 1e6:.1f} MB)" for lang, v in rec["languages"].items()
            )
            at = f" @ {rec['commit'][:12]}" if rec["commit"] else ""
            print(
                f"clone: {source.name}: {counts} from {rec['location']}{at}"
                + ("" if rec["license_files"] else " (no licence file found)")
            )
        write_json(out / SOURCES_JSON, records)
