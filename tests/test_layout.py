"""The code's shape, as the project keeps it: ruff's checks pass, no module of `toolkit/` over 400 lines
and no function over 60 (issue 9: a newcomer can read any one piece at a sitting); no import circle between
modules or between the stage packages, and at most 8 modules at `toolkit/`'s top level (issue 26)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_TOP_LEVEL_MODULES = 8  # issue 26: besides __init__.py; the rest lives in the stage packages


def _modules() -> list[Path]:
    return sorted(p for p in (ROOT / "toolkit").rglob("*.py") if "node_modules" not in p.parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_sizes(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{path.name}: {source.count(chr(10))} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_ruff_passes():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is installed by the test extra (pyproject.toml)"
    done = subprocess.run([ruff, "check", "toolkit", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the toolkit modules it imports, wherever the import stands: at the top, inside a function
    (a deferred back-import) or under TYPE_CHECKING. `from package import submodule` counts as the
    submodule; `from package import name` as the package."""
    modules = {_module_name(p): p for p in _modules()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = (found & set(modules)) - {name}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle_in_toolkit():
    # Issue 19: re-export shims and deferred back-imports tied 29 of 42 modules into one circle.
    graph = import_graph()
    assert len(graph) > 40 and "toolkit.runtimes.base" in graph["toolkit.runtimes.onnxrt"]
    assert import_circles(graph) == []


def stage_of(module: str) -> str:
    """The stage package a module belongs to (`toolkit.checking`, `toolkit.models`, ...; a nested package such
    as `models/keras2/` is part of its stage), or `toolkit` for the top-level modules every stage shares."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (ROOT / parts[0] / parts[1]).is_dir() else "toolkit"


def stage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Stage -> the other stages its modules import (anywhere: at the top, in a function, for types)."""
    stages: dict[str, set[str]] = {}
    for module, imported in graph.items():
        stages.setdefault(stage_of(module), set()).update(stage_of(other) for other in imported)
    return {stage: others - {stage} for stage, others in stages.items()}


def test_no_import_circle_between_stage_packages():
    # Issue 26: the packages are the pipeline's stages, each importing only stages below it; the top-level
    # modules are the ground floor (they import no package). Counting imports inside functions once found a
    # 9-module loop (carry, export_record, exporter, keras2, keras_io, keras_runner, parity, verification, verify).
    stages = stage_graph(import_graph())
    assert {"toolkit.safety", "toolkit.models", "toolkit.runtimes", "toolkit.checking", "toolkit.cli"} <= set(stages)
    assert import_circles(stages) == []
    assert stages["toolkit"] == set(), f"top-level modules import packages: {stages['toolkit']}"


def test_toolkit_top_level_is_small():
    top = sorted(p.name for p in (ROOT / "toolkit").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_the_circle_check_finds_a_circle():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# ------------------------------------------------------------------ decisions with one home (issue 26)


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _calls_named(tree: ast.AST, name: str) -> int:
    """Calls of a function `name`, bare (`decide(...)`) or through its module (`tolerance.decide(...)`)."""
    return sum(1 for node in ast.walk(tree) if isinstance(node, ast.Call)
               and (getattr(node.func, "id", None) == name or getattr(node.func, "attr", None) == name))


def _draws_random(tree: ast.AST) -> bool:
    """Whether a module reaches numpy's random generators (`np.random.default_rng`, `from numpy.random import`,
    `from numpy import random`) or Python's `random`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "random" and getattr(node.value, "id", None) in ("np", "numpy"):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module == "numpy.random" or node.module == "random" or (
                node.module == "numpy" and any(alias.name == "random" for alias in node.names))):
            return True
        if isinstance(node, ast.Import) and any(alias.name in ("random", "numpy.random") for alias in node.names):
            return True
    return False


# What the modules outside checking/ draw at random, and why none of it is an input case of a check.
RANDOM_OUTSIDE_CHECKING = {
    "toolkit/models/builder.py": "the built stacks' deterministic weights",
    "toolkit/pages/keras2_post.py": "the post's tf.keras stack's weights, drawn as the builder draws them",
    "toolkit/deploy/stream_session.py": "one random step at open: the op alone against the file's graph",
}


def test_only_checking_decides_the_tolerance():
    # Issue 26: `decide` ran in 7 modules, twice per export and twice per verify. Its one caller is now
    # checking's `decided_tolerances`; each command calls that once and passes the result down.
    callers = {_relative(p): n for p in _modules() if (n := _calls_named(ast.parse(p.read_text()), "decide"))}
    assert callers == {"toolkit/checking/loop.py": 1}


def test_only_checking_draws_input_cases():
    # Issue 26: five input generators (verify and export, carried calls, --stream, bench, the tf.Module
    # export) are one source, `toolkit.checking.inputs`; no other stage draws its own inputs.
    drawing = {_relative(p) for p in _modules() if _draws_random(ast.parse(p.read_text()))}
    outside = {path for path in drawing if not path.startswith("toolkit/checking/")}
    assert outside == set(RANDOM_OUTSIDE_CHECKING), outside ^ set(RANDOM_OUTSIDE_CHECKING)
    assert "toolkit/checking/inputs.py" in drawing
    assert {p for p in drawing if p.startswith("toolkit/checking/")} == {"toolkit/checking/inputs.py"}


def test_the_checks_find_what_they_look_for():
    assert _calls_named(ast.parse("tolerance.decide(a, b)\ndecide(a)\ndecided(a)"), "decide") == 2
    assert _draws_random(ast.parse("import numpy as np\nrng = np.random.default_rng(0)"))
    assert _draws_random(ast.parse("from numpy.random import default_rng"))
    assert not _draws_random(ast.parse("rng.integers(0, 3)"))
