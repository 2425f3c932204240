"""The package's shape: three zones, no import circles, a cheap `import ftkit`, a true index.

The zones (see ftkit/__init__.py): the core (`ftkit/*.py`, `ftkit/metrics/`), the speed-ups
(`ftkit/fast/`) and the course (`ftkit/course/`). The import graph is read from the source
with `ast`, imports inside functions included, so a circle cannot hide in a function.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import ftkit
from ftkit.course.index import INDEX, index_markdown
from ftkit.course.notebooks import notebooks_dir

PACKAGE = Path(ftkit.__file__).parent
HEAVY_SCREENS = ("ipywidgets", "matplotlib", "IPython")  # what only the course may import
DEFERRED = "# deferred:"  # the comment a function-local ftkit import must carry, with a reason


@dataclass(frozen=True)
class Import:
    """One import statement of one module: what it imports, from where in the source."""

    module: str  # the importing module, e.g. "ftkit.training"
    target: str  # the imported module, or module.name, e.g. "ftkit.fast" or "ftkit.fast._x"
    names: tuple[str, ...]  # the names a `from` import takes (empty for `import x`)
    line: int  # its line in the file
    local: bool  # inside a function, not at module level


def modules(root: Path) -> dict[str, Path]:
    """Every importable module under `root` (a package folder), by dotted name."""
    found = {}
    for path in root.rglob("*.py"):
        if not (path.parent / "__init__.py").is_file():
            continue  # a script in a data folder, not a module
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path) -> list[Import]:
    """The imports of one module, module-level and function-level, resolved to dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    local_lines = {
        node.lineno
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Import | ast.ImportFrom)
    }
    found = []
    for node in ast.walk(tree):
        local = getattr(node, "lineno", 0) in local_lines
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, (), node.lineno, local) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = (
                (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            )
            names = tuple(alias.name for alias in node.names)
            found.append(Import(name, source or "", names, node.lineno, local))
    return found


def graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (a `from pkg import module` counts too)."""
    known = modules(root)
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for found in imports(name, path):
            for target in [found.target, *(f"{found.target}.{n}" for n in found.names)]:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name and target != root.name:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                other = stack.pop()
                group.append(other)
                if other == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def zone(module: str) -> str:
    """ "course", "fast", "core", or "entry" (the package's own __init__ and __main__)."""
    parts = module.split(".")
    if parts[1:2] in (["course"], ["fast"]):
        return parts[1]
    return "entry" if module in ("ftkit", "ftkit.__main__") else "core"


ALL = [i for name, path in modules(PACKAGE).items() for i in imports(name, path)]


def test_no_import_circles():
    assert cycles(graph(PACKAGE)) == []


def test_the_circle_finder_finds_circles(tmp_path):
    """The test above can fail: a circle hidden in a function is found."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from pkg import a\n")
    (package / "c.py").write_text("import pkg.a\n")
    assert cycles(graph(package)) == [["pkg.a", "pkg.sub.b"]]


def test_the_core_imports_no_screen_and_nothing_from_the_course():
    wrong = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in ALL
        if zone(i.module) == "core"
        and (zone(i.target) == "course" or i.target.split(".")[0] in HEAVY_SCREENS)
    ]
    assert wrong == []


def test_the_core_switches_speed_ups_on_through_the_entry_points_only():
    inside = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in ALL
        if zone(i.module) == "core" and zone(i.target) == "fast" and i.target != "ftkit.fast"
    ]
    assert inside == []


def test_the_speed_ups_import_nothing_from_the_core_or_the_course():
    upward = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in ALL
        if zone(i.module) == "fast" and i.target.startswith("ftkit") and zone(i.target) != "fast"
    ]
    assert upward == []


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{i.module}:{i.line} imports {name} from {i.target}"
        for i in ALL
        if i.target.startswith("ftkit")
        for name in i.names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_function_local_ftkit_imports_say_why_they_are_deferred():
    """Left only where they defer a heavy import (torch for the doctor, papermill for the
    CLI), each with a `# deferred: <reason>` comment on the line above."""
    unexplained = []
    for i in ALL:
        if i.local and i.target.startswith("ftkit"):
            lines = modules(PACKAGE)[i.module].read_text(encoding="utf-8").splitlines()
            if not lines[i.line - 2].strip().startswith(DEFERRED):
                unexplained.append(f"{i.module}:{i.line} imports {i.target}")
    assert unexplained == []


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def test_import_ftkit_imports_no_torch_transformers_or_peft():
    done = _python("""
        import sys
        import ftkit
        print(sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules))
        """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_public_name_resolves_from_its_module():
    for name in ftkit.__all__:
        assert getattr(ftkit, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        ftkit.no_such_name  # noqa: B018


def test_the_doctor_reports_a_missing_torch_instead_of_failing():
    done = _python("""
        import sys
        sys.modules["torch"] = None  # what Python does for a package that is not there
        import ftkit
        report = ftkit.doctor()
        print(report)
        print("ok:", report.ok)
        """)
    assert done.returncode == 0, done.stderr
    assert "[FIX] torch import" in done.stdout and "ModuleNotFoundError" in done.stdout
    assert "pip install torch" in done.stdout and "ok: False" in done.stdout


def test_the_index_of_names_is_current():
    committed = (notebooks_dir() / INDEX).read_text(encoding="utf-8")
    assert committed == index_markdown(), "run `python -m ftkit.course.index` and commit"
    assert "| `ftkit.models.load_model` | 01, 02, 03, 05, 06 |" in committed


def test_no_docstring_names_a_notebook_that_teaches_it():
    """Such pointers drift; ftkit/notebooks/INDEX.md says it instead, generated."""
    tagged = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "Taught in notebooks/" in path.read_text(encoding="utf-8")
    ]
    assert tagged == []
