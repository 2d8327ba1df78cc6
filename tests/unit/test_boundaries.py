"""Process boundaries are package boundaries, and a plugin's imports are its contract.

The rules (``RULES``), checked on the source by ``import_violations``:

- ``core/para_attn_server/rank/`` (the rank process) imports nothing of the server's side:
  not ``para_attn_server.engine``, ``.http`` or ``.storage``, nor Litestar;
- ``core/client/para_attn_client/`` (a distribution of its own, installed without the
  server) imports no ``para_attn_server``, pluggy, Litestar, torch or Pillow;
- ``plugins/para_attn_plugins/`` and ``contrib_predictors/para_attn_predictors/`` import of
  the server only ``para_attn_server`` and the face ``para_attn_server.plugin``, and of
  each only the names its ``__all__`` lists: never another submodule.

Every import counts wherever it is: at the top, in a function (a deferred import loads the
module all the same), and under ``if TYPE_CHECKING:``. Each rule is a boundary between
processes, between distributions, or a plugin's contract, and a type named across it ties
one side to the other's internals even though nothing loads at run time (the client's
distribution has no ``para_attn_server`` for mypy to find). ``TYPE_CHECKING`` imports are
for naming types *within* a side, where no rule applies (``plugin/`` naming the engine's).

Imports by string (``importlib.import_module``, a fork server's preload list) are not seen
here: the subprocess test at the end catches what a rank's import really loads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_SIDE = ("para_attn_server.engine", "para_attn_server.http", "para_attn_server.storage", "litestar")


@dataclass(frozen=True)
class Rule:
    folder: str  # relative to the repository's root
    package: str  # the dotted name of that folder
    why: str
    forbidden: tuple[str, ...] = ()  # modules (and their submodules) it must not import
    faces_only: bool = False  # of para_attn_server, only the names of the faces' __all__


RULES = (
    Rule("core/para_attn_server/rank", "para_attn_server.rank", "the rank process", forbidden=SERVER_SIDE),
    Rule(
        "core/client/para_attn_client",
        "para_attn_client",
        "the client distribution",
        forbidden=("para_attn_server", "pluggy", "litestar", "torch", "PIL"),
    ),
    Rule("plugins/para_attn_plugins", "para_attn_plugins", "a plugin", faces_only=True),
    Rule("contrib_predictors/para_attn_predictors", "para_attn_predictors", "a predictor", faces_only=True),
)


def exports(path: Path) -> frozenset[str]:
    """The names a module's ``__all__`` (a literal list) lists."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "__all__" for target in node.targets):
            return frozenset(ast.literal_eval(node.value))
    return frozenset()


# module -> the names plugins may import from it (``plugin``: the face itself).
FACES = {
    "para_attn_server": exports(ROOT / "core/para_attn_server/__init__.py") | {"plugin"},
    "para_attn_server.plugin": exports(ROOT / "core/para_attn_server/plugin/__init__.py"),
}


def within(module: str, parent: str) -> bool:
    return module == parent or module.startswith(parent + ".")


def imports(tree: ast.Module, module: str, is_package: bool) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module, names imported from it) of every import in ``tree``, the
    source of ``module``; relative imports are resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_package else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([base] if base else [])])
            yield node.lineno, base, [alias.name for alias in node.names]


def breaks(rule: Rule, module: str, names: list[str], faces: dict[str, frozenset[str]]) -> str | None:
    """What the import of ``names`` from ``module`` (none: ``import module``) breaks, if anything."""
    targets = [module, *(f"{module}.{name}" for name in names)] if names else [module]
    for target in targets:
        for forbidden in rule.forbidden:
            if within(target, forbidden):
                return f"imports {target}: {rule.why} must not import {forbidden}"
    if rule.faces_only and within(module, "para_attn_server"):
        if module not in faces:
            return f"imports {module}: {rule.why} imports only para_attn_server and para_attn_server.plugin"
        outside = sorted(set(names) - faces[module])
        if outside:
            return f"imports {', '.join(outside)} from {module}: not in its __all__, the face {rule.why} may use"
    return None


def import_violations(
    root: Path, rules: tuple[Rule, ...] = RULES, faces: dict[str, frozenset[str]] = FACES
) -> list[str]:
    """Every import in the tree at ``root`` (laid out as this repository) that breaks a
    rule, as ``path:line: what``. A rule whose folder is absent checks nothing."""
    found = []
    for rule in rules:
        folder = root / rule.folder
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("")
            is_package = relative.name == "__init__"
            parts = relative.parts[:-1] if is_package else relative.parts
            module = ".".join([rule.package, *parts])
            for line, imported, names in imports(ast.parse(path.read_text()), module, is_package):
                problem = breaks(rule, imported, names, faces)
                if problem:
                    found.append(f"{path.relative_to(root)}:{line}: {problem}")
    return found


def test_the_tree_keeps_every_boundary() -> None:
    assert import_violations(ROOT) == []


def test_the_faces_are_read_from_the_tree() -> None:
    assert {"Predictor", "hookimpl", "plugin"} <= FACES["para_attn_server"]
    assert {"Jobs", "Executor", "JobRecord", "hookimpl"} <= FACES["para_attn_server.plugin"]


PLANTED = [
    ("core/para_attn_server/rank/planted.py", "import os\nfrom para_attn_server.engine.service import JobService\n", 2),
    (
        "core/para_attn_server/rank/planted.py",
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from para_attn_server.http import create_app\n",
        4,
    ),
    ("core/para_attn_server/rank/planted.py", "from ..storage import outputs\n", 1),
    ("core/para_attn_server/rank/planted.py", "from para_attn_server import storage\n", 1),
    ("core/para_attn_server/rank/planted.py", "def late():\n    import litestar\n", 2),
    ("core/client/para_attn_client/planted.py", "import torch\n", 1),
    ("core/client/para_attn_client/planted.py", "from para_attn_server.records import JobState\n", 1),
    ("core/client/para_attn_client/planted.py", "import pluggy\n", 1),
    ("plugins/para_attn_plugins/planted.py", "from para_attn_server.engine.registry import Job\n", 1),
    ("plugins/para_attn_plugins/planted.py", "from para_attn_server import b64\n", 1),
    ("plugins/para_attn_plugins/planted.py", "from para_attn_server.plugin.manager import version\n", 1),
    ("plugins/para_attn_plugins/openai_api/planted.py", "import para_attn_server.http\n", 1),
    ("plugins/para_attn_plugins/planted.py", "from para_attn_server.plugin import Jobs, JobService\n", 1),
    ("contrib_predictors/para_attn_predictors/planted.py", "def f():\n    from para_attn_server.schema import X\n", 2),
]


PLANTED_IDS = [f"{where.split('/')[-2]}-{index}" for index, (where, _, _) in enumerate(PLANTED)]


@pytest.mark.parametrize(("where", "source", "line"), PLANTED, ids=PLANTED_IDS)
def test_a_planted_forbidden_import_is_reported_with_its_file_and_line(
    tmp_path: Path, where: str, source: str, line: int
) -> None:
    planted = tmp_path / where
    planted.parent.mkdir(parents=True)
    planted.write_text(source)

    found = import_violations(tmp_path)

    assert len(found) == 1, found
    assert found[0].startswith(f"{where}:{line}: "), found


def test_what_the_faces_offer_and_relative_imports_are_allowed(tmp_path: Path) -> None:
    allowed = (
        "from typing import TYPE_CHECKING\n"
        "import litestar\n"
        "import para_attn_server.plugin\n"
        "from para_attn_server import Output, Predictor, hookimpl, plugin\n"
        "from para_attn_server.plugin import Executor, JobRecord, Jobs, hookimpl\n"
        "from . import sibling\n"
        "from .sibling import thing\n"
        "if TYPE_CHECKING:\n"
        "    from para_attn_server.plugin import Job\n"
    )
    for folder in ("plugins/para_attn_plugins/sub", "contrib_predictors/para_attn_predictors"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text(allowed)
    rank = tmp_path / "core/para_attn_server/rank"
    rank.mkdir(parents=True)
    (rank / "ok.py").write_text("import torch\nfrom para_attn_server.plugin.manager import Plugins\nfrom . import x\n")

    assert import_violations(tmp_path) == []


# ---- at run time: what an import really loads -------------------------------------------------


@pytest.mark.parametrize("module", ["para_attn_server", "para_attn_server.plugin", "para_attn_server.rank.worker"])
def test_importing_the_rank_side_loads_nothing_of_the_server_side(module: str) -> None:
    # A fresh interpreter: this one has loaded everything already.
    code = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = json.loads(done.stdout.splitlines()[-1])

    assert [name for name in loaded if any(within(name, side) for side in SERVER_SIDE)] == []
    assert module in loaded
