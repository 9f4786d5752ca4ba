"""Commands that give a verdict: ``trace-files`` (leaked files) and ``audit`` (a suspect model, or
images it generated).

Thin layers over :func:`tracemark.detection.tracing.trace_files` and the audits of :mod:`tracemark.audit`
(white box, black box, images); torch and diffusers are imported only when a model is audited.
Both print the verdict and write it as one JSON document (:mod:`tracemark.cli.verdict`); both exit
3 when a licensee is named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tracemark.cli.command import PANEL_PROTECT, Commands, choice_value
from tracemark.cli.errors import exit_for
from tracemark.cli.options import (AlphaOpt, DecoysOpt, DeviceOpt, DtypeOpt, ForceJsonOpt, HomeOpt, Statistic,
                                   VerdictJsonOpt)
from tracemark.cli.output import check_json_out, console, emit_json, err_console, progress, write_json
from tracemark.cli.verdict import print_verdict, verdict_document
from tracemark.errors import TracemarkError

app = Commands(panel=PANEL_PROTECT)


@app.command("trace-files", examples=["tracemark trace-files leaked/ --data photos/ --json verdict.json",
                                      "tracemark trace-files leaked/ --data photos/ --json - | jq .named"])
def trace_files_cmd(
    leaked_dir: Path = typer.Argument(..., metavar="LEAKED_DIR", help="Folder of leaked files (a copy, or some of "
                                      "its images)."),
    json_out: VerdictJsonOpt = None,
    force: ForceJsonOpt = False,
    dataset: Optional[str] = typer.Option(None, help="Only test copies of this dataset."),
    alpha: AlphaOpt = 0.01,
    decoys: DecoysOpt = 1000,
    data: Optional[Path] = typer.Option(None, "--data", help="The original dataset (default: the folder recorded "
                                        "at issue, if still there): each matched file is scored minus its original "
                                        "(non-blind: stronger, and no key is scored against the images' content)."),
    home: HomeOpt = None,
) -> None:
    """Name the licensee whose copy these leaked files come from (verdict + p-value; exit 3 when named)."""
    from tracemark.registry.database import Registry
    from tracemark.detection.tracing import trace_files

    check_json_out(json_out, force, home)
    to_stdout = json_out is not None and str(json_out) == "-"
    reg = Registry(home)
    with progress("reading") as bar:
        task = bar.add_task("read", total=None)
        verdict = trace_files(leaked_dir, reg, dataset=dataset, n_decoys=decoys, alpha=alpha,
                              progress=lambda d, t: bar.update(task, completed=d, total=t), data_dir=data)
    if not verdict.timings.get("content_from"):
        err_console.print("[yellow]note:[/] the original dataset was not found (pass --data): the files were scored "
                          "blind, without their originals or the content projection, so a key aligned by chance "
                          "with the images' content is not guarded against; prefer a stricter --alpha",
                          highlight=False, soft_wrap=True)
    d = verdict.to_dict()
    result = verdict_document("trace-files", str(leaked_dir), verdict, {
        "params": {"dataset": dataset, "alpha": alpha, "n_decoys": decoys, "data": str(data) if data else None},
        "null": d["null"], "timings": d["timings"], "untested": d["untested"], "warnings": d["warnings"]})
    reg.add_audit("trace-files", str(leaked_dir), verdict.used, verdict.p_value, result)
    if not to_stdout:
        print_verdict(verdict)
    emit_json(result, json_out, force)
    exit_for(verdict)


@app.command("audit", examples=[
    "tracemark audit BASE_MODEL --lora suspect_lora.safetensors --data photos/ --report evidence.html",
    "tracemark audit --images generated/ --data photos/ --json verdict.json"])
def audit_cmd(
    model_arg: Optional[Path] = typer.Argument(None, metavar="MODEL", help="Suspect model: a diffusers pipeline "
                                               "folder or a single-file checkpoint (with --lora: the base the "
                                               "LoRA goes on). Audited in the white box unless --blackbox."),
    model: Optional[Path] = typer.Option(None, "--model", help="Same as MODEL.", hidden=True),
    lora: Optional[Path] = typer.Option(None, "--lora", help="LoRA weights (file or folder; diffusers, kohya or peft "
                                        "layout) to load on MODEL."),
    images: Optional[Path] = typer.Option(None, "--images", help="Black box: a folder of images the model generated "
                                          "(no weights in hand)."),
    blackbox: bool = typer.Option(False, "--blackbox", help="Generate images from MODEL and read the mark in them "
                                  "instead of the white box (much weaker: docs/learnability.md)."),
    whitebox: bool = typer.Option(False, "--whitebox", help="White box (the default with MODEL; kept for scripts).",
                                  hidden=True),
    data: Optional[Path] = typer.Option(None, "--data", help="The original dataset (default: the folder recorded when "
                                        "its copies were issued). The white box reads the marked samples from it."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Only test copies of this registered dataset "
                                          "(needed when several are registered)."),
    base: Optional[Path] = typer.Option(None, "--base", help="White box of a whole checkpoint: the public base it "
                                        "was fine-tuned from (its registered shadows are used, else the base itself "
                                        "is the reference).", rich_help_panel="Advanced"),
    reference: Optional[list[Path]] = typer.Option(None, "--reference", help="Shadow references by hand instead of "
                                                   "the registered ones (`tracemark shadow`): the public base "
                                                   "fine-tuned by you on the original data; repeatable (averaged). "
                                                   "With --blackbox: one, generating the same prompts and seeds "
                                                   "(paired black box).", rich_help_panel="Advanced"),
    reference_lora: Optional[list[Path]] = typer.Option(None, "--reference-lora", help="LoRA weights of a shadow, "
                                                        "loaded on --reference (repeatable).",
                                                        rich_help_panel="Advanced"),
    statistic: Statistic = typer.Option("auto", "--statistic", help="White-box statistic: loss (how much better the "
                                  "suspect fits each marked sample than the reference does, as a gradient) | "
                                  "residual (its clean-image prediction minus the reference's) | auto (loss when "
                                  "there is a reference).", rich_help_panel="Advanced"),
    max_probes_per_copy: Optional[int] = typer.Option(None, "--max-probes-per-copy", min=0, help="White box: marked "
                                                      "samples read per copy at most (default 256; 0: all), the "
                                                      "same for every copy that marked them. z grows like the "
                                                      "square root of the samples read, the time linearly.",
                                                      rich_help_panel="Advanced", show_default=False),
    n: int = typer.Option(64, "--n", help="--blackbox: images to generate per stage (a second stage of N more "
                          "runs when the trigger words get fewer than 16 images each).", rich_help_panel="Black box"),
    seed: int = typer.Option(0, "--seed", help="Seed of the query plan, generations and white-box noise."),
    steps: int = typer.Option(25, "--steps", help="--blackbox: sampling steps.", rich_help_panel="Black box"),
    guidance: float = typer.Option(6.0, "--guidance", help="--blackbox: classifier-free guidance scale.",
                                   rich_help_panel="Black box"),
    alpha: AlphaOpt = 0.01,
    decoys: DecoysOpt = 1000,
    json_out: VerdictJsonOpt = None,
    report: Optional[Path] = typer.Option(None, "--report", help="Write the HTML evidence report here."),
    keep_images: Optional[Path] = typer.Option(None, "--keep-images", help="--blackbox: keep generated images in "
                                               "this folder.", rich_help_panel="Black box"),
    json_only: bool = typer.Option(False, "--json-only", hidden=True, help="Same as --json - (kept for scripts)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --json / --report file."),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: int = typer.Option(32, "--batch-size", help="--blackbox: images generated per batch.",
                                   rich_help_panel="Black box"),
    config: Optional[Path] = typer.Option(None, "--config", help="For a single-file MODEL (or --base) checkpoint: "
                                          "a diffusers pipeline folder of its architecture, e.g. SD 1.5's; only its "
                                          "configs, tokenizer and scheduler are read (offline there is no hub "
                                          "to ask)."),
    home: HomeOpt = None,
) -> None:
    """Was this model fine-tuned on our data, and whose copy was it? Verdict with a p-value (exit 3 when named)."""
    from tracemark.audit.blackbox import audit_images, audit_model, check_audit_options
    from tracemark.audit.whitebox import DEFAULT_MAX_PROBES_PER_COPY, audit_whitebox
    from tracemark.registry.database import Registry

    statistic, dtype = choice_value(statistic), choice_value(dtype)

    check_audit_options(n=n, seed=seed, steps=steps, guidance=guidance, batch_size=batch_size, alpha=alpha,
                        n_decoys=decoys)
    if model_arg is not None and model is not None:
        raise TracemarkError("give the model once: MODEL or --model")
    model = model_arg if model_arg is not None else model
    if (model is None) == (images is None):
        raise TracemarkError("give exactly one of MODEL (weights in hand) or --images DIR (generated images)")
    if lora is not None and model is None:
        raise TracemarkError("--lora needs MODEL")
    if blackbox and whitebox:
        raise TracemarkError("give --blackbox or --whitebox, not both")
    use_whitebox = model is not None and not blackbox
    if not use_whitebox and base is not None:
        raise TracemarkError("--base is an option of the white box (MODEL without --blackbox)")
    if not use_whitebox and statistic != "auto":
        raise TracemarkError("--statistic is an option of the white box (MODEL without --blackbox)")
    if not use_whitebox and max_probes_per_copy is not None:
        raise TracemarkError("--max-probes-per-copy is an option of the white box (MODEL without --blackbox)")
    for flag, value in (("--reference", reference), ("--reference-lora", reference_lora)):
        if model is None and value:
            raise TracemarkError(f"{flag} needs MODEL (a model in hand; images alone cannot be paired)")
        if not use_whitebox and value and len(value) > 1:
            raise TracemarkError(f"several {flag} are a white-box option (the paired black box takes one)")
    reference = list(reference or []) or None
    reference_lora = list(reference_lora or []) or None
    from tracemark.io.safe_write import check_output_dir, check_output_file

    if json_out is not None and str(json_out) == "-":
        json_out, json_only = None, True
    check_output_file(json_out, "--json", force=force, home=home)
    check_output_file(report, "--report", force=force, home=home)
    check_output_dir(keep_images, "--keep-images", home=home)
    reg = Registry(home)
    notes: list[str] = []
    if use_whitebox:
        from tracemark.audit.references import whitebox_plan

        plan = whitebox_plan(reg, model, lora=lora, base=base, data=data, dataset=dataset, reference=reference,
                             reference_lora=reference_lora)
        notes = plan.notes
        if not json_only:
            for line in notes:
                console.print(f"[cyan]note:[/] {line}", highlight=False, soft_wrap=True)
        # a bar with count and ETA on stderr (quiet when it is not a terminal): the marked samples read
        with progress("reading the marked samples") as bar:
            task = bar.add_task("read", total=None)
            result = audit_whitebox(model, reg, plan.data, lora=lora, base=plan.base, reference=plan.reference,
                                    reference_lora=plan.reference_lora, dataset=plan.dataset, seed=seed, alpha=alpha,
                                    n_decoys=decoys, device=device, dtype=dtype, config=config,
                                    statistic=statistic, progress=lambda d, t: bar.update(task, completed=d, total=t),
                                    max_probes_per_copy=(DEFAULT_MAX_PROBES_PER_COPY if max_probes_per_copy is None
                                                         else max_probes_per_copy or None))
        result.params["notes"] = notes
    elif model is not None:
        with progress("generating images") as bar:
            task = bar.add_task("generate", total=None)
            result = audit_model(model, reg, lora=lora, dataset=dataset, n=n, seed=seed, steps=steps,
                                 guidance=guidance, alpha=alpha, n_decoys=decoys, work_dir=keep_images, data_dir=data,
                                 device=device, dtype=dtype, batch_size=batch_size, config=config,
                                 reference=reference[0] if reference else None,
                                 reference_lora=reference_lora[0] if reference_lora else None,
                                 progress=lambda d, t: bar.update(task, completed=d, total=t))
    else:
        result = audit_images(images, reg, dataset=dataset, alpha=alpha, n_decoys=decoys, data_dir=data)
    out = verdict_document(result.kind, result.target, result.verdict, result.to_dict())
    reg.add_audit("audit-" + result.kind, result.target, result.verdict.used, result.verdict.p_value, out)
    if json_out:
        write_json(json_out, out, force)
    if report:
        from tracemark.audit.report import write_report

        write_report(result, report, force=force, registry=reg)
    if json_only:
        emit_json(out, Path("-"), force)
        exit_for(result.verdict)
        return
    print_verdict(result.verdict)
    if result.params.get("two_stage"):  # why "tested on 2N images" after --n N
        console.print(f"[cyan]note:[/] {out['n_images']} images: two stages of --n {n} (the trigger words got fewer "
                      "than 16 images each in the first stage; the second spends --n more on the likeliest copies)",
                      highlight=False, soft_wrap=True)
    if json_out:
        console.print(f"JSON: {json_out}", highlight=False, soft_wrap=True)
    if report:
        console.print(f"Report: {report.resolve()}", highlight=False, soft_wrap=True)
    exit_for(result.verdict)
