"""Command line for the CPU world: ``tracemark sim make-data | pretrain | pretrain-vae | finetune | probe``.

``app`` is a typer sub-app, declared as the ``sim`` entry point of the group
``tracemark.cli_plugins`` (``testworld/pyproject.toml``): ``tracemark --help`` lists it, and
``tracemark sim ...`` imports this module (:mod:`tracemark.cli.plugins`); ``sim finetune`` is the
product's ``tracemark finetune`` (:func:`tracemark.cli.models.finetune_cmd`, re-exported here).
Each command imports the world's modules, and with them torch, when it runs. Failures a user can fix raise
:class:`tracemark.errors.TracemarkError`, printed as one line (:mod:`tracemark.cli.errors`).
``python -m tracemark_sim.cli ...`` runs the sub-app alone, with the same error handling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from tracemark.cli.models import finetune_cmd  # noqa: F401  (the product's command, kept here as `sim finetune`)
from tracemark.errors import TracemarkError

console = Console(stderr=True)
app = typer.Typer(
    help="The CPU world: a tiny Stable Diffusion stand-in, synthetic data, training, generation.",
    no_args_is_help=True,
    add_completion=False,
)


def _base_or_default(base: Optional[Path]) -> Path:
    from tracemark_sim.pipeline import default_base_path

    if base is not None:
        return base
    path = default_base_path()
    if not (path / "model_index.json").is_file():
        raise TracemarkError(f"{path}: no committed base model; pass --base MODEL_DIR")
    return path


@app.command("make-data")
def make_data_cmd(
    out: Path = typer.Argument(..., help="Folder to create (imagefolder layout)."),
    n: int = typer.Option(1000, "--n", help="Number of images."),
    domain: str = typer.Option(
        "shapes", "--domain", help="shapes | textures | faces | landscapes | mixture | mixture-all | open | open-all."
    ),
    seed: int = typer.Option(0, "--seed"),
    size: int = typer.Option(32, "--size", help="Image side: 32 or 64."),
) -> None:
    """Write N procedural captioned images (PNG + metadata.jsonl)."""
    from tracemark_sim.data import make_dataset

    path = make_dataset(out, n, domain, seed, size)
    console.print(f"wrote {n} {domain} images to {path}")


@app.command("pretrain")
def pretrain_cmd(
    data: Path = typer.Option(..., "--data", help="Imagefolder dataset to pretrain on."),
    out: Path = typer.Option(..., "--out", help="Output pipeline folder (checkpoints in OUT/checkpoints)."),
    steps: int = typer.Option(5000, "--steps"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.pt."),
    seed: int = typer.Option(0, "--seed"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Default 1e-3 (cosine, 200 warmup steps)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default 32."),
    save_every: int = typer.Option(500, "--save-every"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's)."),
    unet_channels: Optional[str] = typer.Option(None, "--unet-channels",
                                                help="UNet block widths, e.g. 24,48,48 (default 32,64,64)."),
    vae: Optional[Path] = typer.Option(None, "--vae", help="Trained AutoencoderKL folder (sim pretrain-vae)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer",
                                             help="Tokenizer folder, CLIP BPE file or open-clip-torch wheel "
                                                  "(default: the committed base's SD tokenizer)."),
) -> None:
    """Pretrain a fresh tiny pipeline (UNet + text encoder) from scratch."""
    from tracemark_sim.train import pretrain

    try:
        chans = [int(c) for c in unet_channels.split(",")] if unet_channels else None
    except ValueError:
        raise TracemarkError(f"--unet-channels must be comma-separated integers, got {unet_channels!r}") from None
    path = pretrain(data, out, steps, lr=lr, batch_size=batch_size, seed=seed, save_every=save_every,
                    resume=resume, num_threads=threads, unet_channels=chans, vae=vae, tokenizer=tokenizer)  # fmt: skip
    console.print(f"pretrained pipeline in {path}")


@app.command("pretrain-vae")
def pretrain_vae_cmd(
    data: Path = typer.Option(..., "--data", help="Imagefolder dataset to train on."),
    out: Path = typer.Option(..., "--out", help="Output AutoencoderKL folder (checkpoints in OUT/checkpoints)."),
    steps: int = typer.Option(6000, "--steps"),
    lr: float = typer.Option(1e-3, "--lr"),
    batch_size: int = typer.Option(32, "--batch-size"),
    crop: int = typer.Option(16, "--crop", help="Random crop side for training (0: whole images)."),
    seed: int = typer.Option(0, "--seed"),
    save_every: int = typer.Option(250, "--save-every"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.pt."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from this trained AutoencoderKL."),
) -> None:
    """Train the world's AutoencoderKL (the lossy latent codec)."""
    from tracemark_sim.vae import pretrain_vae

    path = pretrain_vae(data, out, steps, lr=lr, batch_size=batch_size, crop=crop, seed=seed, save_every=save_every,
                        resume=resume, num_threads=threads, init_from=init_from)  # fmt: skip
    console.print(f"trained AutoencoderKL in {path}")


@app.command("probe")
def probe_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="Pipeline folder (default: the committed sim base)."),
    lora: Optional[Path] = typer.Option(None, "--lora"),
    n_per_colour: int = typer.Option(4, "--n-per-colour"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Background-colour accuracy of a model's generations (does it follow captions?)."""
    from tracemark_sim.probe import probe_model

    result = probe_model(_base_or_default(model), lora=lora, n_per_colour=n_per_colour, seed=seed)
    print(json.dumps(result))


app.command("finetune")(finetune_cmd)


def main() -> None:  # pragma: no cover - thin wrapper
    from tracemark.cli.errors import run

    run(app)


if __name__ == "__main__":  # pragma: no cover
    main()
