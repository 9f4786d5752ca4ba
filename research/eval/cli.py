"""``python -m research.eval``: the experiments of docs/research/results.md from one entry point.

    python -m research.eval run --quick     # one fine-tuned model + every analysis, <= 10 min on 2 cores
    python -m research.eval run             # the full grid (priority order; resumable), then the analyses
    python -m research.eval analyze         # re-run the analyses on the models finished so far
    python -m research.eval learnability|calibration|tracing -- [module options]

Every runner appends finished cells to its CSV and skips them when re-run, so an interrupted run
loses at most the cell in progress (and that resumes from its last fine-tuning checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

console = Console(stderr=True)
app = typer.Typer(help="Experiments: effectiveness, power, harm, robustness, transfer, tracing, baseline.",
                  no_args_is_help=True, add_completion=False)


@app.command("run")
def run_cmd(
    quick: bool = typer.Option(False, "--quick", help="One model (visible cells=16, trigger, LoRA, 10%) and the analyses."),
    out: Path = typer.Option(Path("results"), "--out", help="Folder for the CSV and PNG results."),
    work: Path = typer.Option(Path("results/tmp/grid"), "--work", help="Models, images and registries (kept)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base pipeline (default: the committed tiny base)."),
) -> None:
    """Fine-tune the grid's models (skipping finished ones), then write every analysis."""
    from research.eval import analyze, grid

    name = "quick" if quick else "full"
    csv = out / ("grid_quick.csv" if quick else "grid.csv")
    grid.run(grid.plan(name), work, csv, base=base, log=lambda m: console.print(m, highlight=False))
    analyze.analyse(csv, work, out / "quick" if quick else out, log=lambda m: console.print(m, highlight=False))


@app.command("analyze")
def analyze_cmd(
    grid_csv: Path = typer.Option(Path("results/grid.csv"), "--grid"),
    work: Path = typer.Option(Path("results/tmp/grid"), "--work"),
    out: Path = typer.Option(Path("results"), "--out"),
    only: Optional[List[str]] = typer.Option(None, "--only", help="Subset of: effectiveness null_check "
                                             "power robustness_generated harm baseline"),
) -> None:
    """Re-run the analyses on the fine-tuned models finished so far (no fine-tuning)."""
    from tracemark.errors import TracemarkError
    from research.eval import analyze

    if not grid_csv.exists():
        raise TracemarkError(f"{grid_csv}: no grid results yet; run `python -m research.eval run` first")
    bad = set(only or []) - set(analyze.ANALYSES)
    if bad:
        raise TracemarkError(f"unknown analysis {sorted(bad)[0]!r} (choose: {', '.join(analyze.ANALYSES)})")
    analyze.analyse(grid_csv, work, out, only or analyze.ANALYSES, log=lambda m: console.print(m, highlight=False))


def _passthrough(module: str):
    def cmd(ctx: typer.Context) -> None:
        import importlib

        importlib.import_module(f"research.eval.{module}").main(ctx.args)

    cmd.__doc__ = f"python -m research.eval.{module} (options after --; see --help there)."
    return cmd


for _m in ("learnability", "calibration", "tracing"):
    app.command(_m, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(_passthrough(_m))


def main(argv: list[str] | None = None) -> None:
    """Run the app; a :class:`tracemark.errors.TracemarkError` is one line on stderr and exit 1."""
    from tracemark.errors import TracemarkError

    try:
        app(args=argv, prog_name="python -m research.eval")
    except TracemarkError as e:
        console.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        raise SystemExit(1) from None
