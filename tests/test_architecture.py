"""Layer rules of DESIGN.md §3, checked on the source: who may import whom.

Imports are collected from the syntax tree, including imports inside functions, so a lazy
import cannot slip past the rule."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("hil.yao2020", "hil.wang2019")
#: core modules may not reach the front ends, the backends or a paper's package
FRONT_ENDS = ("hil.cli",)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    for node in ast.walk(tree):          # annotations-only imports never run: not a dependency
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _violations(package: str, forbidden: tuple[str, ...], exempt=lambda mod: False) -> list[str]:
    bad = []
    for path in _sources(package):
        mod = _module_name(path)
        if exempt(mod):
            continue
        for imp in _imports(path):
            if any(imp == f or imp.startswith(f + ".") for f in forbidden):
                bad.append(f"{mod} imports {imp}")
    return sorted(set(bad))


def test_hil_imports_no_backend_gui_or_instrument_io():
    assert _violations("hil", ("gui", "drivers", "sim_backend", "PySide6", "pyqtgraph",
                               "pyvisa", "serial")) == []


def test_drivers_and_simulator_keep_apart():
    assert _violations("drivers", ("sim_backend", "gui", "PySide6", "pyqtgraph")) == []
    assert _violations("sim_backend", ("drivers", "gui", "PySide6", "pyqtgraph")) == []


def test_core_never_imports_a_paper_package_or_the_cli():
    def exempt(mod: str) -> bool:
        return mod.startswith(PAPERS) or mod.startswith(FRONT_ENDS) or mod in ("hil.__main__",)
    assert _violations("hil", PAPERS + FRONT_ENDS, exempt) == []


def test_papers_do_not_import_each_other():
    assert _violations("hil/yao2020", ("hil.wang2019",)) == []
    assert _violations("hil/wang2019", ("hil.yao2020",)) == []


def _cycle(graph: dict[str, set[str]]):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


@pytest.mark.parametrize("package", ["hil/cli", "hil"])
def test_no_import_cycles(package):
    mods = {_module_name(p): p for p in _sources(package)}
    graph = {}
    for mod, path in mods.items():
        deps = set()
        for imp in _imports(path):
            # the longest module of the package this import names
            parts = imp.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in mods and cand != mod:
                    deps.add(cand)
                    break
        # a package's __init__ importing its own submodules is not a cycle
        graph[mod] = {d for d in deps if not (path.name == "__init__.py" and d.startswith(mod + "."))}
    # importing a package runs its __init__: edges to a package are edges to its __init__ module
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_check_sees_lazy_imports(tmp_path, monkeypatch):
    """The rule must catch an import hidden inside a function (the way it was broken before)."""
    pkg = tmp_path / "hil"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sneaky.py").write_text("def f():\n    from sim_backend import chip\n    return chip\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert _violations("hil", ("sim_backend",)) == ["hil.sneaky imports sim_backend",
                                                   "hil.sneaky imports sim_backend.chip"]


def test_cli_command_modules_share_only_common():
    """One module per command family: each imports `hil.cli.common` and the core, never another."""
    bad = []
    for path in _sources("hil/cli"):
        mod = _module_name(path)
        if mod == "hil.cli":                     # the package's main() assembles the families
            continue
        for imp in _imports(path):
            if (imp == "hil.cli" or imp.startswith("hil.cli.")) and not imp.startswith("hil.cli.common"):
                bad.append(f"{mod} imports {imp}")
    assert bad == []


def test_only_the_entry_points_import_the_cli():
    """Outside hil/cli only `python -m hil` (hil/__main__.py) imports it; the console script is pyproject's."""
    outside = [p for pkg in ("hil", "gui", "drivers", "sim_backend") for p in _sources(pkg)
               if not _module_name(p).startswith("hil.cli") and _module_name(p) != "hil.__main__"]
    bad = sorted({f"{_module_name(p)} imports {imp}" for p in outside for imp in _imports(p)
                  if imp == "hil.cli" or imp.startswith("hil.cli.")})
    assert bad == []
