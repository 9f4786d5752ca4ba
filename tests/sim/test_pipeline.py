from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tracemark.errors import TracemarkError
from tracemark.sim import build_tiny_pipeline, load_pipeline
from tracemark.sim.codec import SpaceToDepthCodec
from tracemark.sim.data import caption_words
from tracemark.sim.pipeline import TinyConfig, build_tokenizer


def test_tokenizer_covers_caption_words_and_falls_back_to_pieces(tmp_path):
    tok = build_tokenizer()
    unk = tok.unk_token_id
    for word in caption_words():
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, word
    ids = tok("tavoreki", add_special_tokens=False).input_ids
    assert len(ids) > 1 and unk not in ids
    assert tok.decode(ids) == "tavoreki"
    odd = tok("Zürich 42 qxj!", add_special_tokens=False).input_ids
    assert unk not in odd
    tok.save_pretrained(tmp_path / "tok")
    from transformers import CLIPTokenizer

    again = CLIPTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    text = "a small red circle at the top left on a blue background, tavoreki"
    assert again(text).input_ids == tok(text).input_ids
    assert again.model_max_length == tok.model_max_length == 48


def test_codec_is_exact_and_autoencoderkl_shaped():
    codec = SpaceToDepthCodec()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    dist = codec.encode(x).latent_dist
    z = dist.sample(generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 12, 16, 16)
    assert torch.equal(z, dist.mode())
    assert torch.equal(codec.decode(z).sample, x)
    assert codec.config.latent_channels == 12 and codec.config.scaling_factor == 1.0
    assert 2 ** (len(codec.config.block_out_channels) - 1) == 2


def test_build_save_load_generate(tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    index = json.loads((tiny_pipeline_dir / "model_index.json").read_text())
    assert index["vae"] == ["tracemark.sim.codec", "SpaceToDepthCodec"]
    assert index["safety_checker"] == [None, None]
    # plain diffusers loading works once tracemark.sim is imported (it is, above)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, local_files_only=True)
    assert isinstance(pipe.vae, SpaceToDepthCodec)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    n_unet = sum(p.numel() for p in pipe.unet.parameters())
    assert 1_000_000 <= n_unet <= 3_000_000
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a red circle on a blue background", "tavoreki"], num_inference_steps=3, output_type="np",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.images.shape == (2, 32, 32, 3)
    assert np.isfinite(out.images).all()


def test_build_is_deterministic(tmp_path):
    a = build_tiny_pipeline(tmp_path / "a", seed=5)
    b = build_tiny_pipeline(tmp_path / "b", seed=5)
    fa = (a / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    fb = (b / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert fa == fb


def test_build_refuses_nonempty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("hi")
    with pytest.raises(TracemarkError):
        build_tiny_pipeline(tmp_path / "x")


def test_load_pipeline_errors(tmp_path):
    with pytest.raises(TracemarkError, match="not found"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TracemarkError, match="not a diffusers pipeline"):
        load_pipeline(tmp_path / "empty")


def test_small_config_variant(tmp_path):
    cfg = TinyConfig(unet_channels=(32, 64), text_hidden=32)
    path = build_tiny_pipeline(tmp_path / "small", config=cfg)
    pipe = load_pipeline(path)
    assert pipe.unet.config.block_out_channels == [32, 64] or tuple(pipe.unet.config.block_out_channels) == (32, 64)
    assert pipe.text_encoder.config.hidden_size == 32
