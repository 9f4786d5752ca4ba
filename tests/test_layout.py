"""The repository's layout rules: research/ and the CPU test world stay out of the product, and
research/ uses only its public API.

* nothing in tracemark/, bench/ or examples/ imports ``research`` (it is not installed);
* nothing in tracemark/ imports the test world (``tracemark_sim``, the distribution in testworld/):
  the product finds it through entry points (:mod:`tracemark.plugins`), and the product's wheel
  carries neither its code nor its weights;
* nothing in research/ reaches a private name of tracemark (``from tracemark.x import _y``,
  ``import tracemark.x._y``, ``tracemark.x._y`` or ``alias._y`` for a name imported from tracemark,
  ``getattr(alias, "_y")``): a product refactor may rename those at will;
* no ``eval`` package is left inside tracemark/, and the package discovery of pyproject.toml leaves
  research/ out of the wheel.

Imports are read with :mod:`ast`, so strings and comments never count.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _private(name: str) -> bool:
    """``_x`` is private; ``__x__`` (``__version__``, ``__init__``) is not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None for anything but a chain of names."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id] + parts[::-1]


def imports_of(top: str, source: str) -> list[str]:
    """The imports of the package ``top`` in a module's source (``import research.x``, ``from
    research...``, ``importlib.import_module("research...")``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == top]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == top:
            found.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = _dotted(node.func)
            arg = node.args[0].value
            if fn and fn[-1] in ("import_module", "__import__") and isinstance(arg, str) and arg.split(".")[0] == top:
                found.append(arg)
    return found


def private_uses(source: str) -> list[str]:
    """Every private name of tracemark a module's source reaches, as ``line: what``."""
    tree = ast.parse(source)
    bound: set[str] = set()  # local names that stand for a tracemark module or object
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] != "tracemark":
                    continue
                if any(_private(p) for p in parts):
                    bad.append(f"{node.lineno}: import {a.name}")
                bound.add(a.asname or "tracemark")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "tracemark":
            if any(_private(p) for p in node.module.split(".")):
                bad.append(f"{node.lineno}: from {node.module} import ...")
            for a in node.names:
                if _private(a.name):
                    bad.append(f"{node.lineno}: from {node.module} import {a.name}")
                bound.add(a.asname or a.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            chain = _dotted(node)
            if chain and chain[0] in bound and _private(chain[-1]):
                bad.append(f"{node.lineno}: {'.'.join(chain)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            target, attr = _dotted(node.args[0]), node.args[1].value
            if target and target[0] in bound and isinstance(attr, str) and _private(attr):
                bad.append(f"{node.lineno}: getattr({'.'.join(target)}, {attr!r})")
    return sorted(set(bad), key=lambda s: int(s.split(":")[0]))


def _py_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders if (ROOT / f).is_dir() for p in (ROOT / f).rglob("*.py"))


def test_the_checks_catch_what_they_are_for():
    assert imports_of("research", "import research.eval\nfrom research import x\n"
                      "importlib.import_module('research.eval.grid')\n") == ["research.eval", "research",
                                                                             "research.eval.grid"]
    assert imports_of("tracemark_sim", "from tracemark_sim.cli import app\nimport tracemark.cli\n"
                      "__import__('tracemark_sim')\n") == ["tracemark_sim.cli", "tracemark_sim"]
    assert imports_of("research", "import researcher\ns = 'import research'\n# from research import x\n") == []
    src = ("from tracemark.audit.blackbox import _generate, build_plan\n"
           "import tracemark.audit._x\n"
           "import tracemark.diffusion.denoiser as wb\n"
           "from tracemark.audit import blackbox as audit\n"
           "from tracemark.diffusion import generation as g\n"
           "wb._to_tensor(1)\n"
           "audit._whitebox_probes\n"
           "tracemark.detection.tracing._hidden\n"
           "g._generate_batch\n"
           "getattr(audit, '_captions')\n"
           "from tracemark import __version__\n"
           "other._private\n"
           "self._cache = 1\n")
    assert [s.split(":")[0] for s in private_uses(src)] == ["1", "2", "6", "7", "8", "9", "10"]


@pytest.mark.parametrize("path", _py_files("tracemark", "bench", "examples"), ids=lambda p: str(p.relative_to(ROOT)))
def test_product_bench_and_examples_never_import_research(path):
    where = path.relative_to(ROOT)
    assert imports_of("research", path.read_text()) == [], f"{where} imports research/ (not installed)"


@pytest.mark.parametrize("path", _py_files("tracemark"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_product_never_imports_the_test_world(path):
    assert imports_of("tracemark_sim", path.read_text()) == [], (
        f"{path.relative_to(ROOT)} imports the CPU test world (a distribution of its own, testworld/): find it "
        "through an entry point (tracemark.plugins)")


def test_the_test_world_is_its_own_distribution_out_of_the_product_wheel():
    """testworld/ holds the package tracemark_sim and its weights, and declares the entry points the
    product reads; the product's package discovery and package data leave it all out."""
    from setuptools import find_packages

    from tracemark.plugins import CLI_GROUP, DEFAULT_BASE_GROUP

    assert not (ROOT / "tracemark" / "sim").exists()
    assert (ROOT / "testworld" / "tracemark_sim" / "base_model" / "model_index.json").is_file()
    product = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = product["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=find.get("include", ["*"]), exclude=find.get("exclude", ()))
    assert packages and all(p == "tracemark" or p.startswith("tracemark.") for p in packages), packages
    assert not [g for g in product["tool"]["setuptools"]["package-data"]["tracemark"] if "base_model" in g]
    world = tomllib.loads((ROOT / "testworld" / "pyproject.toml").read_text())
    assert world["project"]["name"] == "tracemark-testworld"
    eps = world["project"]["entry-points"]
    assert eps[DEFAULT_BASE_GROUP] == {"tracemark-testworld": "tracemark_sim:default_base_path"}
    assert eps[CLI_GROUP] == {"sim": "tracemark_sim.cli:app"}
    assert "base_model/**/*" in world["tool"]["setuptools"]["package-data"]["tracemark_sim"]


@pytest.mark.parametrize("path", _py_files("research"), ids=lambda p: str(p.relative_to(ROOT)))
def test_research_uses_only_the_public_api(path):
    bad = private_uses(path.read_text())
    assert bad == [], (f"{path.relative_to(ROOT)} reaches private names of tracemark: {bad}; make the function "
                       "public in the product (with a docstring) or drop the research code")


#: Test folders that are not a subpackage of tracemark.
NOT_MIRRORED = {"testworld", "research", "data"}


def test_the_tests_mirror_the_package():
    """tests/<stage>/ holds the tests of tracemark/<stage>/ (tests/marking/schemes/ of
    tracemark/marking/schemes/); tests/testworld/ and tests/research/ those of the test world and research."""
    folders = [p.relative_to(ROOT / "tests") for p in (ROOT / "tests").rglob("*") if p.is_dir()
               and p.name != "__pycache__" and not (p.relative_to(ROOT / "tests").parts[0] in NOT_MIRRORED)]
    missing = [str(f) for f in folders if not (ROOT / "tracemark" / f / "__init__.py").is_file()]
    assert folders and missing == [], f"test folders that mirror no subpackage of tracemark: {missing}"
    assert not [p.name for p in (ROOT / "tracemark").glob("*.py")
                if p.stem not in ("__init__", "__main__", "errors", "version", "plugins", "lazy")], "modules outside a stage"


def test_research_is_a_plain_package_left_out_of_the_wheel():
    from setuptools import find_packages

    assert not (ROOT / "tracemark" / "eval").exists()
    assert (ROOT / "research" / "__init__.py").is_file()
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=find.get("include", ["*"]), exclude=find.get("exclude", ()))
    assert "tracemark" in packages
    assert not [p for p in packages if p.split(".")[0] in ("research", "tests", "bench", "examples")], packages


# --- library errors name arguments, not flags ----------------------------------------------------
#: A command-line flag in a message: ``--min-marked``, ``--data``.
_FLAG = re.compile(r"--[a-z]")


def _strings(node: ast.AST) -> list[ast.Constant]:
    """The string constants under ``node`` (f-string parts included), keyword ``params=`` left out."""
    if isinstance(node, ast.Call):
        parts = [node.func, *node.args, *(k.value for k in node.keywords if k.arg != "params")]
        return [c for p in parts for c in _strings(p)]
    return [n for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def flags_in_errors(source: str) -> list[str]:
    """Every flag (``--name``) a library module's :class:`~tracemark.errors.TracemarkError` messages
    name, as ``line: text``: in the message of a ``TracemarkError(...)`` call (f-string parts and
    strings built in the call included), in a variable the function passes to one, or as a plain
    argument of any call (``check_name(licensee, "--licensee")``: an option name handed to a helper
    that puts it in its message). Flags belong to the CLI (tracemark/cli/), which maps ``params``."""
    tree = ast.parse(source)
    bad: list[str] = []

    def check(const: ast.Constant) -> None:
        if _FLAG.search(const.value):
            bad.append(f"{const.lineno}: {const.value}")

    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module))]
    for scope in scopes:
        assigned: dict[str, list[ast.AST]] = {}
        for n in ast.walk(scope):
            if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and n.value is not None:
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                    if isinstance(t, ast.Name):
                        assigned.setdefault(t.id, []).append(n.value)
        for n in ast.walk(scope):
            if not isinstance(n, ast.Call):
                continue
            name = _dotted(n.func)
            if name and name[-1] == "TracemarkError":
                for c in _strings(n):
                    check(c)
                for arg in n.args:
                    for v in (x for x in ast.walk(arg) if isinstance(x, ast.Name)):
                        for value in assigned.get(v.id, []):
                            for c in _strings(value):
                                check(c)
            else:
                for arg in [*n.args, *(k.value for k in n.keywords)]:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                            and re.fullmatch(r"--[a-z][\w-]*", arg.value):
                        check(arg)
    return sorted(set(bad), key=lambda s: int(s.split(":")[0]))


def test_the_flag_check_catches_flags_in_library_errors():
    src = ('from tracemark.errors import TracemarkError\n'
           'def f(min_marked, x):\n'
           '    if x:\n'
           '        raise TracemarkError(f"--min-marked must be >= 0, got {min_marked}")\n'
           '    msg = "give " + "--data DIR"\n'
           '    check_name(x, "--licensee")\n'
           '    raise errors.TracemarkError(msg)\n'
           'def g(n):\n'
           '    raise TracemarkError(f"n must be positive, got {n}", params=("n",))\n'
           'def h():\n'
           '    say("note: no --base given")  # a note, not an error\n'
           '    raise TracemarkError("a " + f"{1}" f" then --seed")\n')
    assert [s.split(":")[0] for s in flags_in_errors(src)] == ["4", "5", "6", "12"]


@pytest.mark.parametrize("path", [p for p in _py_files("tracemark") if "cli" not in p.relative_to(ROOT).parts],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_library_errors_name_arguments_not_flags(path):
    bad = flags_in_errors(path.read_text())
    assert bad == [], (f"{path.relative_to(ROOT)}: errors name command-line flags {bad}; name the function's "
                       "argument and list it in params= (TracemarkError(..., params=('min_marked',))): the CLI "
                       "turns it into the flag (tracemark.cli.errors.FLAGS)")
