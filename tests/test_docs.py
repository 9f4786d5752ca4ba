"""The user guides stay true to the program: docs/cli.md is what docs/cli_reference.py renders from
the command line as it is now, and the guides' relative links lead somewhere."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
#: The guides whose relative links are checked (the research logs are left as they are).
GUIDES = ("concepts.md", "protect.md", "tracing.md", "registry.md", "scale.md", "configuration.md", "cli.md")


def _reference_module():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_not_stale():
    ref = _reference_module()
    assert ref.main(["--check"]) == 0, (
        "docs/cli.md differs from the command line: regenerate it with `python docs/cli_reference.py > docs/cli.md`")


def test_cli_reference_covers_every_command_and_visible_option():
    ref = _reference_module()
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    root = ref.root_command(ref.load_app())
    ctx = ref.context(root, "tracemark")
    commands = ref.product_commands(root, ctx)
    assert {name for name, _ in commands} >= {"init", "protect", "materialize", "reissue", "trace-files", "audit",
                                              "backup", "restore", "status", "revoke", "copies", "licensees"}
    for name, command in commands:
        assert f"## `tracemark {name}`" in text
        sub = ref.context(command, name, ctx)
        for p in ref.visible_params(command, sub):
            if p.param_type_name == "option":
                assert f"`{ref.option_names(p)}`" in text, f"{name}: {p.opts[0]} missing from docs/cli.md"


def test_rendering_the_reference_imports_neither_torch_nor_diffusers():
    code = ("import runpy, sys; runpy.run_path(sys.argv[1])['render'](); "
            "sys.exit(1 if {'torch', 'diffusers'} & set(sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code, str(DOCS / "cli_reference.py")]).returncode == 0


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces to hyphens)."""
    found: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6} +(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n, unique = 0, slug
            while unique in found:
                n += 1
                unique = f"{slug}-{n}"
            found.add(unique)
    return found


def test_relative_links_of_the_guides_lead_to_files_and_headings():
    broken = []
    for name in GUIDES:
        text = (DOCS / name).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            page = DOCS / (path or name)
            if not page.exists():
                broken.append(f"{name}: {target}")
            elif anchor and page.suffix == ".md" and anchor not in _anchors(page.read_text(encoding="utf-8")):
                broken.append(f"{name}: {target} (no such heading)")
    assert not broken, broken
