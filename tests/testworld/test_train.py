from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tracemark.errors import TracemarkError
from tracemark_sim import build_tiny_pipeline, finetune, generate, load_pipeline, pretrain
from tracemark_sim.pipeline import TinyConfig
from tracemark_sim.train import LORA_WEIGHT_NAME, export_checkpoint

FAST = dict(batch_size=4, progress=False)


def _images(folder):
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)).astype(int) for p in sorted(folder.glob("*.png"))])


def test_lora_finetune_saves_diffusers_lora_that_changes_outputs(tiny_pipeline_dir, small_data_dir, tmp_path):
    out = finetune(small_data_dir, tiny_pipeline_dir, tmp_path / "lora", method="lora", steps=3, lr=1e-2, rank=4, **FAST)
    weights = out / LORA_WEIGHT_NAME
    assert weights.is_file()
    saved = load_file(weights)
    assert any(".to_q." in k for k in saved) and any(".conv1." in k for k in saved)
    info = json.loads((out / "training.json").read_text())
    assert info["steps_done"] == 3 and info["method"] == "lora"

    pipe = load_pipeline(tiny_pipeline_dir)
    pipe.load_lora_weights(out)  # plain diffusers call
    # every saved tensor made it into the model (none silently dropped)
    loaded = {n: p for n, p in pipe.unet.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved)
    b_saved = [v for k, v in saved.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in b_saved)  # trained: B moved away from its zero init

    prompts = ["a red circle on a blue background"] * 2
    plain = generate(tiny_pipeline_dir, prompts, 2, tmp_path / "g0", steps=3)
    with_lora = generate(tiny_pipeline_dir, prompts, 2, tmp_path / "g1", steps=3, lora=out)
    assert np.abs(_images(plain) - _images(with_lora)).mean() > 0.5


def test_lora_attention_only_preset(tiny_pipeline_dir, small_data_dir, tmp_path):
    out = finetune(small_data_dir, tiny_pipeline_dir, tmp_path / "l", steps=2, rank=2, lora_targets="attn", **FAST)
    saved = load_file(out / LORA_WEIGHT_NAME)
    assert saved and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out")) for k in saved)
    pipe = load_pipeline(tiny_pipeline_dir, lora=out)
    assert len([n for n, _ in pipe.unet.named_parameters() if "lora_" in n]) == len(saved)


def test_lora_that_does_not_fit_is_a_tracemark_error(tiny_pipeline_dir, small_data_dir, tmp_path):
    other = build_tiny_pipeline(tmp_path / "other", config=TinyConfig(unet_channels=(16, 32), norm_num_groups=8))
    lora = finetune(small_data_dir, other, tmp_path / "l", steps=1, rank=2, **FAST)
    with pytest.raises(TracemarkError, match="do not fit|matched"):
        load_pipeline(tiny_pipeline_dir, lora=lora)
    with pytest.raises(TracemarkError, match="not found"):
        load_pipeline(tiny_pipeline_dir, lora=tmp_path / "nope")
    # a LoRA whose module names only partly exist in the model must not load silently
    two_levels = build_tiny_pipeline(tmp_path / "two", config=TinyConfig(unet_channels=(32, 64)))
    full_lora = finetune(small_data_dir, tiny_pipeline_dir, tmp_path / "l3", steps=1, rank=2, **FAST)
    with pytest.raises(TracemarkError, match="do not fit"):
        load_pipeline(two_levels, lora=full_lora)


def test_full_finetune_writes_a_pipeline(tiny_pipeline_dir, small_data_dir, tmp_path):
    out = finetune(small_data_dir, tiny_pipeline_dir, tmp_path / "full", method="full", steps=2, lr=1e-3, **FAST)
    pipe = load_pipeline(out)
    base = load_pipeline(tiny_pipeline_dir)
    diff = sum((a - b).abs().sum().item() for a, b in zip(pipe.unet.parameters(), base.unet.parameters()))
    assert diff > 0
    # the text encoder stays frozen by default
    for a, b in zip(pipe.text_encoder.parameters(), base.text_encoder.parameters()):
        assert torch.equal(a, b)


def test_resume_continues_exactly(tiny_pipeline_dir, small_data_dir, tmp_path):
    kw = dict(method="full", lr=1e-3, save_every=2, **FAST)
    straight = finetune(small_data_dir, tiny_pipeline_dir, tmp_path / "a", steps=4, **kw)
    finetune(small_data_dir, tiny_pipeline_dir, tmp_path / "b", steps=2, **kw)
    resumed = finetune(small_data_dir, tiny_pipeline_dir, tmp_path / "b", steps=4, resume=True, **kw)
    a = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(TracemarkError, match="not empty"):
        finetune(small_data_dir, tiny_pipeline_dir, tmp_path / "b", steps=4, **kw)
    with pytest.raises(TracemarkError, match="settings differ"):
        finetune(small_data_dir, tiny_pipeline_dir, tmp_path / "b", steps=6, resume=True, seed=9, **kw)


def test_pretrain_trains_text_encoder_and_exports_checkpoint(small_data_dir, tmp_path):
    out = pretrain(small_data_dir, tmp_path / "pre", steps=2, batch_size=4, progress=False, save_every=1)
    pipe = load_pipeline(out)
    fresh = load_pipeline(build_tiny_pipeline(tmp_path / "fresh", seed=0))
    te_diff = sum((a - b).abs().sum().item() for a, b in zip(pipe.text_encoder.parameters(),
                                                            fresh.text_encoder.parameters()))  # fmt: skip
    assert te_diff > 0
    exported = export_checkpoint(out, tmp_path / "exported")
    again = load_pipeline(exported)
    for a, b in zip(again.unet.parameters(), pipe.unet.parameters()):
        assert torch.allclose(a, b)


def test_pretrain_a_second_base_of_another_size(small_data_dir, tmp_path):
    out = pretrain(small_data_dir, tmp_path / "b2", steps=1, batch_size=4, progress=False, seed=1,
                   unet_channels=[16, 32, 32])
    pipe = load_pipeline(out)
    assert list(pipe.unet.config.block_out_channels) == [16, 32, 32]
    # a LoRA fine-tune runs on it unchanged
    lora = finetune(small_data_dir, out, tmp_path / "ft", steps=1, batch_size=4, progress=False)
    assert (lora / "pytorch_lora_weights.safetensors").exists()


def test_finetune_errors(tiny_pipeline_dir, small_data_dir, tmp_path):
    with pytest.raises(TracemarkError, match="method"):
        finetune(small_data_dir, tiny_pipeline_dir, tmp_path / "x", method="dreambooth", steps=1)
    with pytest.raises(TracemarkError, match="not found"):
        finetune(tmp_path / "nodata", tiny_pipeline_dir, tmp_path / "y", steps=1, **FAST)
    with pytest.raises(TracemarkError):
        finetune(small_data_dir, tmp_path / "nomodel", tmp_path / "z", steps=1, **FAST)
    with pytest.raises(TracemarkError, match="preset"):
        finetune(small_data_dir, tiny_pipeline_dir, tmp_path / "w", steps=1, lora_targets="everything", **FAST)


def test_tiny_preset_keeps_the_world_values():
    """The world's experiments stay comparable: TINY is what the trainer used before presets."""
    from tracemark.diffusion.training import LORA_TARGETS, SD15
    from tracemark.diffusion.training import finetune as product_finetune
    from tracemark_sim.train import TINY

    assert (TINY.lr, TINY.steps, TINY.full_lr, TINY.full_steps) == (2e-3, 800, 2e-4, 1000)
    assert TINY.rank == 16 and list(TINY.lora_targets) == LORA_TARGETS["broad"]
    assert (TINY.batch_size, TINY.gradient_accumulation_steps, TINY.gradient_checkpointing) == (32, 1, False)
    assert TINY.caption_dropout == 0.1 and TINY.mixed_precision == "no" and TINY.resolution is None
    assert TINY.cache_latents and (TINY.lr_schedule, TINY.warmup, TINY.ema) == ("constant", 0, 0.0)
    import inspect

    assert inspect.signature(product_finetune).parameters["preset"].default is SD15  # the product's default
