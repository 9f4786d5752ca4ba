"""The product trainer (tracemark.diffusion.training): presets, streaming data, accelerate steps,
resume, LoRA output that the product's loader reads. Runs on the tiny untrained pipeline with a
small SD15-derived preset (the product never sees the world's TINY preset here)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tracemark.errors import TracemarkError

pytest.importorskip("diffusers")

from tracemark.diffusion import training  # noqa: E402
from tracemark.diffusion.training import SD15, ImageCaptionDataset, finetune  # noqa: E402

#: SD15's recipe at the tiny pipeline's size: streaming (no latent cache), accumulation 2.
SMALL = dataclasses.replace(SD15, name="small-sd15", lr=1e-2, resolution=32, batch_size=2,
                            gradient_accumulation_steps=2, mixed_precision="no", save_every=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tracemark_sim import build_tiny_pipeline  # the test world builds the model; the trainer never imports it

    return build_tiny_pipeline(tmp_path_factory.mktemp("train") / "tiny", seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 captioned 64x64 images: the loader resizes and centre-crops them to 32."""
    from tracemark.evaluation.samples import make_sample_dataset

    return make_sample_dataset(tmp_path_factory.mktemp("train") / "data", n=12, size=64, seed=2)


def test_sd15_preset_is_diffusers_lora_recipe():
    assert SD15.lr == 1e-4 and SD15.rank == 4
    assert SD15.lora_targets == ("to_q", "to_k", "to_v", "to_out.0")
    assert SD15.resolution == 512 and SD15.center_crop and not SD15.random_flip
    assert SD15.batch_size == 1 and SD15.gradient_accumulation_steps == 4
    assert SD15.gradient_checkpointing and SD15.mixed_precision == "auto"
    assert SD15.snr_gamma is None and not SD15.cache_latents
    import inspect

    assert inspect.signature(finetune).parameters["preset"].default is SD15


def _unet_out(pipe):
    torch.manual_seed(0)
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    emb = torch.randn(1, 77, pipe.text_encoder.config.hidden_size)
    with torch.no_grad():
        return pipe.unet(x, t, emb).sample


def test_lora_finetune_with_a_preset_loads_and_changes_the_unet(base, data, tmp_path):
    from tracemark.diffusion.loading import LORA_WEIGHT_NAME, load_lora, load_pipeline

    out = finetune(data, base, tmp_path / "lora", preset=SMALL, steps=3, progress=False)
    saved = load_file(out / LORA_WEIGHT_NAME)
    assert saved and all(any(t in k for t in SD15.lora_targets) for k in saved)  # attention only
    info = json.loads((out / "training.json").read_text())
    assert info["steps_done"] == 3 and info["config"]["gradient_accumulation_steps"] == 2
    assert info["config"]["gradient_checkpointing"] and info["num_processes"] == 1
    pipe = load_pipeline(base)
    before = _unet_out(pipe)
    assert load_lora(pipe, out) == "diffusers"
    assert (_unet_out(pipe) - before).abs().max() > 1e-6


def test_streaming_reads_only_the_batches_it_trains_on(base, data, tmp_path, monkeypatch):
    reads: list[str] = []
    real = training.load_image

    def counting(path, resolution):
        reads.append(str(path))
        return real(path, resolution)

    monkeypatch.setattr(training, "load_image", counting)
    ds = ImageCaptionDataset(data, 32)
    assert len(ds) == 12 and reads == []  # opening the dataset reads no image
    item = ds[3]
    assert item["pixels"].shape == (3, 32, 32) and item["pixels"].dtype == torch.uint8 and len(reads) == 1
    reads.clear()
    # 2 optimizer steps x 2 accumulated micro-batches x batch 2 = 8 reads, fewer than the 12 images
    finetune(data, base, tmp_path / "s", preset=SMALL, steps=2, progress=False)
    assert len(reads) == 8


def test_caption_encoder_cache_is_bounded_and_batch_independent(base):
    from tracemark.diffusion.loading import load_pipeline

    pipe = load_pipeline(base)
    enc = training.CaptionEncoder(pipe.tokenizer, pipe.text_encoder, "cpu", torch.float32, trainable=False,
                                  cache_size=2)  # fmt: skip
    a = enc(["a red circle", "a blue square", "a green star"])
    assert len(enc.cache) == 2 and a.shape[0] == 3
    assert torch.equal(enc(["a red circle"])[0], a[0])  # re-encoded after eviction: the same


def test_resume_with_accumulation_gives_the_uninterrupted_weights(base, data, tmp_path):
    from tracemark.diffusion.loading import LORA_WEIGHT_NAME

    straight = finetune(data, base, tmp_path / "a", preset=SMALL, steps=4, progress=False)
    finetune(data, base, tmp_path / "b", preset=SMALL, steps=2, progress=False)
    assert (tmp_path / "b" / "checkpoints" / "last.pt").is_file()
    resumed = finetune(data, base, tmp_path / "b", preset=SMALL, steps=4, resume=True, progress=False)
    a, b = load_file(straight / LORA_WEIGHT_NAME), load_file(resumed / LORA_WEIGHT_NAME)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(TracemarkError, match="settings differ"):
        finetune(data, base, tmp_path / "b", preset=SMALL, steps=6, resume=True, gradient_accumulation_steps=1,
                 progress=False)


def test_full_finetune_with_min_snr_writes_a_pipeline(base, data, tmp_path):
    from tracemark.diffusion.loading import load_pipeline

    out = finetune(data, base, tmp_path / "full", method="full", preset=SMALL, steps=1, snr_gamma=5.0,
                   lr=1e-3, progress=False)  # fmt: skip
    a, b = load_pipeline(out), load_pipeline(base)
    assert sum((x - y).abs().sum().item() for x, y in zip(a.unet.parameters(), b.unet.parameters())) > 0


def test_preset_errors(base, data, tmp_path):
    with pytest.raises(TracemarkError, match="centre crop"):
        finetune(data, base, tmp_path / "x", preset=dataclasses.replace(SMALL, center_crop=False), steps=1)
    with pytest.raises(TracemarkError, match="method"):
        finetune(data, base, tmp_path / "y", method="dreambooth", preset=SMALL, steps=1)


def test_training_module_does_not_import_the_test_world():
    code = ("import sys, tracemark.diffusion.training; "
            "bad = sorted(m for m in sys.modules if m.startswith('tracemark_sim') or m.startswith('research')); "
            "print(bad); sys.exit(1 if bad else 0)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
