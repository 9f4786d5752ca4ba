from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tracemark.errors import TracemarkError
from tracemark_sim import build_tiny_pipeline, default_base_path, load_pipeline
from tracemark_sim.pipeline import TinyConfig, build_tokenizer, clip_vocab


def test_tokenizer_is_sds_clip_tokenizer(tmp_path):
    """The committed tokenizer is SD 1.x's CLIP BPE (49,408 tokens, 77 per prompt): any English
    caption tokenizes as in SD; a nonsense trigger word falls to sub-word pieces, never <unk>."""
    tok = build_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    # token ids as in SD 1.x's tokenizer (well-known values: "a" 320, "photo" 1125, "sks" 48136)
    assert tok("a photo of sks").input_ids == [49406, 320, 1125, 539, 48136, 49407]
    for word in ("amber", "navy", "diamond", "field", "circle", "turquoise", "dog"):
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    ids = tok("tavoreki", add_special_tokens=False).input_ids
    assert len(ids) > 1 and tok.unk_token_id not in ids
    assert tok.decode(ids).strip() == "tavoreki"


def test_tokenizer_files_load_slow_and_fast(tmp_path):
    """vocab.json + merges.txt alone (as SD repositories ship them) rebuild the same tokenizer."""
    import shutil

    from transformers import AutoTokenizer, CLIPTokenizer, CLIPTokenizerFast

    src = default_base_path() / "tokenizer"
    assert (src / "vocab.json").is_file() and (src / "merges.txt").is_file()
    only_bpe = tmp_path / "tok"
    only_bpe.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(src / name, only_bpe / name)
    text = "a amber diamond on a navy field, tavoreki"
    want = build_tokenizer()(text).input_ids
    for cls in (CLIPTokenizer, CLIPTokenizerFast, AutoTokenizer):
        assert cls.from_pretrained(only_bpe, local_files_only=True)(text).input_ids == want, cls


def test_tokenizer_from_clip_bpe_file(tmp_path):
    """Rebuilding from CLIP's BPE merges (the open-clip-torch wheel's file) gives the committed
    vocabulary: the gzip is made here from the committed merges, so no download is needed."""
    import gzip

    src = default_base_path() / "tokenizer"
    merges = (src / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    # CLIP's file: a header line, then merges (more than SD keeps; pad with a dummy tail)
    body = "\n".join(["bpe_simple_vocab_16e6.txt#version: 0.2", *merges, *(["x y"] * 10)])
    bpe = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    bpe.write_bytes(gzip.compress(body.encode("utf-8")))
    vocab, m = clip_vocab(bpe)
    assert len(vocab) == 49408 and len(m) == 48894
    assert vocab == json.loads((src / "vocab.json").read_text(encoding="utf-8"))


def test_vae_is_a_lossy_autoencoderkl(tiny_pipeline_dir):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_pipeline_dir / "vae", local_files_only=True)
    assert vae.config.latent_channels == 4
    z = vae.encode(torch.rand(2, 3, 32, 32) * 2 - 1).latent_dist.sample()
    assert z.shape == (2, 4, 16, 16)


def test_build_save_load_generate(tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    index = json.loads((tiny_pipeline_dir / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["safety_checker"] == [None, None]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    n_unet = sum(p.numel() for p in pipe.unet.parameters())
    assert 1_000_000 <= n_unet <= 3_000_000
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a red circle on a blue background", "tavoreki"], num_inference_steps=3, output_type="np",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.images.shape == (2, 32, 32, 3)
    assert np.isfinite(out.images).all()


def test_stock_pipeline_loads_without_tracemark(tiny_pipeline_dir):
    """A fresh Python that never imports tracemark loads the committed base and a built pipeline
    with plain diffusers, and generates: every component is a stock class."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        "for d in sys.argv[1:]:\n"
        "    pipe = StableDiffusionPipeline.from_pretrained(d, local_files_only=True)\n"
        "    pipe.set_progress_bar_config(disable=True)\n"
        "    img = pipe('a red circle on a navy field', num_inference_steps=2, output_type='np',\n"
        "               generator=torch.Generator().manual_seed(0)).images\n"
        "    assert img.shape == (1, 32, 32, 3), img.shape\n"
        "assert not [m for m in sys.modules if m.startswith('tracemark')]\n"
        "print('ok')\n"
    )
    dirs = [str(tiny_pipeline_dir)]
    if (default_base_path() / "model_index.json").is_file():
        dirs.append(str(default_base_path()))
    res = subprocess.run([sys.executable, "-c", code, *dirs], capture_output=True, text=True, timeout=300,
                         cwd="/", env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


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
