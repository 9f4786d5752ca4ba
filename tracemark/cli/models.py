"""Commands that run diffusion models: ``finetune``, ``shadow`` and ``generate``.

``finetune`` fine-tunes a diffusers pipeline on an image-caption folder (what an abuser of a copy
does, and how the owner reproduces it); ``shadow`` fine-tunes the owner's references on the clean
original with the same recipe and registers them for the white-box audit (:mod:`tracemark.audit.shadows`);
``generate`` samples a pipeline (+ LoRA) into an imagefolder. Thin layers over
:func:`tracemark.diffusion.training.finetune`, :func:`tracemark.audit.shadows.train_shadows` and
:func:`tracemark.diffusion.generation.generate`; torch and diffusers are imported only when a command
runs. ``finetune`` and ``shadow`` default to the base model an installed distribution declares
(:mod:`tracemark.plugins`: the CPU test world's tiny model, where it is installed); the product
never imports the test world.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tracemark.audit.shadows import DEFAULT_COUNT
from tracemark.cli.command import PANEL_MODELS, Commands, choice_value
from tracemark.cli.options import CaptionColumnOpt, DeviceOpt, DtypeOpt, HomeOpt, ImageColumnOpt
from tracemark.cli.output import console, err_console
from tracemark.errors import TracemarkError

app = Commands(panel=PANEL_MODELS)


def _say(line: str) -> None:
    """Notes and progress lines of a training run, on stderr."""
    err_console.print(line, highlight=False, soft_wrap=True)


@app.command("finetune", examples=["tracemark finetune photos_acme/ --base BASE_MODEL --out acme_lora/",
                                   "tracemark finetune photos_acme/ --out acme_lora/ --steps 200"])
def finetune_cmd(
    data_dir: Path = typer.Argument(..., help="Imagefolder dataset (metadata.jsonl or metadata.csv)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Pipeline folder (default: the installed default base, "
                                        "the CPU test model)."),
    out: Path = typer.Option(..., "--out", help="Output folder: LoRA weights, or a whole pipeline for full."),
    method: str = typer.Option("lora", "--method", help="lora | full."),
    preset: str = typer.Option("auto", "--preset", help="auto (tiny for a UNet sample_size <= 32, else sd15) | "
                               "tiny (the CPU test model) | sd15 (docs/finetune.md)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Default: the preset's (tiny: 800 lora / 1000 full)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Default: the preset's (tiny: 2e-3 lora / 2e-4 full)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="LoRA rank (tiny: 16, sd15: 4)."),
    seed: int = typer.Option(0, "--seed"),
    lora_targets: Optional[str] = typer.Option(None, "--lora-targets",
                                               help="broad | attn | comma-separated module names (tiny: broad)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default: the preset's (tiny: 32)."),
    grad_accum: Optional[int] = typer.Option(None, "--gradient-accumulation-steps", help="Default: the preset's."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Random horizontal flips (default off)."),
    train_text_encoder: bool = typer.Option(False, "--train-text-encoder", help="Also train the text encoder."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.pt."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Default 500."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's)."),
    mixed_precision: Optional[str] = typer.Option(None, "--mixed-precision",
                                                  help="no | fp16 | bf16 | auto (default: the preset's)."),
    caption_column: CaptionColumnOpt = None,
    image_column: ImageColumnOpt = None,
) -> None:
    """Fine-tune a diffusers pipeline on an image-caption dataset (LoRA or full)."""
    from tracemark.diffusion.training import LORA_TARGETS, PRESETS, base_or_default, finetune, preset_for_base

    if preset != "auto" and preset not in PRESETS:  # before the base: a typo is reported first
        raise TracemarkError(f"--preset must be one of auto, {', '.join(PRESETS)}, got {preset!r}")
    base_dir = base_or_default(base, say=_say)
    chosen = preset_for_base(base_dir, preset)
    targets = lora_targets
    if targets is not None and targets not in LORA_TARGETS:
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    path = finetune(data_dir, base_dir, out, method=method, preset=chosen, steps=steps, lr=lr, rank=rank, seed=seed,
                    batch_size=batch_size, lora_targets=targets, flip=flip, train_text_encoder=train_text_encoder,
                    resume=resume, save_every=save_every, num_threads=threads, mixed_precision=mixed_precision,
                    gradient_accumulation_steps=grad_accum, caption_column=caption_column,
                    image_column=image_column)  # fmt: skip
    err_console.print(f"fine-tuned ({method}, preset {chosen.name}) -> {path}")


@app.command("shadow", examples=["tracemark shadow photos/ --base BASE_MODEL --count 4",
                                 "tracemark shadow photos/ --steps 200"])
def shadow_cmd(
    data_dir: Path = typer.Argument(..., help="The clean original dataset, as protected (a registered dataset)."),
    base: Optional[Path] = typer.Option(None, "--base", help="The public base model the licensees fine-tune "
                                        "(default: the installed default base, the CPU test model)."),
    count: int = typer.Option(DEFAULT_COUNT, "--count", help="Shadows to have (seeds 1..K): more raise the white "
                              "box's z; each costs one fine-tune."),
    preset: str = typer.Option("auto", "--preset", help="auto | tiny | sd15: the recipe `tracemark finetune` uses "
                               "by default on this base."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Default: the preset's (tiny 800, sd15 1500)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Registered dataset name (default: the folder's "
                                          "name, as protect names it)."),
    home: HomeOpt = None,
    caption_column: Optional[str] = typer.Option(None, "--caption-column", help="Caption column (default: the one "
                                                 "recorded when the dataset was protected)."),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="Image column (default: the one "
                                               "recorded when the dataset was protected)."),
) -> None:
    """Fine-tune the owner's shadows of BASE on the clean original data, for the white-box audit.

    Resumable: run it again after an interruption and it continues where it stopped; shadows already trained are kept. Stored under $TRACEMARK_HOME/shadows/ and registered per (dataset, base)."""  # noqa: E501  (one paragraph in --help)
    from tracemark.registry.database import Registry
    from tracemark.audit.shadows import train_shadows

    reg = Registry(home)
    try:
        shadows = train_shadows(reg, data_dir, base, count, preset, steps, progress=True, dataset_name=dataset,
                                say=_say,
                                caption_column=caption_column, image_column=image_column)
    finally:
        reg.close()
    s0 = shadows[0]
    err_console.print(f"{len(shadows)} shadow(s) of '{s0.dataset}' ready (preset {s0.preset}, "
                  f"{s0.recipe.get('steps')} steps, base {s0.base_hash[:12]}):", highlight=False)
    for s in shadows:
        err_console.print(f"  seed {s.seed}: {s.path}  sha256 {s.sha256[:16]}", highlight=False, soft_wrap=True)


@app.command("generate", examples=[
    "tracemark generate --model BASE_MODEL --lora suspect_lora.safetensors --prompts prompts.txt --n 64 "
    "--out generated/"])
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
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    config: Optional[Path] = typer.Option(None, "--config", help="Pipeline folder for a single-file checkpoint."),
) -> None:
    """Generate N images from a pipeline (+ LoRA) into an imagefolder with prompts and seeds."""
    from tracemark.diffusion.generation import generate
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.diffusion.sampling import check_generation_options

    check_generation_options(n=n, seed=seed, steps=steps, guidance=guidance, batch_size=batch_size)
    dtype = choice_value(dtype)
    pipe = load_pipeline(model, lora=lora, device=device, dtype=dtype, config=config)
    path = generate(model, prompts, n, out, lora=lora, seed=seed, steps=steps, guidance=guidance,
                    batch_size=batch_size, pipe=pipe, progress=True)
    console.print(f"wrote {n} images to {path}")
