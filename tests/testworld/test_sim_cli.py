from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from tracemark.cli.models import generate_cmd
from tracemark.errors import TracemarkError
from tracemark_sim.cli import app as sim_app
from tracemark_sim.cli import finetune_cmd

runner = CliRunner()


def _main_app() -> typer.Typer:
    """Mounted the way the main CLI mounts it: ``sim`` sub-app + top-level finetune/generate."""
    main = typer.Typer()
    main.add_typer(sim_app, name="sim")
    main.command("finetune")(finetune_cmd)
    main.command("generate")(generate_cmd)
    return main


def test_make_data_finetune_generate(tiny_pipeline_dir, tmp_path):
    main = _main_app()
    r = runner.invoke(main, ["sim", "make-data", str(tmp_path / "d"), "--n", "8", "--domain", "textures", "--seed", "4"])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "d" / "metadata.jsonl").read_text().splitlines()) == 8

    r = runner.invoke(main, ["finetune", str(tmp_path / "d"), "--base", str(tiny_pipeline_dir), "--out",
                             str(tmp_path / "lora"), "--method", "lora", "--steps", "2", "--rank", "2",
                             "--batch-size", "4"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()

    (tmp_path / "prompts.txt").write_text("a red circle on a blue background\ntavoreki\n")
    r = runner.invoke(main, ["generate", "--model", str(tiny_pipeline_dir), "--lora", str(tmp_path / "lora"),
                             "--prompts", str(tmp_path / "prompts.txt"), "--n", "3", "--out", str(tmp_path / "g"),
                             "--seed", "5", "--steps", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "g" / "metadata.jsonl").read_text().splitlines()]
    assert [x["seed"] for x in rows] == [5, 6, 7]


def test_errors_are_tracemark_errors(tmp_path):
    r = runner.invoke(_main_app(), ["generate", "--model", str(tmp_path / "nope"), "--prompts", str(tmp_path / "p"),
                                    "--out", str(tmp_path / "o")])  # fmt: skip
    assert r.exit_code != 0
    assert isinstance(r.exception, TracemarkError)
    r = runner.invoke(_main_app(), ["sim", "make-data", str(tmp_path / "x"), "--domain", "cats"])
    assert isinstance(r.exception, TracemarkError)


def test_finetune_with_the_sd15_preset(tiny_pipeline_dir, small_data_dir, tmp_path):
    """``--preset sd15``: the product's values (512 px, attention-only rank-4 LoRA) from the same command."""
    from safetensors.torch import load_file

    main = _main_app()
    r = runner.invoke(main, ["finetune", str(small_data_dir), "--base", str(tiny_pipeline_dir), "--out",
                             str(tmp_path / "l"), "--preset", "sd15", "--steps", "1",
                             "--gradient-accumulation-steps", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "l" / "training.json").read_text())["config"]
    assert info["resolution"] == 512 and info["rank"] == 4 and info["lr"] == 1e-4 and not info["cache_latents"]
    saved = load_file(tmp_path / "l" / "pytorch_lora_weights.safetensors")
    assert all(".to_" in k for k in saved)
    r = runner.invoke(main, ["finetune", str(small_data_dir), "--out", str(tmp_path / "x"), "--preset", "sdxl"])
    assert isinstance(r.exception, TracemarkError)
