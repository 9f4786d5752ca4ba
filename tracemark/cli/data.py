"""Commands that write copies of a dataset: ``import-hf``, ``protect``, ``materialize``, ``reissue``.

Each is a thin layer over one library function (:func:`tracemark.io.huggingface.import_hf`,
:func:`tracemark.marking.protect.protect`, :func:`tracemark.marking.materialize.materialize`,
:func:`tracemark.marking.protect.reissue`); the library is imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tracemark.cli.command import PANEL_PROTECT, Commands, choice_value
from tracemark.cli.options import (AddressOpt, CaptionColumnOpt, EngineOpt, Format, HomeOpt, ImageColumnOpt, OnError,
                                   Scheme, Selection, Strategy, TriggerScope, WorkersOpt)
from tracemark.cli.output import check_out_dir, console, err_console, print_skipped, with_progress
from tracemark.errors import TracemarkError

app = Commands(panel=PANEL_PROTECT)


@app.command("import-hf", examples=[
    "tracemark import-hf ./hf_photos --out ./photos",
    "tracemark import-hf ./parquet_dir --out ./photos --split train --caption-column caption"])
def import_hf_cmd(
    src: Path = typer.Argument(..., help="A folder written by Dataset.save_to_disk, or a folder of parquet files "
                               "(or one .parquet file)."),
    out: Path = typer.Option(..., "--out", "-o", help="The imagefolder to write (must not exist): protect it, "
                             "and keep it: it is the original the registry refers to."),
    split: Optional[str] = typer.Option(None, "--split", help="Which split (needed when there are several)."),
    caption_column: Optional[str] = typer.Option(None, "--caption-column", help="Caption column (default: the one of "
                                                 "text, caption, prompt, description the dataset has)."),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="Image column (default: the one Image "
                                               "column)."),
    id_column: Optional[str] = typer.Option(None, "--id-column", help="Name each file by this column (unique names "
                                            "or numbers) instead of the row index."),
) -> None:
    """Import a Hugging Face dataset on disk (save_to_disk or parquet) as an imagefolder, once, offline."""
    from tracemark.io.safe_write import check_output_dir
    from tracemark.io.huggingface import import_hf

    check_output_dir(out, "--out")
    res = with_progress("import", lambda progress: import_hf(src, out, split=split, caption_column=caption_column,
                                                                image_column=image_column, id_column=id_column,
                                                                progress=progress))
    console.print(f"Imported {res.n_rows} rows of {src} ({res.kind}{f', split {res.split}' if res.split else ''}) -> "
                  f"{res.out_dir}: images from column '{res.image_column}', captions from column "
                  f"'{res.caption_column}' (kept under that name)", highlight=False, soft_wrap=True)
    if res.dropped:
        console.print(f"  left out of metadata.jsonl (not plain values): {', '.join(res.dropped)}", highlight=False)


@app.command(examples=["tracemark protect photos/ --licensee acme --out photos_acme/",
                       "tracemark protect photos/ --dry-run"])
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
    workers: WorkersOpt = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    home: HomeOpt = None,
    caption_column: CaptionColumnOpt = None,
    image_column: ImageColumnOpt = None,
    link: str = typer.Option("copy", "--link", help="How unmarked files are written: copy | reflink (a copy-on-write "
                             "clone where the filesystem can) | hard (a hard link: no space used, but the copy's "
                             "unmarked files ARE your originals: writing to one in place changes the original)."),
) -> None:
    """Issue a licensee a watermarked copy of a dataset."""
    from tracemark.marking.protect import plan_copy
    from tracemark.marking.protect import protect as do_protect
    from tracemark.registry.database import Registry
    from tracemark.marking.schemes import parse_params

    params = parse_params(param)
    scheme, strategy, trigger_scope, selection, on_error, engine = (
        choice_value(c) for c in (scheme, strategy, trigger_scope, selection, on_error, engine))
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
    check_out_dir(out, home)
    reg = Registry(home)
    res = with_progress("protect", lambda progress: do_protect(
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
    print_skipped(res.skipped, "skipped")


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


@app.command(examples=["tracemark materialize acme --out photos_acme_again/",
                       "tracemark materialize acme --out shards/ --format webdataset --shard-size 1000"])
def materialize(
    licensee: str = typer.Argument(..., metavar="LICENSEE", help="Whose issued copy to re-derive."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (must not exist)."),
    dataset: Optional[str] = typer.Option(None, help="The copy's dataset (needed when the licensee holds several)."),
    data: Optional[Path] = typer.Option(None, "--data", help="The original dataset (default: the folder recorded "
                                        "when the copy was issued); its content hash must match the registry's."),
    fmt: Format = typer.Option("folder", "--format", help="folder (imagefolder, identical to the issued copy) | "
                            "webdataset (.tar shards)."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Samples per WebDataset shard."),
    workers: WorkersOpt = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    home: HomeOpt = None,
) -> None:
    """Re-derive a licensee's issued copy from the registry, the original data and the master key."""
    from tracemark.marking.materialize import materialize as do_materialize
    from tracemark.registry.database import Registry

    fmt, engine = choice_value(fmt), choice_value(engine)
    check_out_dir(out, home)
    reg = Registry(home)
    res = with_progress("materialize", lambda progress: do_materialize(
        reg, licensee, out, dataset=dataset, data_dir=data, fmt=fmt, shard_size=shard_size, workers=workers,
        engine=engine, address=address, progress=progress))
    what = f"{len(res.shards)} WebDataset shard(s)" if res.fmt == "webdataset" else "an imagefolder"
    console.print(f"Materialized copy {res.copy_id} of [bold]{res.dataset}[/] for [bold]{res.licensee}[/] -> "
                  f"{res.out_dir} ({what}; {res.n_marked}/{res.n_samples} samples marked)")
    print_skipped(res.skipped, "as the issued copy did, left out")


@app.command("reissue", examples=["tracemark reissue acme --out photos_acme_2/"])
def reissue_cmd(licensee: str = typer.Argument(..., metavar="LICENSEE", help="Who receives the new copy."),
                out: Path = typer.Option(..., "--out", "-o", help="Output folder for the new copy (must not exist)."),
                dataset: Optional[str] = typer.Option(None, "--dataset", help="The copy's dataset (needed when the "
                                                      "licensee holds several)."),
                data: Optional[Path] = typer.Option(None, "--data", help="The original dataset (default: the folder "
                                                    "recorded when the copy was issued)."),
                workers: WorkersOpt = None,
                home: HomeOpt = None) -> None:
    """Issue a licensee a new copy with a new key and the same options; their current copy is revoked.

    Use it when a copy was sent to the wrong place, or a licensee must get a fresh one. The new copy
    is the next generation of (dataset, licensee); the old one stays in the registry, still traced."""
    from tracemark.io.safe_write import check_output_dir
    from tracemark.marking.protect import reissue
    from tracemark.registry.database import Registry

    check_output_dir(out, "--out", home=home, new=False)
    reg = Registry(home)
    res = reissue(reg, licensee, out, dataset=dataset, data_dir=data, workers=workers)
    console.print(f"Reissued: copy {res.copy_id} of [bold]{res.dataset}[/] to [bold]{res.licensee}[/] -> {res.out_dir} "
                  f"({res.n_marked}/{res.n_samples} samples marked, new key); the previous copy is revoked.")
