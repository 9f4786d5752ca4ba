"""``tracemark finetune`` and ``tracemark shadow``: the product's fine-tuning commands.

``finetune`` fine-tunes a diffusers pipeline on an image-caption folder (what an abuser of a copy
does, and how the owner reproduces it); ``shadow`` fine-tunes the owner's references on the clean
original with the same recipe and registers them for the white-box audit (:mod:`tracemark.shadows`).
Both use the product trainer (:mod:`tracemark.diffusion.training`) and default to the bundled CPU
test model, located by path: the product never imports the test world. Plain functions, attached
to the main CLI by ``tracemark.cli._mount_optional``; torch is imported only when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from tracemark.errors import TracemarkError
from tracemark.shadows import DEFAULT_COUNT

console = Console(stderr=True)

#: The bundled CPU test model (a tiny Stable Diffusion stand-in), relative to the package.
BUNDLED_TEST_MODEL = Path(__file__).resolve().parent / "sim" / "base_model"


def base_or_default(base: Optional[Path]) -> Path:
    """``base``, or the bundled CPU test model with a notice that real models need ``--base``."""
    if base is not None:
        return base
    path = BUNDLED_TEST_MODEL
    if not (path / "model_index.json").is_file():
        raise TracemarkError(f"{path}: no bundled test model in this installation; pass --base MODEL_DIR")
    console.print(f"[yellow]note:[/] no --base: using the bundled CPU test model ({path}); for a real model pass "
                  "--base MODEL_DIR (e.g. a Stable Diffusion 1.5 diffusers folder)", highlight=False, soft_wrap=True)
    return path


#: As diffusers' training scripts' --caption_column / --image_column.
CaptionColumnOpt = typer.Option(None, "--caption-column", help="Caption column of the metadata (default: the one of "
                                "text, caption, prompt, description it has).")
ImageColumnOpt = typer.Option(None, "--image-column", help="Image file column of the metadata (default: file_name).")


def finetune_cmd(
    data_dir: Path = typer.Argument(..., help="Imagefolder dataset (metadata.jsonl or metadata.csv)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Pipeline folder (default: the bundled CPU test model)."),
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
    caption_column: Optional[str] = CaptionColumnOpt,
    image_column: Optional[str] = ImageColumnOpt,
) -> None:
    """Fine-tune a diffusers pipeline on an image-caption dataset (LoRA or full)."""
    from tracemark.diffusion.training import LORA_TARGETS, PRESETS, finetune, preset_for_base

    if preset != "auto" and preset not in PRESETS:  # before the base: a typo is reported first
        raise TracemarkError(f"--preset must be one of auto, {', '.join(PRESETS)}, got {preset!r}")
    base_dir = base_or_default(base)
    chosen = preset_for_base(base_dir, preset)
    targets = lora_targets
    if targets is not None and targets not in LORA_TARGETS:
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    path = finetune(data_dir, base_dir, out, method=method, preset=chosen, steps=steps, lr=lr, rank=rank, seed=seed,
                    batch_size=batch_size, lora_targets=targets, flip=flip, train_text_encoder=train_text_encoder,
                    resume=resume, save_every=save_every, num_threads=threads, mixed_precision=mixed_precision,
                    gradient_accumulation_steps=grad_accum, caption_column=caption_column,
                    image_column=image_column)  # fmt: skip
    console.print(f"fine-tuned ({method}, preset {chosen.name}) -> {path}")


def shadow_cmd(
    data_dir: Path = typer.Argument(..., help="The clean original dataset, as protected (a registered dataset)."),
    base: Optional[Path] = typer.Option(None, "--base", help="The public base model the licensees fine-tune "
                                        "(default: the bundled CPU test model)."),
    count: int = typer.Option(DEFAULT_COUNT, "--count", help="Shadows to have (seeds 1..K): more raise the white "
                              "box's z; each costs one fine-tune."),
    preset: str = typer.Option("auto", "--preset", help="auto | tiny | sd15: the recipe `tracemark finetune` uses "
                               "by default on this base."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Default: the preset's (tiny 800, sd15 1500)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Registered dataset name (default: the folder's "
                                          "name, as protect names it)."),
    home: Optional[Path] = typer.Option(None, "--home", envvar="TRACEMARK_HOME",
                                        help="Registry folder (default ~/.tracemark)."),
    caption_column: Optional[str] = typer.Option(None, "--caption-column", help="Caption column (default: the one "
                                                 "recorded when the dataset was protected)."),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="Image column (default: the one "
                                               "recorded when the dataset was protected)."),
) -> None:
    """Fine-tune the owner's shadows of BASE on the clean original data, for the white-box audit.

    Resumable: run it again after an interruption and it continues where it stopped; shadows already trained are kept. Stored under $TRACEMARK_HOME/shadows/ and registered per (dataset, base)."""  # noqa: E501  (one paragraph in --help)
    from tracemark.registry import Registry
    from tracemark.shadows import train_shadows

    reg = Registry(home)
    try:
        shadows = train_shadows(reg, data_dir, base, count, preset, steps, progress=True, dataset_name=dataset,
                                say=lambda line: console.print(line, highlight=False, soft_wrap=True),
                                caption_column=caption_column, image_column=image_column)
    finally:
        reg.close()
    s0 = shadows[0]
    console.print(f"{len(shadows)} shadow(s) of '{s0.dataset}' ready (preset {s0.preset}, "
                  f"{s0.recipe.get('steps')} steps, base {s0.base_hash[:12]}):", highlight=False)
    for s in shadows:
        console.print(f"  seed {s.seed}: {s.path}  sha256 {s.sha256[:16]}", highlight=False, soft_wrap=True)
