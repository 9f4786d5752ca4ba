"""``tracemark audit``: query a suspect model (or read its images) and write JSON + HTML evidence."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from tracemark.audit import WHITEBOX_STATISTICS
from tracemark.errors import TracemarkError

console = Console()


#: Choices as enums, so --help lists them and shells complete them.
Statistic = enum.Enum("Statistic", [(v, v) for v in WHITEBOX_STATISTICS], type=str)
Dtype = enum.Enum("Dtype", [(v, v) for v in ("auto", "fp32", "fp16", "bf16")], type=str)


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
    n: int = typer.Option(64, "--n", help="--blackbox: images to generate per stage (a second stage of N more "
                          "runs when the trigger words get fewer than 16 images each).", rich_help_panel="Black box"),
    seed: int = typer.Option(0, "--seed", help="Seed of the query plan, generations and white-box noise."),
    steps: int = typer.Option(25, "--steps", help="--blackbox: sampling steps.", rich_help_panel="Black box"),
    guidance: float = typer.Option(6.0, "--guidance", help="--blackbox: classifier-free guidance scale.",
                                   rich_help_panel="Black box"),
    alpha: float = typer.Option(0.01, "--alpha", help="Family-wise false-accusation rate."),
    decoys: int = typer.Option(1000, "--decoys", help="Decoy keys for the null distribution."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE|-", help="Write the verdict as one JSON "
                                            "document to FILE, or print it (--json alone or --json -); never "
                                            "inside the tracemark home, never over a file unless --force."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the HTML evidence report here."),
    keep_images: Optional[Path] = typer.Option(None, "--keep-images", help="--blackbox: keep generated images in "
                                               "this folder.", rich_help_panel="Black box"),
    json_only: bool = typer.Option(False, "--json-only", hidden=True, help="Same as --json - (kept for scripts)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --json / --report file."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available) | cpu | cuda[:N]."),
    dtype: Dtype = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16."),
    batch_size: int = typer.Option(32, "--batch-size", help="--blackbox: images generated per batch.",
                                   rich_help_panel="Black box"),
    config: Optional[Path] = typer.Option(None, "--config", help="For a single-file MODEL (or --base) checkpoint: "
                                          "a diffusers pipeline folder of its architecture, e.g. SD 1.5's; only its "
                                          "configs, tokenizer and scheduler are read (offline there is no hub "
                                          "to ask)."),
    home: Optional[Path] = typer.Option(None, "--home", envvar="TRACEMARK_HOME", help="Registry folder."),
) -> None:
    """Was this model fine-tuned on our data, and whose copy was it? Verdict with a p-value (exit 3 when named)."""
    from tracemark.audit import audit_images, audit_model, audit_whitebox, check_audit_options
    from tracemark.cli import _print_verdict, _progress, exit_for, verdict_document
    from tracemark.registry import Registry

    statistic, dtype = statistic.value, dtype.value

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
    for flag, value in (("--reference", reference), ("--reference-lora", reference_lora)):
        if model is None and value:
            raise TracemarkError(f"{flag} needs MODEL (a model in hand; images alone cannot be paired)")
        if not use_whitebox and value and len(value) > 1:
            raise TracemarkError(f"several {flag} are a white-box option (the paired black box takes one)")
    reference = list(reference or []) or None
    reference_lora = list(reference_lora or []) or None
    from tracemark.fsutil import check_output_dir, check_output_file

    if json_out is not None and str(json_out) == "-":
        json_out, json_only = None, True
    check_output_file(json_out, "--json", force=force, home=home)
    check_output_file(report, "--report", force=force, home=home)
    check_output_dir(keep_images, "--keep-images", home=home)
    reg = Registry(home)
    notes: list[str] = []
    if use_whitebox:
        from tracemark.audit import whitebox_plan

        plan = whitebox_plan(reg, model, lora=lora, base=base, data=data, dataset=dataset, reference=reference,
                             reference_lora=reference_lora)
        notes = plan.notes
        if not json_only:
            for line in notes:
                console.print(f"[cyan]note:[/] {line}", highlight=False, soft_wrap=True)
        # a bar with count and ETA on stderr (quiet when it is not a terminal): the marked samples read
        with _progress("reading the marked samples") as bar:
            task = bar.add_task("read", total=None)
            result = audit_whitebox(model, reg, plan.data, lora=lora, base=plan.base, reference=plan.reference,
                                    reference_lora=plan.reference_lora, dataset=plan.dataset, seed=seed, alpha=alpha,
                                    n_decoys=decoys, device=device, dtype=dtype, config=config,
                                    statistic=statistic, progress=lambda d, t: bar.update(task, completed=d, total=t))
        result.params["notes"] = notes
    elif model is not None:
        with _progress("generating images") as bar:
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
        from tracemark.cli import _write_json

        _write_json(json_out, out, force)
    if report:
        from tracemark.report import write_report

        write_report(result, report, force=force, registry=reg)
    if json_only:
        from tracemark.cli import _emit_json

        _emit_json(out, Path("-"), force)
        exit_for(result.verdict)
        return
    _print_verdict(result.verdict)
    if result.params.get("two_stage"):  # why "tested on 2N images" after --n N
        console.print(f"[cyan]note:[/] {out['n_images']} images: two stages of --n {n} (the trigger words got fewer "
                      "than 16 images each in the first stage; the second spends --n more on the likeliest copies)",
                      highlight=False, soft_wrap=True)
    if json_out:
        console.print(f"JSON: {json_out}", highlight=False, soft_wrap=True)
    if report:
        console.print(f"Report: {report.resolve()}", highlight=False, soft_wrap=True)
    exit_for(result.verdict)


def generate_cmd(
    model: Path = typer.Option(..., "--model", help="Pipeline folder or single-file checkpoint."),
    lora: Optional[Path] = typer.Option(None, "--lora", help="LoRA weights (diffusers, kohya or peft layout)."),
    prompts: Path = typer.Option(..., "--prompts", help="Text file (one prompt a line), .jsonl, or an imagefolder."),
    n: int = typer.Option(64, "--n", help="Number of images (prompts are cycled)."),
    out: Path = typer.Option(..., "--out", help="Output imagefolder."),
    seed: int = typer.Option(0, "--seed", help="Image i uses seed + i (its own generator)."),
    steps: int = typer.Option(25, "--steps", help="Sampling steps."),
    guidance: float = typer.Option(6.0, "--guidance", help="Classifier-free guidance scale."),
    batch_size: int = typer.Option(32, "--batch-size"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]."),
    dtype: Dtype = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16."),
    config: Optional[Path] = typer.Option(None, "--config", help="Pipeline folder for a single-file checkpoint."),
) -> None:
    """Generate N images from a pipeline (+ LoRA) into an imagefolder with prompts and seeds."""
    from tracemark.audit import check_generation_options
    from tracemark.diffusion.generation import generate
    from tracemark.diffusion.loading import load_pipeline

    check_generation_options(n=n, seed=seed, steps=steps, guidance=guidance, batch_size=batch_size)
    dtype = dtype.value
    pipe = load_pipeline(model, lora=lora, device=device, dtype=dtype, config=config)
    path = generate(model, prompts, n, out, lora=lora, seed=seed, steps=steps, guidance=guidance,
                    batch_size=batch_size, pipe=pipe, progress=True)
    console.print(f"wrote {n} images to {path}")
