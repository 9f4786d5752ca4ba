"""What every command prints: the two consoles, progress bars, tables whose numbers are never cut,
and JSON written to a file or to standard output."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

#: Results on standard output; notes, warnings, progress and errors on standard error.
console = Console()
err_console = Console(stderr=True)


def progress(description: str) -> Progress:
    """A bar with count and ETA on stderr; quiet when stderr is not a terminal (unless TRACEMARK_PROGRESS)."""
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True, disable=not err_console.is_terminal and
                    not os.environ.get("TRACEMARK_PROGRESS"))


def with_progress(description: str, run):
    """``run(progress)`` under a progress bar; ``progress(done, total)`` moves it."""
    with progress(description) as bar:
        task = bar.add_task(description, total=None)
        return run(lambda d, t: bar.update(task, completed=d, total=t))


def print_skipped(skipped: list[str], what: str) -> None:
    if skipped:
        console.print(f"  [yellow]{what} {len(skipped)} file(s):[/]")
        for line in skipped:
            console.print(f"    {line}")


def check_out_dir(out: Path, home: Optional[Path]) -> None:
    from tracemark.io.safe_write import check_output_dir

    check_output_dir(out, "--out", home=home, new=False)  # protect/materialize say why an existing one is refused


def check_json_out(json_out: Optional[Path], force: bool, home: Optional[Path]) -> None:
    """Refuse a --json FILE before any work is done (inside the home, over a file without --force, ...)."""
    from tracemark.io.safe_write import check_output_file

    if json_out is not None and str(json_out) != "-":
        check_output_file(json_out, "--json", force=force, home=home)


def write_json(path: Path, data: Any, force: bool) -> None:
    from tracemark.io.safe_write import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=float) + "\n", force=force)


def emit_json(data: Any, json_out: Optional[Path], force: bool) -> None:
    """``--json -``: the document on standard output; ``--json FILE``: written atomically."""
    if json_out is None:
        return
    if str(json_out) == "-":
        print(json.dumps(data, default=float))
        return
    write_json(json_out, data, force)
    err_console.print(f"JSON written to {json_out}", highlight=False, soft_wrap=True)


def cell(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[str] = (),
                optional: Sequence[str] = (), styles: Optional[dict[tuple[int, str], str]] = None) -> None:
    """A table whose numbers are never cut.

    Not a terminal (piped, redirected): plain space-aligned text, every cell whole, no colour. In a
    terminal: numeric columns never wrap; when the table is wider than the terminal, the
    ``optional`` columns (decorative, in the order given) are dropped first (one that holds a single
    value is said above the table instead), then text columns fold; if the numbers alone are still
    too wide, plain text again (the terminal wraps the line, but no digit is lost)."""
    styles = styles or {}
    cols = list(headers)

    def width_of(c: str) -> int:
        i = headers.index(c)
        return max([len(c)] + [len(r[i]) for r in rows])

    def needed(cs: list[str]) -> int:  # the narrowest the table can be with these columns
        return sum(width_of(c) if c in numeric else min(width_of(c), 8) for c in cs) + 3 * len(cs) + 1

    if not console.is_terminal:
        _print_plain(cols, [list(r) for r in rows], width_of)
        return
    said: list[str] = []
    for c in optional:
        if needed(cols) <= console.width:
            break
        i = headers.index(c)
        values = {r[i] for r in rows}
        cols.remove(c)
        if len(values) == 1:
            said.append(f"{c}: {values.pop()}")
    if said:
        console.print(Text("; ".join(said), style="dim"))
    if needed(cols) > console.width:
        _print_plain(cols, [[r[headers.index(c)] for c in cols] for r in rows], width_of)
        return
    table = Table(*cols)
    for col in table.columns:
        col.overflow = "fold"  # text wraps instead of being cut to "..."
        if col.header in numeric:
            col.no_wrap, col.min_width = True, width_of(str(col.header))
    for k, r in enumerate(rows):
        table.add_row(*(Text(r[headers.index(c)], style=styles.get((k, c), "")) for c in cols))
    console.print(table)


def _print_plain(cols: list[str], rows: list[list[str]], width_of) -> None:
    widths = [width_of(c) for c in cols]
    for line in [cols, *rows]:
        # write, not console.print: no markup, no highlighting, no wrapping at 80 columns
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() + "\n")
    sys.stdout.flush()
