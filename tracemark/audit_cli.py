"""``tracemark audit``: query a suspect model (or read its images) and write JSON + HTML evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from tracemark.errors import TracemarkError

console = Console()


def audit_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="Suspect diffusers pipeline folder, or an "
                                         "original-layout (CompVis / A1111) single-file checkpoint with --config."),
    lora: Optional[Path] = typer.Option(None, "--lora", help="LoRA weights (file or folder) to load on the model."),
    images: Optional[Path] = typer.Option(None, "--images", help="Black box: a folder of images the model generated."),
    whitebox: bool = typer.Option(False, "--whitebox", help="White box: read the marked samples through the "
                                  "model's denoiser instead of generating images (needs --data)."),
    data: Optional[Path] = typer.Option(None, "--data", help="The original dataset: needed by --whitebox; "
                                        "recommended for every audit (tests outside the dataset's content "
                                        "subspace, so no key aligned by chance with the domain is accused)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Reference base pipeline for --whitebox on a whole "
                                        "checkpoint (a LoRA is compared with its model without the LoRA)."),
    reference: Optional[list[Path]] = typer.Option(None, "--reference", help="Shadow reference for --model audits: "
                                                   "the public base fine-tuned by you on the original data (the "
                                                   "usual recipe, a seed of your own); cancels what every fine-tune "
                                                   "on this data learns (--whitebox), or generates the same prompts "
                                                   "and seeds and the differences are scored (paired black box). "
                                                   "--whitebox takes several (repeat the flag, or one --reference "
                                                   "with several --reference-lora) and averages them."),
    reference_lora: Optional[list[Path]] = typer.Option(None, "--reference-lora", help="LoRA weights of the shadow "
                                                        "reference, loaded on --reference (repeatable)."),
    statistic: str = typer.Option("auto", "--statistic", help="--whitebox statistic: loss (how much better the "
                                  "suspect fits each marked sample than the reference does, as a gradient) | "
                                  "residual (its clean-image prediction minus the reference's) | auto (loss when "
                                  "there is a reference: --lora, --base or --reference)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Only test copies of this registered dataset."),
    n: int = typer.Option(64, "--n", help="Images to generate (per stage)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the query plan and generations."),
    steps: int = typer.Option(25, "--steps", help="Sampling steps."),
    guidance: float = typer.Option(6.0, "--guidance", help="Classifier-free guidance scale."),
    alpha: float = typer.Option(0.01, "--alpha", help="Family-wise false-accusation rate."),
    decoys: int = typer.Option(1000, "--decoys", help="Decoy keys for the null distribution."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the verdict as JSON here (- for standard "
                                            "output); never inside the tracemark home, never over a file unless "
                                            "--force."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the HTML evidence report here."),
    keep_images: Optional[Path] = typer.Option(None, "--keep-images", help="Keep generated images in this folder."),
    json_only: bool = typer.Option(False, "--json-only", help="Print only the JSON verdict (automation)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --json / --report file."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available) | cpu | cuda[:N]."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images generated per batch (memory vs speed)."),
    config: Optional[Path] = typer.Option(None, "--config", help="For a single-file --model (or --base) checkpoint: "
                                          "a diffusers pipeline folder of its architecture, e.g. SD 1.5's; only its "
                                          "configs, tokenizer and scheduler are read (offline there is no hub "
                                          "to ask)."),
    home: Optional[Path] = typer.Option(None, "--home", envvar="TRACEMARK_HOME", help="Registry folder."),
) -> None:
    """Was this model fine-tuned on our data, and whose copy was it? Verdict with a p-value."""
    from tracemark.audit import audit_images, audit_model, audit_whitebox, check_audit_options
    from tracemark.registry import Registry

    check_audit_options(n=n, seed=seed, steps=steps, guidance=guidance, batch_size=batch_size, alpha=alpha,
                        n_decoys=decoys)
    if (model is None) == (images is None):
        raise TracemarkError("give exactly one of --model DIR or --images DIR")
    if lora is not None and model is None:
        raise TracemarkError("--lora needs --model")
    if whitebox and (model is None or data is None):
        raise TracemarkError("--whitebox needs --model DIR and --data DIR (the original dataset)")
    if not whitebox and base is not None:
        raise TracemarkError("--base is an option of --whitebox")
    if not whitebox and statistic != "auto":
        raise TracemarkError("--statistic is an option of --whitebox")
    for flag, value in (("--reference", reference), ("--reference-lora", reference_lora)):
        if model is None and value:
            raise TracemarkError(f"{flag} needs --model (a model in hand; images alone cannot be paired)")
        if not whitebox and value and len(value) > 1:
            raise TracemarkError(f"several {flag} are a --whitebox option (the paired black box takes one)")
    reference = list(reference or []) or None
    reference_lora = list(reference_lora or []) or None
    from tracemark.fsutil import check_output_file

    from tracemark.fsutil import check_output_dir

    if json_out is not None and str(json_out) == "-":
        json_out, json_only = None, True
    check_output_file(json_out, "--json", force=force, home=home)
    check_output_file(report, "--report", force=force, home=home)
    check_output_dir(keep_images, "--keep-images", home=home)
    reg = Registry(home)
    if whitebox:
        with console.status("reading the denoiser at the marked samples...", spinner="dots") if not json_only \
                else _null():
            result = audit_whitebox(model, reg, data, lora=lora, base=base, reference=reference,
                                    reference_lora=reference_lora, dataset=dataset, seed=seed, alpha=alpha,
                                    n_decoys=decoys, device=device, dtype=dtype, config=config,
                                    statistic=statistic)
    elif model is not None:
        with console.status("generating and scoring images...", spinner="dots") if not json_only else _null():
            result = audit_model(model, reg, lora=lora, dataset=dataset, n=n, seed=seed, steps=steps,
                                 guidance=guidance, alpha=alpha, n_decoys=decoys, work_dir=keep_images, data_dir=data,
                                 device=device, dtype=dtype, batch_size=batch_size, config=config,
                                 reference=reference[0] if reference else None,
                                 reference_lora=reference_lora[0] if reference_lora else None)
    else:
        result = audit_images(images, reg, dataset=dataset, alpha=alpha, n_decoys=decoys, data_dir=data)
    data = result.to_dict()
    reg.add_audit("audit-" + result.kind, result.target, result.verdict.used, result.verdict.p_value, data)
    if json_out:
        from tracemark.fsutil import write_text_atomic

        write_text_atomic(json_out, json.dumps(data, indent=2, default=float) + "\n", force=force)
    if report:
        from tracemark.report import write_report

        write_report(result, report, force=force)
    if json_only:
        print(json.dumps(data, default=float))
        return
    from tracemark.cli import _print_verdict

    _print_verdict(result.verdict)
    if json_out:
        console.print(f"JSON: {json_out}")
    if report:
        console.print(f"Report: {report.resolve()}")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


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
    dtype: str = typer.Option("auto", "--dtype", help="auto | fp32 | fp16 | bf16."),
    config: Optional[Path] = typer.Option(None, "--config", help="Pipeline folder for a single-file checkpoint."),
) -> None:
    """Generate N images from a pipeline (+ LoRA) into an imagefolder with prompts and seeds."""
    from tracemark.audit import check_generation_options
    from tracemark.diffusion.generation import generate
    from tracemark.diffusion.loading import load_pipeline

    check_generation_options(n=n, seed=seed, steps=steps, guidance=guidance, batch_size=batch_size)
    pipe = load_pipeline(model, lora=lora, device=device, dtype=dtype, config=config)
    path = generate(model, prompts, n, out, lora=lora, seed=seed, steps=steps, guidance=guidance,
                    batch_size=batch_size, pipe=pipe, progress=True)
    console.print(f"wrote {n} images to {path}")
