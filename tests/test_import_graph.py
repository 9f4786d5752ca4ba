"""How the package imports itself: no import cycle, imports that flow down the stages, and a command
line that starts light and loud.

The graph is read from the source with ``ast``: an edge for every ``import tracemark...`` /
``from tracemark... import ...`` (relative ones resolved), at module level or inside a function
alike, to the most specific module it names. The package is grouped by stage (``tracemark.cli``,
``tracemark.audit``, ``tracemark.detection``, ``tracemark.marking``, ``tracemark.registry``,
``tracemark.io``, ...), and imports flow one way, from the command line down to the basics
(:data:`STAGES`): a function two stages need belongs to the lower one.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tracemark"
#: Each stage of the package (a subpackage, or a top-level module) and its level: a stage imports only
#: stages of a higher level. The public API (``tracemark/__init__``) imports its names lazily.
STAGES = {
    "tracemark": 0, "tracemark.__main__": 0,
    "tracemark.cli": 1,
    "tracemark.audit": 2, "tracemark.evaluation": 2,
    "tracemark.detection": 3,
    "tracemark.marking": 4, "tracemark.diffusion": 4,
    "tracemark.registry": 5,
    "tracemark.io": 6, "tracemark.plugins": 6,
    "tracemark.errors": 7, "tracemark.version": 7, "tracemark.lazy": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``."""
    modules = _modules()

    def resolve(name: str) -> str | None:  # the module itself, or the package that holds the name
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges.update(resolve(a.name) for a in node.names if a.name.split(".")[0] == "tracemark")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "tracemark":
                    continue
                for a in node.names:  # ``from tracemark.x import y``: the submodule y when there is one
                    edges.add(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else resolve(target))
        edges.discard(name)
        graph[name] = {e for e in edges if e is not None}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = GREY
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                colour[node] = BLACK
            elif colour.get(child, BLACK) == GREY:
                return path[path.index(child):] + [child]
            elif colour.get(child) == WHITE:
                colour[child] = GREY
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_the_graph_reader_sees_every_kind_of_import():
    graph = import_graph()
    assert "tracemark.cli.app" in graph["tracemark.cli"]  # from tracemark.cli.app import ...
    assert "tracemark.registry.database" in graph["tracemark.audit.shadows"]  # module level
    assert "tracemark.diffusion.training" in graph["tracemark.audit.shadows"]  # inside a function
    assert "tracemark.marking.schemes" in graph["tracemark.detection.scoring"]  # a package's __init__
    assert "tracemark.cli.audit" in graph["tracemark.cli.app"]  # from tracemark.cli import audit (a submodule)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def stage_of(module: str) -> str:
    """``tracemark.audit.plan`` -> ``tracemark.audit``; a top-level module is a stage of its own."""
    return ".".join(module.split(".")[:2])


def stage_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for a, targets in import_graph().items():
        graph.setdefault(stage_of(a), set()).update(stage_of(b) for b in targets if stage_of(b) != stage_of(a))
    return graph


def test_every_stage_is_known_and_imports_flow_down_the_stages():
    graph = stage_graph()
    assert set(graph) == set(STAGES), f"stages without a level in STAGES: {set(graph) ^ set(STAGES)}"
    assert find_cycle(graph) is None
    up = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if STAGES[b] <= STAGES[a])
    assert up == [], f"imports against the stages: {up}"


def test_import_tracemark_is_light_and_its_public_names_resolve():
    """``tracemark/__init__`` imports its names when first used (PEP 562): importing the package costs
    no scipy (nor numpy, torch), and every name of ``__all__`` is there when asked for."""
    p = _python("import sys, tracemark\n"
                "heavy = [m for m in ('numpy', 'scipy', 'torch', 'diffusers') if m in sys.modules]\n"
                "print('HEAVY', heavy)\n"
                "from tracemark import (Registry, protect, materialize, trace_files, audit_model, audit_images,\n"
                "    audit_whitebox, AuditResult, Verdict, score_copies, write_report, Key, derive_key, SCHEMES,\n"
                "    get_scheme, TracemarkError, __version__)\n"
                "assert all(getattr(tracemark, n) is not None for n in tracemark.__all__)\n"
                "assert callable(protect) and callable(materialize) and isinstance(SCHEMES, dict)\n"
                "assert set(tracemark.__all__) <= set(dir(tracemark))\n"
                "print('OK')\n")
    assert p.returncode == 0 and "HEAVY []" in p.stdout and "OK" in p.stdout, p.stdout + p.stderr


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def test_help_imports_neither_torch_nor_diffusers_nor_the_test_world():
    p = _python("import sys\nfrom tracemark.cli import main\nsys.argv = ['tracemark', '--help']\n"
                "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'tracemark_sim', 'scipy.stats',\n"
                "                     'tracemark.detection.stats') if m in sys.modules]\n"
                "print('HEAVY', heavy, file=sys.stderr)\n")
    assert "HEAVY []" in p.stderr and " sim " in p.stdout and " audit " in p.stdout, p.stdout + p.stderr


def test_a_command_module_that_fails_to_import_is_a_traceback_not_a_missing_command():
    """Every command module is imported when the CLI starts, whatever the command line: a broken one
    is its ImportError, never a command that silently went missing."""
    p = _python("import sys\n"
                "class Broken:\n"
                "    def find_spec(self, name, path=None, target=None):\n"
                "        if name == 'tracemark.cli.audit':\n"
                "            raise ImportError('broken on purpose')\n"
                "sys.meta_path.insert(0, Broken())\n"
                "sys.argv = ['tracemark', 'status', '--help']\n"
                "from tracemark.cli import main\n"
                "main()\n")
    assert p.returncode == 1 and "ImportError: broken on purpose" in p.stderr, p.stdout + p.stderr
    assert "No such command" not in p.stdout + p.stderr
