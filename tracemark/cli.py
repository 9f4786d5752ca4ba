"""The ``tracemark`` command line (typer + rich).

Every user-caused failure is a :class:`TracemarkError`, printed as one line on stderr with exit
code 1; no command prints a traceback for bad input. Exit status (documented in ``--help`` and
docs/audit.md): 0 ran (nobody named), 1 error, 2 usage error, 3 a licensee was named, 130
interrupted. Every verdict is one JSON document (:data:`VERDICT_SCHEMA`).
"""

from __future__ import annotations

import enum
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from tracemark import __version__
from tracemark.engine import ENGINES
from tracemark.errors import TracemarkError
from tracemark.materialize import FORMATS
from tracemark.schemes import SCHEMES
from tracemark.strategies import SELECTIONS, STRATEGIES, TRIGGER_SCOPES

#: Exit status when a verdict names a licensee (trace-files, audit); 0 = ran and named nobody,
#: 1 = error, 2 = usage error (typer's), 130 = interrupted. 3 rather than 1 (grep, clamscan) because
#: 1 is already every error here and 2 typer's usage error: a script can tell all four apart.
EXIT_NAMED = 3
#: Version of the JSON document every verdict is written as (docs/audit.md, "The verdict as JSON").
VERDICT_SCHEMA = "tracemark.verdict/1"

PANEL_PROTECT = "Protect and trace"
PANEL_REGISTRY = "Registry"
PANEL_MODELS = "Models"
PANEL_RESEARCH = "Research (CPU test world)"

EXIT_CODES_HELP = ("Exit status: 0 ran (trace-files / audit: nobody named); 3 a licensee was named; "
                   "1 error (one line on stderr); 2 usage error; 130 interrupted. Verdicts as JSON: --json FILE "
                   "or --json - (docs/audit.md).")


def _choices(name: str, values: Sequence[str]) -> type[enum.Enum]:
    """A str enum of a module's own tuple of choices, so --help lists them and shells complete them."""
    return enum.Enum(name, [(v, v) for v in values], type=str)  # type: ignore[return-value]


Scheme = _choices("Scheme", list(SCHEMES))
Strategy = _choices("Strategy", STRATEGIES)
TriggerScope = _choices("TriggerScope", TRIGGER_SCOPES)
Selection = _choices("Selection", SELECTIONS)
OnError = _choices("OnError", ("fail", "skip"))
Engine = _choices("Engine", ENGINES)
Format = _choices("Format", FORMATS)


def _value(choice: Any) -> Any:
    return choice.value if isinstance(choice, enum.Enum) else choice


class _Command(TyperCommand):
    """typer's command with click's usage line (``DATA_DIR``, ``[MODEL]``: no ``{data_dir}``), no
    ``<bool>`` beside flags, and ``--json`` alone meaning ``--json -`` (standard output)."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)
        for p in params:
            if isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
                p.metavar = ""  # a flag takes no value: no type column
            elif isinstance(p, TyperArgument) and p.metavar is None:
                p.metavar = (p.name or "").upper()
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = (p.metavar or p.name or "").strip("[]")
                pieces.append((name if p.required else f"[{name}]") + ("..." if p.nargs != 1 else ""))
            else:
                pieces.extend(p.get_usage_pieces(ctx))
        return pieces

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if any(isinstance(p, TyperOption) and "--json" in p.opts and not p.is_flag for p in self.params):
            args = list(args)
            for i, a in enumerate(args):
                if a == "--":
                    break
                if a == "--json" and (i + 1 == len(args) or (args[i + 1].startswith("-") and args[i + 1] != "-")):
                    args.insert(i + 1, "-")
                    break
        return super().parse_args(ctx, args)


class _Group(TyperGroup):
    """The top-level group: no ``<bool>`` beside ``--help`` / ``--version``."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)
        for p in params:
            if isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
                p.metavar = ""
        return params


app = typer.Typer(
    name="tracemark",
    cls=_Group,
    help="Watermark image-caption datasets; detect and trace fine-tuning on them.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion: choices (--scheme, --strategy, ...) complete in the shell
)
console = Console()
err_console = Console(stderr=True)


def _command(name: Optional[str] = None, *, panel: str, example: str, **kw: Any):
    """``app.command`` with its help panel and an example line closing its --help."""
    return app.command(name, cls=_Command, rich_help_panel=panel, epilog=f"Example: {example}", **kw)


def _print_version(value: bool) -> None:
    if value:
        print(f"tracemark {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Watermark image-caption datasets; detect and trace fine-tuning on them."""


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


@_command(panel=PANEL_PROTECT, example="tracemark init --owner \"Example Photo Archive\"")
def init(home: Optional[Path] = HomeOpt, owner: str = typer.Option("owner", help="Owner name.")) -> None:
    """Create the registry and a new master key (mode 0600). Refuses to overwrite."""
    from tracemark.registry import Registry

    reg = Registry.init(home, owner)
    console.print(f"Initialised tracemark registry in [bold]{reg.home}[/] (master key: {reg.key_path}, mode 0600).")
    console.print("Back up the master key: every licensee key is derived from it. Back up the registry too "
                  "(`tracemark backup FILE`): it is the only record of who got which copy.")


@_command(panel=PANEL_REGISTRY, example="tracemark backup ~/registry-2026-05-01.bak")
def backup(dest: Path = typer.Argument(..., metavar="BACKUP_FILE", help="Backup file to write (mode 0600); outside the tracemark home."),
           force: bool = typer.Option(False, "--force", help="Overwrite an existing backup file."),
           with_key: bool = typer.Option(False, "--with-key", help="Put the master key in the backup too: one file "
                                         "restores everything, and is then as secret as the key itself."),
           home: Optional[Path] = HomeOpt) -> None:
    """Write a consistent backup of the registry (SQLite online backup; safe while other commands run).

    The master key is left out unless --with-key: keep a copy of master.key apart (every licensee key
    derives from it)."""
    reg = _registry(home)
    path = reg.backup(dest, force=force, with_key=with_key)
    console.print(f"Registry backed up to {path}")
    if with_key:
        err_console.print(f"[bold yellow]warning:[/] {path} holds the master key (mode 0600): whoever reads it can "
                          "derive every licensee key. Store it as you store master.key.", highlight=False,
                          soft_wrap=True)
    else:
        console.print(f"  The master key is not in the backup: keep {reg.key_path} safe apart from it "
                      "(or back up with --with-key).")


@_command(panel=PANEL_REGISTRY, example="tracemark restore ~/registry-2026-05-01.bak")
def restore(backup_file: Path = typer.Argument(..., metavar="BACKUP_FILE", help="A file written by `tracemark backup`."),
            home: Optional[Path] = HomeOpt) -> None:
    """Put a registry backup in place (the file it replaces is kept beside it)."""
    from tracemark.registry import default_home
    from tracemark.registry import restore as _restore

    res = _restore(home or default_home(), backup_file)
    console.print(f"Registry restored from {backup_file} to {res.db}")
    if res.key_installed:
        console.print(f"  The master key carried by the backup was put in {res.db.parent / 'master.key'} (mode 0600)")
    if res.replaced is not None:
        console.print(f"  The registry it replaced is kept as {res.replaced}")
    if res.not_in_backup:
        err_console.print(f"[yellow]warning:[/] {len(res.not_in_backup)} cop{'y' if len(res.not_in_backup) == 1 else 'ies'}"
                          f" recorded in the replaced registry {'is' if len(res.not_in_backup) == 1 else 'are'} not in "
                          f"this backup ({', '.join(res.not_in_backup[:5])}{', ...' if len(res.not_in_backup) > 5 else ''}):"
                          f" they cannot be traced until {res.replaced} is restored instead", highlight=False,
                          soft_wrap=True)


@_command(panel=PANEL_PROTECT, example="tracemark protect photos/ --licensee acme --out photos_acme/")
def protect(
    data_dir: Path = typer.Argument(..., metavar="DATA_DIR", help="Dataset in imagefolder layout (images + metadata.jsonl/csv)."),
    licensee: Optional[str] = typer.Option(None, "--licensee", "-l", help="Who receives this copy."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder for the copy (must not exist)."),
    scheme: Scheme = typer.Option("spread", help="Watermark scheme (docs/schemes.md)."),
    strategy: Strategy = typer.Option("trigger", help="trigger (marked samples get the licensee's secret "
                                      "trigger word) | ambient (no caption change)."),
    trigger_scope: TriggerScope = typer.Option("licensee", help="licensee (own trigger word per copy) | dataset "
                                      "(one shared word: audits cost the same for any number of licensees)"),
    rate: float = typer.Option(0.02, help="Fraction of samples to mark (raised to --min-marked)."),
    min_marked: int = typer.Option(50, "--min-marked", help="Mark at least this many samples per copy (never more "
                                   "than 10% of the dataset by this rule): detection through a model follows the "
                                   "number of marked samples; 50 is the smallest count measured to work. 0 = off."),
    selection: Selection = typer.Option("visual", help="visual (keyed whole clusters of look-alike images: the measured "
                                  "default) | random (a keyed random subset) | coherent (a keyed caption "
                                  "neighbourhood) | cluster (a keyed caption cluster)."),
    strength: Optional[float] = typer.Option(None, help="Scheme strength (default: 3.15/255 for spread, >= 38 dB; "
                                             "the scheme's own default for the others)."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Scheme parameter KEY=VALUE, repeatable "
                                              "(e.g. -p cells=16 for the visible scheme); recorded in the registry."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name in the registry (default: folder name)."),
    on_error: OnError = typer.Option("fail", help="fail | skip: what to do with unreadable or unsupported images."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say how many samples would be marked and what the "
                                 "measurements say about detecting them; write nothing."),
    workers: Optional[int] = typer.Option(None, help="Worker processes for marking (default: up to 2)."),
    engine: Engine = EngineOpt,
    address: Optional[str] = AddressOpt,
    home: Optional[Path] = HomeOpt,
    caption_column: Optional[str] = typer.Option(None, "--caption-column", help="Caption column of the metadata "
                                                 "(default: the one of text, caption, prompt, description it has)."),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="Image file column (default: file_name)."),
    link: str = typer.Option("copy", "--link", help="How unmarked files are written: copy | reflink (a copy-on-write "
                             "clone where the filesystem can) | hard (a hard link: no space used, but the copy's "
                             "unmarked files ARE your originals: writing to one in place changes the original)."),
) -> None:
    """Issue a licensee a watermarked copy of a dataset."""
    from tracemark.protect import plan_copy
    from tracemark.protect import protect as do_protect
    from tracemark.schemes import parse_params

    params = parse_params(param)
    scheme, strategy, trigger_scope, selection, on_error, engine = (
        _value(c) for c in (scheme, strategy, trigger_scope, selection, on_error, engine))
    if dry_run:
        plan = plan_copy(data_dir, dataset_name=dataset, scheme=scheme, rate=rate, selection=selection,
                         strength=strength, scheme_params=params, min_marked=min_marked,
                         caption_column=caption_column, image_column=image_column)
        if plan.columns_note:
            console.print(f"  {plan.columns_note}", highlight=False)
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
        min_marked=min_marked, on_error=on_error, workers=workers, progress=progress, engine=engine, address=address,
        caption_column=caption_column, image_column=image_column, link=link))
    console.print(f"Issued copy {res.copy_id} of [bold]{res.dataset}[/] to [bold]{res.licensee}[/] -> {res.out_dir}")
    console.print(f"  {res.n_marked}/{res.n_samples} samples marked ({res.scheme}, {res.strategy}, rate {res.rate:g}, "
                  f"at least {min_marked}); PSNR mean {res.psnr_mean:.1f} dB (min {res.psnr_min:.1f}), "
                  f"SSIM mean {res.ssim_mean:.4f}")
    if res.columns_note:
        console.print(f"  {res.columns_note}", highlight=False)
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


@_command(panel=PANEL_PROTECT, example="tracemark materialize acme --out photos_acme_again/")
def materialize(
    licensee: str = typer.Argument(..., metavar="LICENSEE", help="Whose issued copy to re-derive."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (must not exist)."),
    dataset: Optional[str] = typer.Option(None, help="The copy's dataset (needed when the licensee holds several)."),
    data: Optional[Path] = typer.Option(None, "--data", help="The original dataset (default: the folder recorded "
                                        "when the copy was issued); its content hash must match the registry's."),
    fmt: Format = typer.Option("folder", "--format", help="folder (imagefolder, identical to the issued copy) | "
                            "webdataset (.tar shards)."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Samples per WebDataset shard."),
    workers: Optional[int] = typer.Option(None, help="Worker processes for marking (default: up to 2)."),
    engine: Engine = EngineOpt,
    address: Optional[str] = AddressOpt,
    home: Optional[Path] = HomeOpt,
) -> None:
    """Re-derive a licensee's issued copy from the registry, the original data and the master key."""
    from tracemark.materialize import materialize as do_materialize

    fmt, engine = _value(fmt), _value(engine)
    _check_out_dir(out, home)
    reg = _registry(home)
    res = _with_progress("materialize", lambda progress: do_materialize(
        reg, licensee, out, dataset=dataset, data_dir=data, fmt=fmt, shard_size=shard_size, workers=workers,
        engine=engine, address=address, progress=progress))
    what = f"{len(res.shards)} WebDataset shard(s)" if res.fmt == "webdataset" else "an imagefolder"
    console.print(f"Materialized copy {res.copy_id} of [bold]{res.dataset}[/] for [bold]{res.licensee}[/] -> "
                  f"{res.out_dir} ({what}; {res.n_marked}/{res.n_samples} samples marked)")
    _print_skipped(res.skipped, "as the issued copy did, left out")


from tracemark.hf import import_hf_cmd  # noqa: E402  (light: datasets is imported only when it runs)
from tracemark.registry_cli import reissue_cmd, revoke_cmd, status_cmd  # noqa: E402  (light: no torch)

_command("status", panel=PANEL_REGISTRY, example="tracemark status")(status_cmd)
_command("revoke", panel=PANEL_REGISTRY, example="tracemark revoke acme --reason \"licence ended\"")(revoke_cmd)
_command("reissue", panel=PANEL_PROTECT, example="tracemark reissue acme --out photos_acme_2/")(reissue_cmd)

_command("import-hf", panel=PANEL_PROTECT, example="tracemark import-hf ./hf_photos --out ./photos && "
         "tracemark protect ./photos -l acme -o ./photos_acme")(import_hf_cmd)


def _json_opt(what: str):
    return typer.Option(None, "--json", metavar="FILE|-", help=f"Write {what} as one JSON document to FILE, or "
                        "print it (--json alone or --json -); never inside the tracemark home, never over a file "
                        "unless --force.")


JsonlOpt = typer.Option(False, "--jsonl", help="Print one JSON object a line instead of a table (streaming).")
ForceOpt = typer.Option(False, "--force", help="Overwrite an existing --json file.")


def _cell(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[str] = (),
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


def _emit_json(data: Any, json_out: Optional[Path], force: bool, home: Optional[Path] = None) -> None:
    """``--json -``: the document on standard output; ``--json FILE``: written atomically."""
    if json_out is None:
        return
    if str(json_out) == "-":
        print(json.dumps(data, default=float))
        return
    _write_json(json_out, data, force)
    err_console.print(f"JSON written to {json_out}", highlight=False, soft_wrap=True)


def _check_json_out(json_out: Optional[Path], force: bool, home: Optional[Path]) -> None:
    from tracemark.fsutil import check_output_file

    if json_out is not None and str(json_out) != "-":
        check_output_file(json_out, "--json", force=force, home=home)


@_command(panel=PANEL_REGISTRY, example="tracemark licensees --json -")
def licensees(home: Optional[Path] = HomeOpt, json_out: Optional[Path] = _json_opt("the list"),
              jsonl: bool = JsonlOpt, force: bool = ForceOpt) -> None:
    """List licensees and how many copies each holds."""
    _check_json_out(json_out, force, home)
    reg = _registry(home)
    rows = [{"id": r["id"], "licensee": r["name"], "copies": r["n_copies"], "since": r["created"]}
            for r in reg.licensees()]
    if jsonl:
        for r in rows:
            print(json.dumps(r))
        return
    if json_out is not None:
        _emit_json(rows, json_out, force)
        if str(json_out) == "-":
            return
    _print_table(["id", "licensee", "copies", "since"], [[_cell(v) for v in r.values()] for r in rows],
                 numeric=["id", "copies", "since"])


@_command(panel=PANEL_REGISTRY, example="tracemark copies --dataset photos")
def copies(dataset: Optional[str] = typer.Option(None, help="Only this dataset."), home: Optional[Path] = HomeOpt,
           json_out: Optional[Path] = _json_opt("the list"), jsonl: bool = JsonlOpt, force: bool = ForceOpt) -> None:
    """List issued copies: dataset, licensee, scheme, strategy, rate, marked samples, key id."""
    _check_json_out(json_out, force, home)
    reg = _registry(home)
    rows = [{"id": c.id, "dataset": c.dataset, "licensee": c.licensee, "scheme": c.scheme, "strategy": c.strategy,
             "rate": c.rate, "marked": c.n_marked, "key_id": c.key_id, "issued": c.created,
             "status": c.status if not c.generation else f"{c.status} (gen {c.generation})", "path": c.out_path or ""}
            for c in reg.copies(dataset)]
    if jsonl:
        for r in rows:
            print(json.dumps(r))
    elif json_out is not None:
        _emit_json(rows, json_out, force)
    if jsonl or (json_out is not None and str(json_out) == "-"):
        _print_pending(reg, dataset)
        return
    headers = ["id", "dataset", "licensee", "scheme", "strategy", "rate", "marked", "key id", "issued", "status", "path"]
    _print_table(headers, [[_cell(v) for v in r.values()] for r in rows],
                 numeric=["id", "rate", "marked", "key id", "issued"], optional=["strategy", "scheme", "dataset"])
    _print_pending(reg, dataset)


def _print_pending(reg, dataset: Optional[str]) -> None:
    """Copies whose protect was interrupted before their folder was written: not issued, not traced."""
    for p in reg.pending_copies():
        if dataset is None or p["dataset"] == dataset:
            err_console.print(f"[yellow]interrupted:[/] copy {p['id']} of {p['dataset']} for {p['licensee']} "
                              f"({p['out_path']}) was never written; rerun the same `tracemark protect` command",
                              highlight=False, soft_wrap=True)


def licensee_rows(verdict) -> list[dict]:
    """One entry per tested copy, the same keys for every kind of verdict (``licensees`` in the JSON)."""
    return [{"id": s.copy_id, "licensee": s.licensee, "dataset": s.dataset, "scheme": s.scheme,
             "strategy": s.strategy, "score": s.statistic, "z": s.z, "p_value": s.p_value, "p_holm": s.p_holm,
             "p_empirical": s.p_empirical, "n_images": s.n_images, "n_matched": getattr(s, "n_matched", 0),
             "named": s.named, "stage": getattr(s, "stage", 1)} for s in verdict.scores]


#: Fields every verdict document starts with, whatever its kind (docs/audit.md).
VERDICT_FIELDS = ("schema", "tracemark_version", "kind", "target", "used", "named", "p_value", "alpha", "sentence",
                  "n_images", "n_decoys", "licensees")


def verdict_document(kind: str, target: str, verdict, extra: Optional[dict] = None) -> dict:
    """The one JSON schema of a verdict (trace-files and every audit): :data:`VERDICT_FIELDS` first,
    then the kind's own fields (``extra``; they never replace the common ones, except ``n_images``)."""
    doc = {"schema": VERDICT_SCHEMA, "tracemark_version": __version__, "kind": kind, "target": target,
           "used": bool(verdict.used), "named": list(verdict.named), "p_value": verdict.p_value,
           "alpha": verdict.alpha, "sentence": verdict.sentence(), "n_images": verdict.n_images,
           "n_decoys": verdict.n_decoys, "licensees": licensee_rows(verdict)}
    for k, v in (extra or {}).items():
        if k not in doc or k == "n_images":
            doc[k] = v
    return doc


def exit_for(verdict) -> None:
    """Exit :data:`EXIT_NAMED` when the verdict names a licensee (scripts tell named from not named)."""
    if verdict.used:
        raise typer.Exit(EXIT_NAMED)


def _print_verdict(verdict, top: int = 10) -> None:
    scores = sorted(verdict.scores, key=lambda s: s.p_value)[:top]
    matched = any(getattr(s, "n_matched", 0) for s in scores)
    headers = ["copy", "dataset", "licensee", "scheme", "z", "p", "p (Holm)", "images",
               *(["matched"] if matched else []), "named"]
    rows, styles = [], {}
    for k, s in enumerate(scores):
        rows.append([str(s.copy_id), s.dataset, s.licensee, s.scheme, f"{s.z:.2f}", f"{s.p_value:.2e}",
                     f"{s.p_holm:.2e}", str(s.n_images), *([str(s.n_matched)] if matched else []),
                     "YES" if s.named else "no"])
        if s.named:
            styles[(k, "named")] = "bold red"
    _print_table(headers, rows, numeric=["copy", "z", "p", "p (Holm)", "images", "matched", "named"],
                 optional=["scheme", "dataset", "images"], styles=styles)
    for line in getattr(verdict, "untested", []):
        err_console.print(f"[yellow]not tested:[/] {line}", highlight=False, soft_wrap=True)
    # three outcomes: named (red), no evidence (yellow: never a green acquittal), error (one line, exit 1)
    console.print(Text(verdict.sentence(), style="bold red" if verdict.used else "bold yellow"), highlight=False,
                  soft_wrap=not console.is_terminal)  # piped: one line, as grep expects


@_command("trace-files", panel=PANEL_PROTECT,
          example="tracemark trace-files leaked/ --data photos/ --json verdict.json")
def trace_files_cmd(
    leaked_dir: Path = typer.Argument(..., metavar="LEAKED_DIR", help="Folder of leaked files (a copy, or some of "
                                      "its images)."),
    json_out: Optional[Path] = _json_opt("the verdict"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --json file."),
    dataset: Optional[str] = typer.Option(None, help="Only test copies of this dataset."),
    alpha: float = typer.Option(0.01, help="Family-wise false-accusation rate."),
    decoys: int = typer.Option(1000, help="Decoy keys for the null distribution."),
    data: Optional[Path] = typer.Option(None, "--data", help="The original dataset (recommended): test outside "
                                        "its content subspace, so no key aligned by chance with the domain is accused."),
    home: Optional[Path] = HomeOpt,
) -> None:
    """Name the licensee whose copy these leaked files come from (verdict + p-value; exit 3 when named)."""
    from tracemark.trace import trace_files

    _check_json_out(json_out, force, home)
    to_stdout = json_out is not None and str(json_out) == "-"
    reg = _registry(home)
    with _progress("reading") as bar:
        task = bar.add_task("read", total=None)
        verdict = trace_files(leaked_dir, reg, dataset=dataset, n_decoys=decoys, alpha=alpha,
                              progress=lambda d, t: bar.update(task, completed=d, total=t), data_dir=data)
    if not verdict.timings.get("content_from"):
        err_console.print("[yellow]note:[/] the original dataset was not found (pass --data): tested without the "
                          "content projection, so a key aligned by chance with the domain is not guarded against",
                          highlight=False, soft_wrap=True)
    d = verdict.to_dict()
    result = verdict_document("trace-files", str(leaked_dir), verdict, {
        "params": {"dataset": dataset, "alpha": alpha, "n_decoys": decoys, "data": str(data) if data else None},
        "null": d["null"], "timings": d["timings"], "untested": d["untested"], "warnings": d["warnings"]})
    reg.add_audit("trace-files", str(leaked_dir), verdict.used, verdict.p_value, result)
    if not to_stdout:
        _print_verdict(verdict)
    _emit_json(result, json_out, force)
    exit_for(verdict)


HEAVY_COMMANDS = {"sim", "finetune", "shadow", "generate", "audit", "eval"}
_RESEARCH_HELP = {"sim": "The CPU stand-in for Stable Diffusion (tiny model, synthetic data).",
                  "eval": "Experiments (docs/results.md): tracemark eval run --quick."}


def _research_stub(name: str) -> None:
    """List ``sim`` / ``eval`` in the top-level --help without importing them (they import torch)."""

    def stub() -> None:  # pragma: no cover - only mounted when no command was given
        raise TracemarkError(f"run `tracemark {name} --help`")

    app.command(name, cls=_Command, rich_help_panel=PANEL_RESEARCH, help=_RESEARCH_HELP[name],
                add_help_option=False)(stub)


def _mount_optional(argv: list[str] | None = None) -> None:
    """Attach the commands that import torch/diffusers only when they may be used.

    Importing torch costs seconds; ``protect``, ``trace-files`` and ``tracemark --help`` should not
    pay for it: with no command given, ``sim`` and ``eval`` are listed from stubs.
    """
    argv = sys.argv[1:] if argv is None else argv
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in HEAVY_COMMANDS:
        return
    # transformers warns about optional image-processing backends we never use
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        from tracemark.audit_cli import audit_cmd, generate_cmd
    except ImportError:
        audit_cmd = generate_cmd = None
    if audit_cmd is not None:
        _command("audit", panel=PANEL_PROTECT, example="tracemark audit BASE_MODEL --lora suspect_lora.safetensors "
                 "--data photos/ --report evidence.html")(audit_cmd)
    from tracemark.train_cli import finetune_cmd, shadow_cmd  # (light: torch is imported when they run)

    if generate_cmd is not None:
        _command("generate", panel=PANEL_MODELS, example="tracemark generate --model BASE_MODEL --lora "
                 "suspect_lora.safetensors --prompts prompts.txt --n 64 --out generated/")(generate_cmd)
    _command("finetune", panel=PANEL_MODELS, example="tracemark finetune photos_acme/ --base BASE_MODEL "
             "--out acme_lora/")(finetune_cmd)
    _command("shadow", panel=PANEL_MODELS, example="tracemark shadow photos/ --base BASE_MODEL --count 4")(shadow_cmd)
    for name, module in (("sim", "tracemark.sim.cli"), ("eval", "tracemark.eval.cli")):
        if first is None:
            _research_stub(name)
        elif first == name:  # the test world is loaded only for its own commands
            try:
                import importlib

                sub = importlib.import_module(module).app
            except ImportError:
                continue
            app.add_typer(sub, name=name, help=_RESEARCH_HELP[name], rich_help_panel=PANEL_RESEARCH)


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
