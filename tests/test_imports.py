"""The package's own imports resolve by file location, and the floors import only what DESIGN.md allows.

Inside the package, files import each other with explicit relative imports (`from ..data_builders.errors import
TrajtuneError`). A `from trajtune.x import y` there resolves only through the editable install's import hook, which
static tools (pyright / Pylance) cannot follow, so it is refused here. Every relative import must name a file that
exists and names that the file defines: this is the check that fails on an unresolved import between our files.
A `_private` name is private to its file: importing it from another is refused too (STYLE.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ["launcher", "trainer", "data_builders", "eval"]
# Which top-level floors each floor may import (DESIGN.md's layout table).
ALLOWED = {
    "data_builders": {"data_builders"},
    "trainer": {"trainer", "data_builders"},
    "eval": {"eval", "data_builders"},
    "launcher": {"launcher", "trainer", "data_builders", "eval"},
}


def package_files() -> list[Path]:
    return sorted(p for floor in FLOORS for p in (ROOT / floor).rglob("*.py"))


def module_file(parts: list[str], root: Path = ROOT) -> Path | None:
    """The file of the module `parts` (relative to `root`), or None."""
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_names(path: Path) -> set[str]:
    """Names a module defines at its top level (defs, classes, assignments, imports), conditionals included."""
    names: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))

    visit(tree.body)
    return names


def import_problems(path: Path, root: Path = ROOT) -> list[str]:
    rel = path.relative_to(root)
    package = list(rel.parent.parts)  # the package this module belongs to
    floor = package[0]
    problems = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            problems += [f"{where}: `import {a.name}`: use a relative import" for a in node.names
                         if a.name.split(".")[0] == "trajtune"]
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            if (node.module or "").split(".")[0] == "trajtune":
                problems.append(f"{where}: `from {node.module} import ...`: use a relative import")
            continue
        if node.level > len(package) + 1:  # the repo root is the `trajtune` package itself
            problems.append(f"{where}: relative import climbs above the package root")
            continue
        target = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
        if target and target[0] not in ALLOWED[floor] and target[0] in FLOORS:
            problems.append(f"{where}: {floor}/ may not import {target[0]}/ (DESIGN.md)")
        mod = module_file(target, root)
        if mod is None:
            problems.append(f"{where}: no module {'.'.join(target) or '(root)'}")
            continue
        defined = top_level_names(mod)
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                problems.append(f"{where}: {alias.name} is private to {'.'.join(target)}: make it public or move it")
            if alias.name == "*" or alias.name in defined or module_file(target + [alias.name], root):
                continue
            problems.append(f"{where}: {'.'.join(target)} defines no {alias.name!r}")
    return problems


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_package_imports_resolve_by_location(path: Path) -> None:
    assert import_problems(path) == []


def test_checker_catches_unresolved_and_absolute_imports(tmp_path: Path) -> None:
    # The check itself must be able to fail: a fake floor with each kind of bad import.
    fake = tmp_path / "data_builders"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "good.py").write_text("X = 1\n_hidden = 2\n")
    (fake / "bad.py").write_text(
        "from trajtune.data_builders.good import X\n"
        "from .good import Y\n"
        "from .good import _hidden\n"
        "from .missing import Z\n"
        "from ..trainer import loop\n"
    )
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "loop.py").write_text("")
    (tmp_path / "trainer" / "__init__.py").write_text("")
    problems = import_problems(fake / "bad.py", root=tmp_path)
    assert len(problems) == 5
    assert "use a relative import" in problems[0]
    assert "defines no 'Y'" in problems[1]
    assert "_hidden is private to data_builders.good" in problems[2]
    assert "no module data_builders.missing" in problems[3]
    assert "may not import trainer/" in problems[4]
