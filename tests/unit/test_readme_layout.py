"""The README's module tree ("How it works") lists every module of the core and the client,
and nothing that is not there: a module added, moved or removed fails here until the
README says so."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = "<!-- module tree: tests/unit/test_readme_layout.py checks it -->"
ENTRY = re.compile(r"^(?P<indent> *)(?P<name>[\w./]+(?:\.py|/))(?:\s{2,}\S.*)?$")
INDENT = 2


def listed(readme: str) -> tuple[set[str], list[str]]:
    """The paths the tree block after MARKER names, relative to the repository root, and
    its roots (the unindented lines)."""
    _, found, rest = readme.partition(MARKER)
    if not found:
        raise AssertionError(f"README.md lost its marker {MARKER!r}")
    block = rest.split("```", 2)[1]
    paths: set[str] = set()
    roots: list[str] = []
    parents: list[str] = []
    for number, line in enumerate(block.splitlines()[1:], start=1):
        if not line.strip():
            continue
        match = ENTRY.match(line)
        if match is None:
            raise AssertionError(f"line {number} of the module tree is not 'name.py  role' or 'name/  role': {line!r}")
        depth, remainder = divmod(len(match["indent"]), INDENT)
        if remainder or depth > len(parents):
            raise AssertionError(f"line {number} of the module tree is indented wrongly: {line!r}")
        del parents[depth:]
        path = (parents[-1] if depth else "") + match["name"]
        paths.add(path.rstrip("/"))
        if not depth:
            roots.append(path.rstrip("/"))
        if path.endswith("/"):
            parents.append(path)
    return paths, roots


def on_disk(roots: list[str]) -> set[str]:
    """Every module and subpackage under ``roots``; an ``__init__.py`` that holds only its
    docstring (the package's line says what it is) needs no line of its own."""
    paths: set[str] = set()
    for root in roots:
        paths.add(root)
        for file in (ROOT / root).rglob("*.py"):
            relative = file.relative_to(ROOT).as_posix()
            if file.name == "__init__.py":
                paths.add(str(Path(relative).parent.as_posix()))
                body = ast.parse(file.read_text()).body
                if len(body) <= 1 and all(isinstance(node, ast.Expr) for node in body):
                    continue
            paths.add(relative)
    return paths


def test_the_parser_reads_nesting_and_refuses_a_stray_line() -> None:
    tree = f"{MARKER}\n```\npkg/  the package\n  a.py  one\n  sub/  two\n    b.py  three\n  c.py  four\n```\n"
    assert listed(tree) == ({"pkg", "pkg/a.py", "pkg/sub", "pkg/sub/b.py", "pkg/c.py"}, ["pkg"])
    with pytest.raises(AssertionError, match=r"line 3 .*indented wrongly"):
        listed(f"{MARKER}\n```\npkg/  the package\n  a.py  one\n   b.py  three spaces\n```\n")


def test_the_readme_lists_every_module_and_no_other() -> None:
    tree, roots = listed(README.read_text())
    real = on_disk(roots)

    assert sorted(real - tree) == [], "modules the README's tree does not list"
    assert sorted(tree - real) == [], "modules the README's tree lists that do not exist"
