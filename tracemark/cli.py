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


def _with_progress(description: str, run):
    """``run(progress)`` under a progress bar; ``progress(done, total)`` moves it."""
    with _progress(description) as bar:
        task = bar.add_task(description, total=None)
        return run(lambda d, t: bar.update(task, completed=d, total=t))


def _print_skipped(skipped: list[str], what: str) -> None:
    if skipped:
        console.print(f"  [yellow]{what} {len(skipped)} file(s):[/]")
        for line in skipped:
            console.print(f"    {line}")


def _write_json(path: Path, data: dict, force: bool) -> None:
    from tracemark.fsutil import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=float) + "\n", force=force)


def _check_out_dir(out: Path, home: Optional[Path]) -> None:
    from tracemark.fsutil import check_output_dir

    check_output_dir(out, "--out", home=home, new=False)  # protect/materialize say why an existing one is refused


HomeOpt = typer.Option(None, "--home", envvar="TRACEMARK_HOME", help="Registry folder (default ~/.tracemark).")
EngineOpt = typer.Option("local", "--engine", help="local (this machine's process pool) | ray (Ray tasks; "
                         "needs the optional ray package).")
AddressOpt = typer.Option(None, "--address", help="With --engine ray: a running Ray cluster (e.g. HOST:6379) whose "
                          "nodes see the input and output paths; default: a local Ray instance.")


@app.command()
def init(home: Optional[Path] = HomeOpt, owner: str = typer.Option("owner", help="Owner name.")) -> None:
    """Create the registry and a new master key (mode 0600). Refuses to overwrite."""
    from tracemark.registry import Registry

    reg = Registry.init(home, owner)
    console.print(f"Initialised tracemark registry in [bold]{reg.home}[/] (master key: {reg.key_path}, mode 0600).")
    console.print("Back up the master key: every licensee key is derived from it. Back up the registry too "
                  "(`tracemark backup FILE`): it is the only record of who got which copy.")


@app.command()
def backup(dest: Path = typer.Argument(..., help="Backup file to write (mode 0600); outside the tracemark home."),
           force: bool = typer.Option(False, "--force", help="Overwrite an existing backup file."),
           home: Optional[Path] = HomeOpt) -> None:
    """Write a consistent backup of the registry (SQLite online backup; safe while other commands run).

    The master key is not in it: keep a copy of master.key apart (every licensee key derives from it)."""
    reg = _registry(home)
    path = reg.backup(dest, force=force)
    console.print(f"Registry backed up to {path}")
    console.print(f"  The master key is not in the backup: keep {reg.key_path} safe apart from it.")


@app.command()
def restore(backup_file: Path = typer.Argument(..., help="A file written by `tracemark backup`."),
            home: Optional[Path] = HomeOpt) -> None:
    """Put a registry backup in place (the file it replaces is kept beside it)."""
    from tracemark.registry import default_home
    from tracemark.registry import restore as _restore

    res = _restore(home or default_home(), backup_file)
    console.print(f"Registry restored from {backup_file} to {res.db}")
    if res.replaced is not None:
        console.print(f"  The registry it replaced is kept as {res.replaced}")
    if res.not_in_backup:
        err_console.print(f"[yellow]warning:[/] {len(res.not_in_backup)} cop{'y' if len(res.not_in_backup) == 1 else 'ies'}"
                          f" recorded in the replaced registry {'is' if len(res.not_in_backup) == 1 else 'are'} not in "
                          f"this backup ({', '.join(res.not_in_backup[:5])}{', ...' if len(res.not_in_backup) > 5 else ''}):"
                          f" they cannot be traced until {res.replaced} is restored instead", highlight=False,
                          soft_wrap=True)


@app.command()
def protect(
    data_dir: Path = typer.Argument(..., help="Dataset in imagefolder layout (images + metadata.jsonl/csv)."),
    licensee: Optional[str] = typer.Option(None, "--licensee", "-l", help="Who receives this copy."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder for the copy (must not exist)."),
    scheme: str = typer.Option("spread", help="spread | tile | spectral | dwtdct | warp | visible"),
    strategy: str = typer.Option("trigger", help="trigger | ambient"),
    trigger_scope: str = typer.Option("licensee", help="licensee (own trigger word per copy) | dataset "
                                      "(one shared word: audits cost the same for any number of licensees)"),
    rate: float = typer.Option(0.02, help="Fraction of samples to mark (raised to --min-marked)."),
    min_marked: int = typer.Option(50, "--min-marked", help="Mark at least this many samples per copy (never more "
                                   "than 10% of the dataset by this rule): detection through a model follows the "
                                   "number of marked samples; 50 is the smallest count measured to work. 0 = off."),
    selection: str = typer.Option("visual", help="visual (keyed whole clusters of look-alike images: the measured "
                                  "default) | random (a keyed random subset) | coherent (a keyed caption "
                                  "neighbourhood) | cluster (a keyed caption cluster)."),
    strength: Optional[float] = typer.Option(None, help="Scheme strength (default: 3.15/255 for spread, >= 38 dB; "
                                             "the scheme's own default for the others)."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Scheme parameter KEY=VALUE, repeatable "
                                              "(e.g. -p cells=16 for the visible scheme); recorded in the registry."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name in the registry (default: folder name)."),
    on_error: str = typer.Option("fail", help="fail | skip: what to do with unreadable or unsupported images."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say how many samples would be marked and what the "
                                 "measurements say about detecting them; write nothing."),
    workers: Optional[int] = typer.Option(None, help="Worker processes for marking (default: up to 2)."),
    engine: str = EngineOpt,
    address: Optional[str] = AddressOpt,
    home: Optional[Path] = HomeOpt,
) -> None:
    """Issue a licensee a watermarked copy of a dataset."""
    from tracemark.protect import plan_copy
    from tracemark.protect import protect as do_protect
    from tracemark.schemes import parse_params

    params = parse_params(param)
    if dry_run:
        plan = plan_copy(data_dir, dataset_name=dataset, scheme=scheme, rate=rate, selection=selection,
                         strength=strength, scheme_params=params, min_marked=min_marked)
        console.print(f"Dry run: a copy of [bold]{plan.dataset}[/] would mark {plan.n_marked} of {plan.n_samples} "
                      f"samples ({plan.scheme} {plan.strength:g}, {plan.selection} selection, rate {plan.rate:g}, "
                      f"at least {plan.min_marked}); nothing was written.")
        _print_forecast(plan.forecast, capped=plan.capped)
        return
    if licensee is None or out is None:
        raise TracemarkError("protect needs --licensee NAME and --out FOLDER (or --dry-run)")
    _check_out_dir(out, home)
    reg = _registry(home)
    res = _with_progress("protect", lambda progress: do_protect(
        data_dir, out, licensee, registry=reg, dataset_name=dataset, scheme=scheme, strategy=strategy,
        trigger_scope=trigger_scope, rate=rate, selection=selection, strength=strength, scheme_params=params,
        min_marked=min_marked, on_error=on_error, workers=workers, progress=progress, engine=engine, address=address))
    console.print(f"Issued copy {res.copy_id} of [bold]{res.dataset}[/] to [bold]{res.licensee}[/] -> {res.out_dir}")
    console.print(f"  {res.n_marked}/{res.n_samples} samples marked ({res.scheme}, {res.strategy}, rate {res.rate:g}, "
                  f"at least {min_marked}); PSNR mean {res.psnr_mean:.1f} dB (min {res.psnr_min:.1f}), "
                  f"SSIM mean {res.ssim_mean:.4f}")
    if res.forecast is not None:
        _print_forecast(res.forecast, capped=res.n_marked < min(min_marked, res.n_samples))
    _print_skipped(res.skipped, "skipped")


def _print_forecast(fc, capped: bool) -> None:
    """The measured power curve's word on this many marked samples (tracemark/data/power_curve.json)."""
    for line in fc.lines():
        console.print(f"  {line}", highlight=False)
    if not fc.enough:
        why = (" (--min-marked is capped at 10% of the dataset)" if capped else "")
        err_console.print(f"[yellow]warning:[/] {fc.n_marked} marked sample(s) per copy{why}: the measurements say a "
                          f"model fine-tuned on this copy would most likely not be detected; about {fc.needed} marked "
                          "samples are needed (a larger dataset, or a higher --rate / --min-marked). Leaked files "
                          "are still traced.", highlight=False, soft_wrap=True)


@app.command()
def materialize(
    licensee: str = typer.Argument(..., help="Whose issued copy to re-derive."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (must not exist)."),
    dataset: Optional[str] = typer.Option(None, help="The copy's dataset (needed when the licensee holds several)."),
    data: Optional[Path] = typer.Option(None, "--data", help="The original dataset (default: the folder recorded "
                                        "when the copy was issued); its content hash must match the registry's."),
    fmt: str = typer.Option("folder", "--format", help="folder (imagefolder, identical to the issued copy) | "
                            "webdataset (.tar shards)."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Samples per WebDataset shard."),
    workers: Optional[int] = typer.Option(None, help="Worker processes for marking (default: up to 2)."),
    engine: str = EngineOpt,
    address: Optional[str] = AddressOpt,
    home: Optional[Path] = HomeOpt,
) -> None:
    """Re-derive a licensee's issued copy from the registry, the original data and the master key."""
    from tracemark.materialize import materialize as do_materialize

    _check_out_dir(out, home)
    reg = _registry(home)
    res = _with_progress("materialize", lambda progress: do_materialize(
        reg, licensee, out, dataset=dataset, data_dir=data, fmt=fmt, shard_size=shard_size, workers=workers,
        engine=engine, address=address, progress=progress))
    what = f"{len(res.shards)} WebDataset shard(s)" if res.fmt == "webdataset" else "an imagefolder"
    console.print(f"Materialized copy {res.copy_id} of [bold]{res.dataset}[/] for [bold]{res.licensee}[/] -> "
                  f"{res.out_dir} ({what}; {res.n_marked}/{res.n_samples} samples marked)")
    _print_skipped(res.skipped, "as the issued copy did, left out")


JsonOpt = typer.Option(False, "--json", help="Print JSON lines instead of a table (scripts, narrow terminals).")


def _table(*columns: str) -> Table:
    # no ellipsis: names wrap instead of being cut to illegibility in a narrow or piped terminal
    t = Table(*columns)
    for col in t.columns:
        col.overflow = "fold"
    return t


@app.command()
def licensees(home: Optional[Path] = HomeOpt, as_json: bool = JsonOpt) -> None:
    """List licensees and how many copies each holds."""
    reg = _registry(home)
    rows = [{"id": r["id"], "licensee": r["name"], "copies": r["n_copies"], "since": r["created"]}
            for r in reg.licensees()]
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    table = _table("id", "licensee", "copies", "since")
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    console.print(table)


@app.command()
def copies(dataset: Optional[str] = typer.Option(None, help="Only this dataset."), home: Optional[Path] = HomeOpt,
           as_json: bool = JsonOpt) -> None:
    """List issued copies: dataset, licensee, scheme, strategy, rate, marked samples, key id."""
    reg = _registry(home)
    rows = [{"id": c.id, "dataset": c.dataset, "licensee": c.licensee, "scheme": c.scheme, "strategy": c.strategy,
             "rate": c.rate, "marked": c.n_marked, "key_id": c.key_id, "issued": c.created, "path": c.out_path or ""}
            for c in reg.copies(dataset)]
    if as_json:
        for r in rows:
            print(json.dumps(r))
        _print_pending(reg, dataset)
        return
    table = _table("id", "dataset", "licensee", "scheme", "strategy", "rate", "marked", "key id", "issued", "path")
    for r in rows:
        table.add_row(*(f"{v:g}" if isinstance(v, float) else str(v) for v in r.values()))
    console.print(table)
    _print_pending(reg, dataset)


def _print_pending(reg, dataset: Optional[str]) -> None:
    """Copies whose protect was interrupted before their folder was written: not issued, not traced."""
    for p in reg.pending_copies():
        if dataset is None or p["dataset"] == dataset:
            err_console.print(f"[yellow]interrupted:[/] copy {p['id']} of {p['dataset']} for {p['licensee']} "
                              f"({p['out_path']}) was never written; rerun the same `tracemark protect` command",
                              highlight=False, soft_wrap=True)


def _print_verdict(verdict, top: int = 10) -> None:
    table = Table("copy", "dataset", "licensee", "scheme", "z", "p", "p (Holm)", "images", "named")
    for s in sorted(verdict.scores, key=lambda s: s.p_value)[:top]:
        table.add_row(str(s.copy_id), s.dataset, s.licensee, s.scheme, f"{s.z:.2f}", f"{s.p_value:.2e}",
                      f"{s.p_holm:.2e}", str(s.n_images), "[bold red]YES[/]" if s.named else "no")
    console.print(table)
    for line in getattr(verdict, "untested", []):
        err_console.print(f"[yellow]not tested:[/] {line}", highlight=False, soft_wrap=True)
    # three outcomes: named (red), no evidence (yellow: never a green acquittal), error (one line, exit 1)
    console.print(("[bold red]" if verdict.used else "[bold yellow]") + verdict.sentence() + "[/]", highlight=False)


@app.command("trace-files")
def trace_files_cmd(
    leaked_dir: Path = typer.Argument(..., help="Folder of leaked files (a copy, or some of its images)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the verdict as JSON here (- for standard "
                                            "output); never inside the tracemark home, never over a file unless "
                                            "--force."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --json file."),
    dataset: Optional[str] = typer.Option(None, help="Only test copies of this dataset."),
    alpha: float = typer.Option(0.01, help="Family-wise false-accusation rate."),
    decoys: int = typer.Option(1000, help="Decoy keys for the null distribution."),
    data: Optional[Path] = typer.Option(None, "--data", help="The original dataset (recommended): test outside "
                                        "its content subspace, so no key aligned by chance with the domain is accused."),
    home: Optional[Path] = HomeOpt,
) -> None:
    """Name the licensee whose copy these leaked files come from (verdict + p-value)."""
    from tracemark.fsutil import check_output_file
    from tracemark.trace import trace_files

    to_stdout = json_out is not None and str(json_out) == "-"
    if to_stdout:
        json_out = None
    check_output_file(json_out, "--json", force=force, home=home)
    reg = _registry(home)
    with _progress("reading") as bar:
        task = bar.add_task("read", total=None)
        verdict = trace_files(leaked_dir, reg, dataset=dataset, n_decoys=decoys, alpha=alpha,
                              progress=lambda d, t: bar.update(task, completed=d, total=t), data_dir=data)
    if not verdict.timings.get("content_from"):
        err_console.print("[yellow]note:[/] the original dataset was not found (pass --data): tested without the "
                          "content projection, so a key aligned by chance with the domain is not guarded against",
                          highlight=False, soft_wrap=True)
    result = {"tracemark_version": __version__, "kind": "trace-files", "input": str(leaked_dir), **verdict.to_dict()}
    reg.add_audit("trace-files", str(leaked_dir), verdict.used, verdict.p_value, result)
    if to_stdout:
        print(json.dumps(result, default=float))
        return
    _print_verdict(verdict)
    if json_out:
        _write_json(json_out, result, force)
        console.print(f"JSON written to {json_out}")


HEAVY_COMMANDS = {"sim", "finetune", "shadow", "generate", "audit", "eval"}


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
        from tracemark.audit_cli import generate_cmd

        app.command("generate")(generate_cmd)
    except ImportError:
        pass
    from tracemark.train_cli import finetune_cmd, shadow_cmd  # (light: torch is imported when they run)

    app.command("finetune")(finetune_cmd)
    app.command("shadow")(shadow_cmd)
    if first in (None, "sim", "eval"):  # the test world is loaded only for its own commands
        try:
            from tracemark.sim.cli import app as sim_app

            app.add_typer(sim_app, name="sim", help="The CPU stand-in for Stable Diffusion (tiny model, synthetic data).")
        except ImportError:
            pass
    if first in (None, "eval"):
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


_signalled: list[int] = []


def _on_signal(signum, frame) -> None:
    """Ctrl-C and SIGTERM unwind as KeyboardInterrupt, so every cleanup (temporary folders, pending
    registry rows, pool workers) runs; main() then says so in one line."""
    _signalled.append(signum)
    raise KeyboardInterrupt


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        _mount_optional()  # imports torch (seconds): Ctrl-C there is an interrupt like any other
        app(standalone_mode=True)
    except TracemarkError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        _signalled.append(signal.SIGINT)
    except SystemExit:
        if not _signalled:
            raise
    except OSError as exc:  # disk full, read-only folder, ...: one line naming the file
        where = exc.filename or ""
        err_console.print(f"[bold red]error:[/] {where}{': ' if where else ''}{exc.strerror or exc}",
                          highlight=False, soft_wrap=True)
        sys.exit(1)
    if _signalled:
        err_console.print("[bold red]interrupted[/]: nothing half-written was left behind")
        sys.exit(130)


if __name__ == "__main__":
    main()
