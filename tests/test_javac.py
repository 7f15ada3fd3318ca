"""Java by compilation: method bodies found and taken out, the file compiled in the sandbox as it is
and with a body in place, and a real model's bodies completed and scored."""

from __future__ import annotations

import pytest

from autocoder.complete import Completer
from autocoder.evaluate import javac, sandbox
from helpers import ROOT

WHY_NOT = sandbox.unavailable() or javac.unavailable("javac")
needs_javac = pytest.mark.skipif(WHY_NOT is not None, reason=f"no javac in a sandbox here: {WHY_NOT}")

SOURCE = """package demo;

import java.util.List;

/** Shapes. */
public class Shapes {
    private final List<String> names;

    public Shapes(List<String> names) {
        this.names = names;
    }

    /** The number of names, "{" and '}' inside strings do not count. */
    public int count() {
        String brace = "}{";
        char close = '}';
        return names.size(); // }
    }

    public static <K, V> int area(int width,
                                  int height) throws IllegalStateException {
        if (width < 0) {
            throw new IllegalStateException("negative");
        }
        return width * height;
    }

    public abstract static class Empty {
        abstract void nothing();
    }
}
"""


def test_methods_are_found_with_their_bodies_and_put_back_give_the_file():
    found = javac.methods("demo/Shapes.java", SOURCE)
    assert [m.name for m in found] == ["Shapes", "count", "area"]  # not the class, the if, the abstract one
    for method in found:
        assert method.head + method.body + method.tail == SOURCE
        assert method.head.endswith("{\n") and method.tail.startswith("    }\n")
    assert (
        found[1].body
        == "        String brace = \"}{\";\n        char close = '}';\n        return names.size(); // }\n"
    )


@pytest.mark.slow
@needs_javac
def test_a_file_compiles_as_it_is_and_not_with_a_wrong_body():
    count = javac.methods("demo/Shapes.java", SOURCE)[1]
    ok, _ = javac.compiles("javac", "demo/Shapes.java", SOURCE)
    assert ok
    ok, output = javac.compiles("javac", "demo/Shapes.java", count.head + "        return names;\n" + count.tail)
    assert not ok and "incompatible types" in output
    outside = count.head + '        new java.io.File("/tmp/x").createNewFile();\n        return 0;\n' + count.tail
    assert not javac.compiles("javac", "demo/Shapes.java", outside)[0]  # an unreported IOException


@pytest.mark.slow
@needs_javac
def test_the_shipped_bases_bodies_are_completed_and_compiled():
    completer = Completer.from_pretrained(ROOT / "models" / "autocoder-base")
    scores, records = javac.javac_scores(completer, [("demo/Shapes.java", SOURCE)], "javac", 3, 48, 1024, seed=0)
    assert scores["methods"] == 3 == len(records)
    assert {r["method"] for r in records} == {"Shapes", "count", "area"}
    assert scores["compiles"] == sum(r["compiles"] for r in records) / 3
    broken = "class Broken { void f() { return 1; }\n}\n"  # does not compile as it is: no method is taken
    assert javac.javac_scores(completer, [("Broken.java", broken)], "javac", 3, 48, 1024, seed=0)[0] == {
        "methods": 0,
        "compiles": 0.0,
    }


def test_no_jdk_is_one_line():
    why = javac.unavailable("/nonexistent/javac")
    assert why.startswith("javac '/nonexistent/javac' not found") and "\n" not in why
