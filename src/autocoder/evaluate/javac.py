"""Java, executed as far as it can be without tests: method bodies completed and compiled.

For Java dev files that compile as they are, methods with a body of a few lines are taken out one at
a time: the model sees the file above the body (signature and "{" included) and writes the body; the
file with that body and the rest of the file after it goes to `javac` in the sandbox (a JVM needs a
larger address space and more threads than a Python program: `LIMITS`). The score is the share of
bodies that compile. A source of the JDK's own modules (a path under `java.base/`, ...) compiles with
`--patch-module` into its module, as the JDK builds it. No JDK: the measure is skipped, with a line
saying why.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autocoder.complete import Completer, Decoding
from autocoder.evaluate import sandbox
from autocoder.evaluate.measure import STAGE, Inputs, Measure, Result, file_text
from autocoder.evaluate.sandbox import Limits, run

# javac is one process, but each of its threads counts as one (14 on two cores, more with more cores),
# and its JVM reserves 2 GB of address space at start (heap, 1 GB of class space): 4 GB for each of 64.
# It runs no code of the file it compiles (-proc:none).
LIMITS = Limits(wall_s=60, cpu_s=60, memory_mb=64 * 4096, processes=64)
JVM_FLAGS = ["-J-Xmx512m", "-J-XX:+UseSerialGC", "-J-XX:TieredStopAtLevel=1"]  # a fast, small compiler JVM
MODULE = re.compile(r"(?:java|jdk)\.[\w.]+")  # a JDK module's folder: java.base/java/util/X.java
KEYWORDS = {"if", "for", "while", "switch", "catch", "synchronized", "return", "new", "else", "do", "try"}
# a method's (or constructor's) header at the start of a line, ending with the body's "{"
METHOD = re.compile(
    r"^(?P<indent>[ \t]+)[\w@<>\[\]?,. \t]*?(?P<name>\w+)[ \t]*\([^()]*\)[\w\s,.]*\{[ \t]*$",
    re.MULTILINE,
)
MAX_BODY_LINES = 10


@dataclass(frozen=True)
class Method:
    path: str
    name: str
    head: str  # the file up to the body's "{" and its newline
    body: str  # the body's lines, without the closing brace's line
    tail: str  # from the closing brace's indentation on


def unavailable(javac: str) -> str | None:
    """Why Java cannot be compiled here, in one line; None when it can."""
    if shutil.which(javac) is None:
        return (
            f"javac {javac!r} not found (evaluate.javac.command; a JDK is needed, e.g. Debian's default-jdk-headless)"
        )
    ok, output = compiles(javac, "Probe.java", "class Probe {}\n")
    if not ok:  # a JDK that cannot run in the sandbox would fail every file: say so instead
        return f"javac {javac!r} cannot compile in the sandbox: {(output.strip().splitlines() or ['?'])[-1]}"
    return None


def _closing_brace(text: str, start: int) -> int | None:
    """The index of the "}" that closes the "{" at `start`, skipping strings, characters and comments."""
    depth, i = 0, start
    token = re.compile(r'"""|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])+\'|//[^\n]*|/\*.*?\*/|[{}]', re.DOTALL)
    while (match := token.search(text, i)) is not None:
        if match.group() == '"""':  # a text block: to its closing quotes
            end = text.find('"""', match.end())
            if end < 0:
                return None
            i = end + 3
            continue
        if match.group() == "{":
            depth += 1
        elif match.group() == "}":
            depth -= 1
            if depth == 0:
                return match.start()
        i = match.end()
    return None


def methods(path: str, text: str) -> list[Method]:
    """The methods of a file whose bodies are 1 to MAX_BODY_LINES non-blank lines."""
    found = []
    for match in METHOD.finditer(text):
        if match["name"] in KEYWORDS:
            continue
        brace = match.end() - 1 - (len(match.group()) - len(match.group().rstrip()))
        close = _closing_brace(text, brace)
        if close is None or "\n" not in text[brace:close]:
            continue
        line_start = text.rfind("\n", 0, close) + 1
        head, body = text[: brace + 1] + "\n", text[text.index("\n", brace) + 1 : line_start]
        if (
            text[line_start:close].strip()
            or not 0 < sum(1 for line in body.splitlines() if line.strip()) <= MAX_BODY_LINES
        ):
            continue
        found.append(Method(path, match["name"], head, body, text[line_start:]))
    return found


@functools.cache
def _outside_usr(javac: str) -> tuple[str, ...]:
    """The folders outside /usr that the JDK of `javac` links into (Debian's keeps its configuration
    in /etc/java-<version>-openjdk): the sandbox shows them, read-only, with the JDK."""
    home = Path(os.path.realpath(javac)).parent.parent
    targets = {Path(os.path.realpath(link)).parent for link in home.rglob("*") if link.is_symlink()}
    targets = {t for t in targets if not t.is_relative_to("/usr") and t.is_dir()}
    return tuple(sorted(str(t) for t in targets if not any(t.is_relative_to(o) and t != o for o in targets)))


def compiles(javac: str, path: str, text: str) -> tuple[bool, str]:
    """(whether `text`, the file at `path`, compiles with `javac` in the sandbox, javac's output)."""
    name = path.rsplit("/", 1)[-1]
    module = MODULE.fullmatch(path.split("/", 1)[0]) if "/" in path else None
    patch = ["--patch-module", f"{module.group()}=."] if module else []
    argv = [shutil.which(javac), *JVM_FLAGS, *patch, "-proc:none", "-nowarn", "-d", "classes", name]
    outcome = run(argv, {name: text}, LIMITS, _outside_usr(argv[0]))
    return outcome.passed, outcome.output


def javac_scores(
    completer: Completer,
    files: list[tuple[str, str]],
    javac: str,
    n_methods: int,
    max_new_tokens: int,
    max_context: int,
    seed: int,
    repetition_penalty: float = 1.0,
    batch_size: int = 1,
) -> tuple[dict, list[dict]]:
    """(scores, one record per method): of `files` ((path, text), tried in a seeded order), those that
    compile as they are give up to 3 methods each until `n_methods`; each body is completed greedily
    from the file above it (its last `max_context` tokens) and compiled in place."""
    rng = np.random.default_rng(seed)
    chosen: list[Method] = []
    for k in rng.permutation(len(files)):
        if len(chosen) >= n_methods:
            break
        path, text = files[k]
        candidates = methods(path, text)
        if candidates and compiles(javac, path, text)[0]:
            picked = rng.permutation(len(candidates))[: min(3, n_methods - len(chosen))]
            chosen += [candidates[i] for i in sorted(picked)]
    records, requests = [], []
    for method in chosen:
        indent = method.tail[: len(method.tail) - len(method.tail.lstrip(" \t"))]
        stop = re.compile(r"(?:^|\n)" + re.escape(indent) + r"\}")  # the body's closing brace
        requests.append({"lang": "java", "context": method.head, "stop": stop, "max_context_tokens": max_context})
    decoding = Decoding(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
    with tqdm(total=len(chosen), desc="javac", unit="method", mininterval=5) as bar:
        completions = completer.complete_many(requests, batch_size, decoding, bar.update)
    for method, completion in zip(chosen, completions):
        body = completion.text.rstrip("\n") + "\n" if completion.text.strip() else ""
        ok, output = compiles(javac, method.path, method.head + body + method.tail)
        records.append(
            {"path": method.path, "method": method.name, "completion": body, "compiles": ok, "javac": output[-500:]}
        )
    share = float(np.mean([r["compiles"] for r in records])) if records else 0.0
    return {"methods": len(records), "compiles": share}, records


def _run(inputs: Inputs) -> Result:
    cfg = inputs.cfg.javac
    files = [
        (str(inputs.corpus.files["path"][r]), file_text(inputs.completer, inputs.corpus, r))
        for r in inputs.rows_of("java")
    ]
    print(f"{STAGE}: java: {cfg.methods} method bodies of dev files completed and compiled ({cfg.command})")
    scores, records = javac_scores(
        inputs.completer,
        files,
        cfg.command,
        cfg.methods,
        cfg.max_new_tokens,
        cfg.max_context,
        inputs.cfg.seed,
        inputs.cfg.repetition_penalty,
        inputs.cfg.batch_size,
    )
    print(f"{STAGE}: java: {scores['compiles']:.1%} of {scores['methods']} completed bodies compile")
    return Result({"javac": scores}, records)


def _unavailable(inputs: Inputs) -> str | None:
    if "java" not in inputs.completer.languages:
        return "the model has no java control token"
    return sandbox.unavailable() or unavailable(inputs.cfg.javac.command)


JAVAC = Measure(
    "javac",
    _run,
    off=lambda cfg: "evaluate.javac.methods is 0" if cfg.javac.methods == 0 else None,
    unavailable=_unavailable,
)
