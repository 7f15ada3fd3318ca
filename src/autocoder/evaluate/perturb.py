"""Meaning-preserving perturbations of HumanEval problems and of dev line completion contexts
(ReCode-style, Wang et al. 2022; the project's own: ReCode's data is HumanEval/MBPP only, and Python
only). The robustness measure (robustness.py) scores a model on them.

Each perturbation is deterministic under its seed and keeps the program valid: applied to a
HumanEval prompt, it is applied the same way to the canonical solution, which still passes the
problem's tests (tests/test_robustness.py checks both).

- `whitespace`: every blank line doubled (Python and Java alike; a line completion's target is untouched).
- `function_rename`: the function to write gets another name: in its code, its docstring, the tests.
- `variable_rename`: the function's parameters get other names, in the code and the docstring.
- `docstring`: words of the docstring replaced by synonyms (a seeded half of those the table knows).

Dev line completion (Python and Java) is perturbed too, the context and the line to predict alike
(`perturb_line`): `whitespace` as above; `variable_rename` and `function_rename` rename the
parameters, or the name, of the last function or method the context defines (a Java constructor
keeps its name), wherever the name stands as a word (code, strings, comments), a parameter's not
after a "." (`self.x = x` becomes `self.x = value`), a method's also there (`self.area()`), by a
word-boundary substitution rather than a parser, since
the context is a file cut off mid-way and Java has no parser here. A context without such a function
is left as it is. Docstring rewording has no counterpart there.
"""

from __future__ import annotations

import ast
import io
import keyword
import re
import tokenize
from dataclasses import replace

import numpy as np

from autocoder.problems import Problem

KINDS = ("whitespace", "function_rename", "variable_rename", "docstring")
NEW_NAMES = ("value", "item", "data", "entry", "element", "arg", "operand", "thing")
NEW_FUNCTION_NAMES = ("solve", "compute", "helper", "process", "evaluate", "transform")
SYNONYMS = {
    "Return": "Give back",
    "return": "give back",
    "Returns": "Gives back",
    "returns": "gives back",
    "given": "provided",
    "Given": "Provided",
    "number": "value",
    "numbers": "values",
    "string": "text",
    "strings": "texts",
    "Write": "Implement",
    "function": "routine",
    "each": "every",
    "Check": "Determine",
    "check": "determine",
    "find": "compute",
    "Find": "Compute",
    "whether": "if",
    "largest": "biggest",
    "smallest": "tiniest",
}


LINE_KINDS = ("whitespace", "variable_rename", "function_rename")  # of dev line completion
PYTHON_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)[ \t]*\(([^)]*)\)", re.MULTILINE)
# a Java method or constructor: modifiers and type before the name, the body's "{" after the parameters
JAVA_METHOD = re.compile(r"^[ \t]*(?:[\w<>\[\],.?@ \t]+[ \t])?(\w+)[ \t]*\(([^)]*)\)[\w\s,.]*\{", re.MULTILINE)
JAVA_KEYWORDS = {"if", "for", "while", "switch", "catch", "synchronized", "return", "new", "try", "else", "do"}


def perturb_line(lang: str, context: str, target: str, kind: str, seed: int) -> tuple[str, str]:
    """(context, target line) of a dev line completion, perturbed by `kind` of LINE_KINDS."""
    if kind == "whitespace":
        return double_blank_lines(context), target
    rng = np.random.default_rng([seed, LINE_KINDS.index(kind)])
    function = _last_function(lang, context)
    if function is None:
        return context, target
    name, parameters = function
    taken = set(re.findall(r"\w+", context + target))
    if kind == "function_rename":
        if lang == "java" and name[:1].isupper():  # a constructor: its name is its class's
            return context, target
        renames = {name: _fresh(NEW_FUNCTION_NAMES, taken, rng)}
    elif kind == "variable_rename":
        renames = {}
        for parameter in parameters:
            renames[parameter] = _fresh(NEW_NAMES, taken, rng)
            taken.add(renames[parameter])
    else:
        raise ValueError(f"unknown perturbation {kind!r} (known: {', '.join(LINE_KINDS)})")
    if not renames:
        return context, target
    # a method is also called as an attribute (self.area(), this.merge()); a parameter never is one
    before = r"(?<!\w)" if kind == "function_rename" else r"(?<![.\w])"
    word = re.compile(before + "(" + "|".join(map(re.escape, renames)) + r")(?!\w)")
    return word.sub(lambda m: renames[m[1]], context), word.sub(lambda m: renames[m[1]], target)


def _last_function(lang: str, context: str) -> tuple[str, list[str]] | None:
    """(name, parameter names) of the last function (Python) or method (Java) defined in `context`."""
    if lang == "python":
        found = list(PYTHON_DEF.finditer(context))
        if not found:
            return None
        name, parameters = found[-1][1], found[-1][2]
        names = [m[1] for part in parameters.split(",") if (m := re.match(r"\s*\**(\w+)", part))]
        return name, [n for n in names if n not in ("self", "cls")]
    if lang == "java":
        found = [m for m in JAVA_METHOD.finditer(context) if m[1] not in JAVA_KEYWORDS]
        if not found:
            return None
        name, parameters = found[-1][1], found[-1][2]
        while re.search(r"<[^<>]*>", parameters):  # generic types hold commas of their own
            parameters = re.sub(r"<[^<>]*>", "", parameters)
        names = [m[1] for part in parameters.split(",") if (m := re.search(r"(\w+)\s*(?:\[\s*\])*\s*$", part))]
        return name, names
    return None


def double_blank_lines(text: str) -> str:
    return re.sub(r"\n([ \t]*)\n", r"\n\1\n\n", text)


def perturb(problem: Problem, kind: str, seed: int) -> Problem:
    """`problem` with its prompt (and canonical solution, entry point, tests' call) perturbed by `kind`."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    if kind == "whitespace":
        return replace(problem, prompt=double_blank_lines(problem.prompt))
    if kind == "docstring":
        return replace(problem, prompt=_reword_docstring(problem.prompt, problem.entry_point, rng))
    taken = _names(problem.prompt + problem.canonical_solution) | set(keyword.kwlist)
    if kind == "function_rename":
        renames = {problem.entry_point: _fresh(NEW_FUNCTION_NAMES, taken, rng)}
    elif kind == "variable_rename":
        renames = {}
        for name in _parameters(problem.prompt, problem.entry_point):
            renames[name] = _fresh(NEW_NAMES, taken, rng)
            taken.add(renames[name])
    else:
        raise ValueError(f"unknown perturbation {kind!r} (known: {', '.join(KINDS)})")
    return replace(
        problem,
        prompt=rename(problem.prompt, renames),
        canonical_solution=rename(problem.canonical_solution, renames),
        entry_point=renames.get(problem.entry_point, problem.entry_point),
        # a few problems' tests call the function by its name too (HumanEval/33 compares with it)
        test=rename(problem.test, renames) if kind == "function_rename" else problem.test,
    )


def rename(code: str, renames: dict[str, str]) -> str:
    """`code` with each name of `renames` replaced: as an identifier token, and as a word inside string
    literals (docstrings name parameters and show calls). Positions come from Python's tokenizer, so
    nothing else of the text changes."""
    if not renames:
        return code
    lines = code.splitlines(keepends=True)
    offsets = np.cumsum([0] + [len(line) for line in lines]).tolist()
    edits = []  # (start, end, new text)
    word = re.compile(r"\b(" + "|".join(map(re.escape, renames)) + r")\b")
    for token in _tokens(code):
        start = offsets[token.start[0] - 1] + token.start[1]
        end = offsets[token.end[0] - 1] + token.end[1]
        if token.type == tokenize.NAME and token.string in renames:
            edits.append((start, end, renames[token.string]))
        elif token.type == tokenize.STRING:
            edits.append((start, end, word.sub(lambda m: renames[m[1]], token.string)))
    for start, end, text in sorted(edits, reverse=True):
        code = code[:start] + text + code[end:]
    return code


def _tokens(code: str) -> list[tokenize.TokenInfo]:
    """The tokens of `code`, a whole file or a fragment (a function's body alone): the tokenizer
    complains only at the end, about indentation a fragment does not close."""
    tokens = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            tokens.append(token)
    except (tokenize.TokenError, IndentationError):
        pass
    return tokens


def _names(code: str) -> set[str]:
    return {t.string for t in _tokens(code) if t.type == tokenize.NAME}


def _fresh(pool: tuple[str, ...], taken: set[str], rng: np.random.Generator) -> str:
    for k in range(100):
        name = str(pool[int(rng.integers(len(pool)))]) + (f"_{k}" if k else "")
        if name not in taken:
            return name
    raise AssertionError("no fresh name")  # 100 tries of a pool larger than any problem's names


def _function(prompt: str, entry_point: str) -> ast.FunctionDef | None:
    try:
        tree = ast.parse(prompt + "    pass\n")
    except SyntaxError:
        return None
    return next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == entry_point), None)


def _parameters(prompt: str, entry_point: str) -> list[str]:
    function = _function(prompt, entry_point)
    if function is None:
        return []
    args = function.args
    return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]


def _reword_docstring(prompt: str, entry_point: str, rng: np.random.Generator) -> str:
    function = _function(prompt, entry_point)
    if function is None or not function.body or not isinstance(function.body[0], ast.Expr):
        return prompt
    node = function.body[0].value
    if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
        return prompt
    lines = prompt.splitlines(keepends=True)
    start = sum(len(line) for line in lines[: node.lineno - 1]) + node.col_offset
    end = sum(len(line) for line in lines[: node.end_lineno - 1]) + node.end_col_offset
    chosen = {word for word in SYNONYMS if rng.random() < 0.5}
    if not chosen:
        return prompt
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(chosen))) + r")\b")
    # never inside a doctest line (">>> f(x)" and its expected output are code, not prose)
    docstring = "".join(
        line if line.lstrip().startswith(">>>") else pattern.sub(lambda m: SYNONYMS[m[1]], line)
        for line in prompt[start:end].splitlines(keepends=True)
    )
    return prompt[:start] + docstring + prompt[end:]
