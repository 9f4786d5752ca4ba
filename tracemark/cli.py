"""The ``tracemark`` command line (typer + rich).

Every user-caused failure is a :class:`TracemarkError`, printed as one line on stderr with exit
code 1; no command prints a traceback for bad input.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tracemark import __version__
from tracemark.errors import TracemarkError

app = typer.Typer(
    name="tracemark",
    help="Watermark image-caption datasets; detect and trace fine-tuning on them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _registry(home: Optional[Path]):
    from tracemark.registry import Registry

    return Registry(home)


def _progress(description: str) -> Progress:
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True, disable=not err_console.is_terminal and
                    not os.environ.get("TRACEMARK_PROGRESS"))


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)


HomeOpt = typer.Option(None, "--home", envvar="TRACEMARK_HOME", help="Registry folder (default ~/.tracemark).")


@app.command()
def init(home: Optional[Path] = HomeOpt, owner: str = typer.Option("owner", help="Owner name.")) -> None:
    """Create the registry and a new master key (mode 0600). Refuses to overwrite."""
    from tracemark.registry import Registry

    reg = Registry.init(home, owner)
    console.print(f"Initialised tracemark registry in [bold]{reg.home}[/] (master key: {reg.key_path}, mode 0600).")
    console.print("Back up the master key: every licensee key is derived from it.")


@app.command()
def protect(
    data_dir: Path = typer.Argument(..., help="Dataset in imagefolder layout (images + metadata.jsonl/csv)."),
    licensee: str = typer.Option(..., "--licensee", "-l", help="Who receives this copy."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the copy (must not exist)."),
    scheme: str = typer.Option("spread", help="spread | dwtdct | warp | visible"),
    strategy: str = typer.Option("trigger", help="trigger | ambient"),
    trigger_scope: str = typer.Option("licensee", help="licensee (own trigger word per copy) | dataset "
                                      "(one shared word: audits cost the same for any number of licensees)"),
    rate: float = typer.Option(0.02, help="Fraction of samples to mark."),
    strength: Optional[float] = typer.Option(None, help="Scheme strength (default: the scheme's)."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Scheme parameter KEY=VALUE, repeatable "
                                              "(e.g. -p cells=16 for the visible scheme); recorded in the registry."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name in the registry (default: folder name)."),
    on_error: str = typer.Option("fail", help="fail | skip: what to do with unreadable or unsupported images."),
    workers: Optional[int] = typer.Option(None, help="Worker processes for marking (default: up to 2)."),
    home: Optional[Path] = HomeOpt,
) -> None:
    """Issue a licensee a watermarked copy of a dataset."""
    from tracemark.protect import protect as do_protect
    from tracemark.schemes import parse_params

    params = parse_params(param)
    reg = _registry(home)
    with _progress("protect") as bar:
        task = bar.add_task("protect", total=None)
        res = do_protect(data_dir, out, licensee, registry=reg, dataset_name=dataset, scheme=scheme,
                         strategy=strategy, trigger_scope=trigger_scope, rate=rate, strength=strength, scheme_params=params, on_error=on_error,
                         workers=workers, progress=lambda d, t: bar.update(task, completed=d, total=t))
    console.print(f"Issued copy {res.copy_id} of [bold]{res.dataset}[/] to [bold]{res.licensee}[/] -> {res.out_dir}")
    console.print(f"  {res.n_marked}/{res.n_samples} samples marked ({res.scheme}, {res.strategy}, rate {res.rate:g}); "
                  f"PSNR mean {res.psnr_mean:.1f} dB (min {res.psnr_min:.1f}), SSIM mean {res.ssim_mean:.4f}")
    if res.skipped:
        console.print(f"  [yellow]skipped {len(res.skipped)} file(s):[/]")
        for line in res.skipped:
            console.print(f"    {line}")


@app.command()
def licensees(home: Optional[Path] = HomeOpt) -> None:
    """List licensees and how many copies each holds."""
    reg = _registry(home)
    table = Table("id", "licensee", "copies", "since")
    for r in reg.licensees():
        table.add_row(str(r["id"]), r["name"], str(r["n_copies"]), r["created"])
    console.print(table)


@app.command()
def copies(dataset: Optional[str] = typer.Option(None, help="Only this dataset."), home: Optional[Path] = HomeOpt) -> None:
    """List issued copies: dataset, licensee, scheme, strategy, rate, marked samples, key id."""
    reg = _registry(home)
    table = Table("id", "dataset", "licensee", "scheme", "strategy", "rate", "marked", "key id", "issued", "path")
    for c in reg.copies(dataset):
        table.add_row(str(c.id), c.dataset, c.licensee, c.scheme, c.strategy, f"{c.rate:g}", str(c.n_marked),
                      c.key_id, c.created, c.out_path or "")
    console.print(table)


def _print_verdict(verdict, top: int = 10) -> None:
    table = Table("copy", "dataset", "licensee", "scheme", "z", "p", "p (Holm)", "images", "named")
    for s in sorted(verdict.scores, key=lambda s: s.p_value)[:top]:
        table.add_row(str(s.copy_id), s.dataset, s.licensee, s.scheme, f"{s.z:.2f}", f"{s.p_value:.2e}",
                      f"{s.p_holm:.2e}", str(s.n_images), "[bold red]YES[/]" if s.named else "no")
    console.print(table)
    console.print(("[bold red]" if verdict.used else "[bold green]") + verdict.sentence() + "[/]")


@app.command("trace-files")
def trace_files_cmd(
    leaked_dir: Path = typer.Argument(..., help="Folder of leaked files (a copy, or some of its images)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the verdict as JSON here."),
    dataset: Optional[str] = typer.Option(None, help="Only test copies of this dataset."),
    alpha: float = typer.Option(0.01, help="Family-wise false-accusation rate."),
    decoys: int = typer.Option(1000, help="Decoy keys for the null distribution."),
    home: Optional[Path] = HomeOpt,
) -> None:
    """Name the licensee whose copy these leaked files come from (verdict + p-value)."""
    from tracemark.trace import trace_files

    reg = _registry(home)
    with _progress("reading") as bar:
        task = bar.add_task("read", total=None)
        verdict = trace_files(leaked_dir, reg, dataset=dataset, n_decoys=decoys, alpha=alpha,
                              progress=lambda d, t: bar.update(task, completed=d, total=t))
    result = {"tracemark_version": __version__, "kind": "trace-files", "input": str(leaked_dir), **verdict.to_dict()}
    reg.add_audit("trace-files", str(leaked_dir), verdict.used, verdict.p_value, result)
    _print_verdict(verdict)
    if json_out:
        _write_json(json_out, result)
        console.print(f"JSON written to {json_out}")


HEAVY_COMMANDS = {"sim", "finetune", "generate", "audit", "eval"}


def _mount_optional(argv: list[str] | None = None) -> None:
    """Attach the commands that import torch/diffusers only when they may be used.

    Importing torch costs seconds; ``protect`` and ``trace-files`` should not pay for it.
    """
    argv = sys.argv[1:] if argv is None else argv
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in HEAVY_COMMANDS:
        return
    # transformers warns about optional image-processing backends we never use
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        from tracemark.sim.cli import app as sim_app
        from tracemark.sim.cli import finetune_cmd, generate_cmd

        app.add_typer(sim_app, name="sim", help="The CPU stand-in for Stable Diffusion (tiny model, synthetic data).")
        app.command("finetune")(finetune_cmd)
        app.command("generate")(generate_cmd)
    except ImportError:
        pass
    try:
        from tracemark.eval.cli import app as eval_app

        app.add_typer(eval_app, name="eval", help="Experiments (docs/results.md): tracemark eval run --quick.")
    except ImportError:
        pass
    try:
        from tracemark.audit_cli import audit_cmd

        app.command("audit")(audit_cmd)
    except ImportError:
        pass


def main() -> None:
    _mount_optional()
    try:
        app(standalone_mode=True)
    except TracemarkError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]: nothing was written")
        sys.exit(130)


if __name__ == "__main__":
    main()
