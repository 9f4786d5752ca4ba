"""tracemark.diffusion: LoRAs in the layouts auditors receive, devices, dtypes, and the arrow
product -> test world (never the other way round). Runs on the tiny untrained pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tracemark.errors import TracemarkError

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """One random LoRA (r 4, lora_alpha 8: scale 2) written in diffusers, kohya and peft layouts, and
    the UNet output it must give."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from tracemark_sim import build_tiny_pipeline
    from tracemark_sim.pipeline import load_pipeline

    tmp = tmp_path_factory.mktemp("lora")
    base = build_tiny_pipeline(tmp / "tiny", seed=0)
    pipe = load_pipeline(base)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
                     init_lora_weights=False)  # random B: the adapter changes the output
    torch.manual_seed(0)
    pipe.unet.add_adapter(cfg)
    x, t, emb = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, pipe.text_encoder.config.hidden_size)
    with torch.no_grad():
        want = pipe.unet(x, t, encoder_hidden_states=emb).sample
    sd = get_peft_model_state_dict(pipe.unet)  # keys "down_blocks...lora_A.weight"
    (tmp / "diffusers").mkdir()
    StableDiffusionPipeline.save_lora_weights(tmp / "diffusers", unet_lora_layers=sd,
                                              unet_lora_adapter_metadata=cfg.to_dict(), safe_serialization=True)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in sd.items()})
    kohya = {k: (torch.tensor(8.0) if k.endswith(".alpha") else v) for k, v in kohya.items()}  # kohya keeps alpha
    save_file(kohya, tmp / "kohya.safetensors")
    (tmp / "peft").mkdir()
    save_file({f"base_model.model.{k}": v for k, v in sd.items()}, tmp / "peft" / "adapter_model.safetensors")
    cfg.save_pretrained(tmp / "peft")
    return base, {"diffusers": tmp / "diffusers", "kohya": tmp / "kohya.safetensors", "peft": tmp / "peft"}, \
        (x, t, emb, want)


@pytest.mark.parametrize("layout", ["diffusers", "kohya", "peft"])
def test_every_lora_layout_loads_to_the_same_model(lora_files, layout):
    from tracemark.diffusion import load_lora, load_pipeline

    base, files, (x, t, emb, want) = lora_files
    pipe = load_pipeline(base)
    assert load_lora(pipe, files[layout]) == layout
    with torch.no_grad():
        got = pipe.unet(x, t, encoder_hidden_states=emb).sample
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_a_lora_that_does_not_fit_names_what_did_not_match(lora_files, tmp_path):
    from safetensors.torch import load_file, save_file

    from tracemark.diffusion import load_lora, load_pipeline

    base, files, _ = lora_files
    sd = load_file(files["kohya"])
    sd = {k.replace("down_blocks_0", "down_blocks_9"): v for k, v in sd.items()}  # modules this model lacks
    save_file(sd, tmp_path / "other.safetensors")
    with pytest.raises(TracemarkError, match=r"other.safetensors: LoRA weights \(kohya layout\) do not fit"):
        load_lora(load_pipeline(base), tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(TracemarkError, match="not readable LoRA weights"):
        load_lora(load_pipeline(base), tmp_path / "junk.safetensors")


def test_devices_and_dtypes(lora_files, tmp_path):
    from tracemark.diffusion import generate, load_pipeline, resolve_device, resolve_dtype

    base, files, _ = lora_files
    # "auto" follows what the machine has, on both kinds of machine (whatever this one is)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
        assert resolve_dtype("auto", resolve_device("auto")) == torch.float16  # what SD users run on a GPU
        m.setattr(torch.cuda, "is_available", lambda: False)
        assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
        with pytest.raises(TracemarkError, match="^device cuda: CUDA is not available here$"):
            resolve_device("cuda")
        auto = load_pipeline(base, device="auto", dtype="auto")  # no CUDA: the CPU in fp32
        assert auto.device.type == "cpu" and auto.unet.dtype == torch.float32
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("fp16", "cpu") == torch.float16
    with pytest.raises(TracemarkError, match="^device must be"):
        resolve_device("tpu")
    with pytest.raises(TracemarkError, match="^dtype must be"):
        resolve_dtype("fp8", "cpu")
    pipe = load_pipeline(base, lora=files["kohya"], device="cpu", dtype="bf16")  # half precision on the CPU
    assert pipe.unet.dtype == torch.bfloat16
    out = generate(base, ["a red circle"], 2, tmp_path / "g", steps=2, pipe=pipe)
    assert len(list(out.glob("*.png"))) == 2
    with pytest.raises(TracemarkError, match="needs config "):
        load_pipeline(files["kohya"])  # a .safetensors given as --model is taken for a single-file checkpoint


def test_ancestral_sampler_is_reproducible_per_image(lora_files, tmp_path):
    """Each image has its own generator, also for the sampler's fresh noise: same image whatever the batch."""
    from diffusers import EulerAncestralDiscreteScheduler

    from tracemark.diffusion import generate_images, load_pipeline
    from tracemark_sim import default_base_path

    pipe = load_pipeline(default_base_path())  # trained: real images, not NaNs of an untrained net
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    a = generate_images(pipe, ["a red circle", "a blue sky", "a face"], seed=5, steps=4, batch_size=3)
    b = generate_images(pipe, ["a red circle", "a blue sky", "a face"], seed=5, steps=4, batch_size=1)
    c = generate_images(pipe, ["a red circle", "a blue sky", "a face"], seed=6, steps=4, batch_size=3)
    diff = np.abs(a.astype(int) - b.astype(int))
    # equal up to float non-associativity across batch shapes and threads: measured identical on 1
    # thread, and on 4 threads one pixel value of 9216 off by one level (mean 1.1e-4, max 1); a
    # sampler drawing its fresh noise from a shared generator differs by 13.9 levels on average
    assert a.std() > 5 and diff.mean() < 5e-4 and diff.max() <= 1, (diff.mean(), diff.max())
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10


def test_the_product_never_loads_the_test_world():
    code = (
        "import sys, tracemark, tracemark.cli, tracemark.audit.blackbox, tracemark.audit.whitebox, "
        "tracemark.diffusion, tracemark.diffusion.denoiser, tracemark.detection.tracing, typer\n"
        "typer.main.get_command(tracemark.cli.app)\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('tracemark_sim', 'research')))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


# --- single-file (original-layout, "LDM") checkpoints ------------------------------------------------

def _sd_like_tiny(path):
    """A tiny pipeline arranged like SD 1.x where the committed base is not: 4 UNet levels with
    attention on the first three, 2 resnets per block, a 3-level VAE with a mid-block attention."""
    from diffusers import AutoencoderKL

    from tracemark_sim import build_tiny_pipeline
    from tracemark_sim.pipeline import TinyConfig

    cfg = TinyConfig(unet_channels=(32, 32, 64, 64), layers_per_block=2, attention_levels=(True, True, True, False),
                     vae_channels=(32, 32, 64))
    torch.manual_seed(1)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(32, 32, 64), layers_per_block=2, latent_channels=4, norm_num_groups=32,
                        sample_size=64)  # mid_block_add_attention: True, as SD's
    return build_tiny_pipeline(path, seed=1, config=cfg, vae=vae)


@pytest.fixture(scope="module")
def single_files(tmp_path_factory):
    """{name: (pipeline folder, the same weights as one LDM-layout .safetensors)} for the committed
    (trained) base and an SD-arranged tiny pipeline."""
    from tracemark_sim import default_base_path
    from tracemark_sim.single_file import write_single_file

    tmp = tmp_path_factory.mktemp("single")
    out = {"base": default_base_path(), "sd_like": _sd_like_tiny(tmp / "sd_like")}
    return {k: (d, write_single_file(d, tmp / f"{k}.safetensors")) for k, d in out.items()}


@pytest.mark.parametrize("name", ["base", "sd_like"])
def test_a_single_file_checkpoint_loads_the_folders_weights(single_files, name):
    """Every UNet, VAE and text-encoder tensor read from the LDM file by diffusers' converter equals
    the folder's: the writer (tracemark_sim.single_file) and the reader agree on the public layout."""
    from safetensors import safe_open

    from tracemark.diffusion import load_pipeline

    folder, ckpt = single_files[name]
    with safe_open(str(ckpt), framework="pt") as f:
        keys = list(f.keys())
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) or k in ("betas", "alphas_cumprod") for k in keys)
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys  # original names, not diffusers'
    a, b = load_pipeline(ckpt, config=folder), load_pipeline(folder)
    for part in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys(), part
        bad = [k for k in sb if not torch.equal(sa[k], sb[k])]
        assert not bad, (part, bad[:3])
    assert dict(a.scheduler.config) == dict(b.scheduler.config)
    assert a.tokenizer("a tavoreki cat").input_ids == b.tokenizer("a tavoreki cat").input_ids


def test_a_single_file_checkpoint_generates_the_folders_images(single_files, tmp_path):
    from tracemark.diffusion import generate_images, load_pipeline
    from tracemark_sim.single_file import write_single_file

    folder, ckpt = single_files["base"]
    # --config needs the folder's configs, tokenizer and scheduler only: no weights are read from it;
    # and its model_index may list SD 1.5's safety checker and feature extractor (not loaded / loaded)
    from transformers import CLIPImageProcessor

    config = shutil.copytree(folder, tmp_path / "config", ignore=shutil.ignore_patterns("*.safetensors"))
    CLIPImageProcessor().save_pretrained(config / "feature_extractor")
    index = json.loads((config / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"], requires_safety_checker=True)
    (config / "model_index.json").write_text(json.dumps(index))
    prompts = ["a red circle", "a face"]
    want = generate_images(load_pipeline(folder), prompts, seed=3, steps=4)
    got = generate_images(load_pipeline(ckpt, config=config), prompts, seed=3, steps=4)
    assert want.std() > 5 and np.array_equal(got, want)
    # model sites publish fp16 files: read back at fp32, the weights are the folder's rounded to fp16
    half = write_single_file(folder, tmp_path / "half.safetensors", dtype=torch.float16)
    unet = load_pipeline(half, config=folder, dtype="fp32").unet
    ref = load_pipeline(folder).unet
    assert unet.dtype == torch.float32
    assert all(torch.equal(v, ref.state_dict()[k].half().float()) for k, v in unet.state_dict().items())


@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_a_lora_on_a_single_file_checkpoint(lora_files, tmp_path, layout):
    """``--model CKPT --config DIR --lora L``: the same UNet output as the LoRA on the folder."""
    from tracemark.diffusion import load_pipeline
    from tracemark_sim.single_file import write_single_file

    base, files, (x, t, emb, want) = lora_files
    pipe = load_pipeline(write_single_file(base, tmp_path / "base.safetensors"), lora=files[layout], config=base)
    with torch.no_grad():
        got = pipe.unet(x, t, encoder_hidden_states=emb).sample
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_the_ldm_layout_at_sd15_size_reads_back_through_diffusers():
    """SD 1.5's own UNet and VAE architecture (meta tensors: no memory): the written names are those
    of SD 1.5 files (spot checks of the public layout) and diffusers' reader maps every one back."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
                                                     infer_diffusers_model_type)

    from tracemark_sim.single_file import unet_to_ldm, vae_to_ldm

    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                    cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae)}
    assert len(sd) == 686 + 248  # SD 1.5: 686 UNet and 248 VAE tensors
    shapes = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
              "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
              "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
              "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
              "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
              "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
              "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
              "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
              "first_stage_model.decoder.up.3.block.2.conv2.weight": (512, 512, 3, 3),
              "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1)}
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert infer_diffusers_model_type(sd) == "v1"
    for model, convert in ((unet, convert_ldm_unet_checkpoint), (vae, convert_ldm_vae_checkpoint)):
        back = convert(sd, dict(model.config))
        want = model.state_dict()
        assert back.keys() == want.keys()
        assert all(back[k].shape == want[k].shape for k in want)


def test_a_checkpoint_that_does_not_fit_the_config_is_one_line_naming_the_file(single_files, tmp_path):
    from tracemark.diffusion import load_pipeline
    from tracemark_sim import build_tiny_pipeline
    from tracemark_sim.pipeline import TinyConfig
    from tracemark_sim.single_file import write_single_file

    base, ckpt = single_files["base"]
    sd_like, sd_ckpt = single_files["sd_like"]

    def refused(path, config, needle, named=None):
        with pytest.raises(TracemarkError) as err:
            load_pipeline(path, config=config)
        msg = str(err.value)
        assert msg.startswith(f"{named or path}: ") and needle in msg and "\n" not in msg, msg

    refused(sd_ckpt, base, "does not fit config ")  # another architecture: shapes differ
    refused(ckpt, sd_like, "does not fit config ")
    # a deeper text encoder: diffusers would skip the extra layer's tensors and load the rest
    deeper = write_single_file(build_tiny_pipeline(tmp_path / "deep", seed=2, config=TinyConfig(text_layers=3)),
                               tmp_path / "deep.safetensors")
    refused(deeper, base, "its text_encoder has 52 tensors, the config's 36")
    refused(write_single_file(base, tmp_path / "no_te.safetensors", text_encoder=False), base,
            "no CLIPTextModel weights")
    refused(base / "unet" / "diffusion_pytorch_model.safetensors", base, "not an original-layout")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    refused(tmp_path / "junk.safetensors", base, "cannot load pipeline")
    refused(ckpt, base / "unet", ": config must", named=base / "unet")
    refused(ckpt, None, "needs config ")


def test_cli_audit_of_a_single_file_checkpoint(single_files, sample_dir, tmp_path):
    """``tracemark audit --model CKPT --config DIR`` end to end (fp16 on the CPU: the path a user
    copying a GPU command gets); a checkpoint of another architecture is one line, no traceback."""
    import hashlib
    import os

    folder, ckpt = single_files["base"]
    _, sd_ckpt = single_files["sd_like"]
    home = tmp_path / "home"
    env = {**os.environ, "TRACEMARK_HOME": str(home), "COLUMNS": "200"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "tracemark", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=600)

    assert run("init").returncode == 0
    assert run("protect", sample_dir, "-l", "acme", "-o", tmp_path / "acme", "--rate", "0.2").returncode == 0
    p = run("audit", "--model", ckpt, "--blackbox", "--config", folder, "--n", 16, "--steps", 2, "--decoys", 100,
            "--device", "cpu", "--dtype", "fp16", "--batch-size", 8, "--json", tmp_path / "v.json",
            "--report", tmp_path / "r.html")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "cannot run with" not in p.stderr  # diffusers' fp16-on-CPU warning is not shown
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["kind"] == "model" and v["n_images"] == 16 and len(v["licensees"]) == 1
    assert v["params"]["config"] == str(folder) and f"--config {folder}" in (tmp_path / "r.html").read_text()
    file_digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert v["model_hash"] == hashlib.sha256(ckpt.name.encode() + b"\0" + file_digest.encode()).hexdigest()
    p = run("audit", "--model", sd_ckpt, "--blackbox", "--config", folder, "--n", 16, "--device", "cpu")
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(lines) == 1, p.stderr
    assert str(sd_ckpt) in lines[0] and "does not fit --config" in lines[0]


def test_whitebox_with_a_single_file_base_reads_zero_residuals(single_files, sample_dir, tmp_path):
    """``--whitebox --base CKPT --config DIR``: the base read from the LDM file is the folder's model
    exactly, so the suspect (the folder) minus the reference leaves nothing (score 0.0, not ~0)."""
    from registry_helpers import seeded_registry

    from tracemark.audit.whitebox import audit_whitebox
    from tracemark.marking.protect import protect

    folder, ckpt = single_files["base"]
    reg = seeded_registry(tmp_path / "home")
    protect(sample_dir, tmp_path / "acme", "acme", registry=reg, rate=0.2, workers=1)
    d = audit_whitebox(folder, reg, sample_dir, base=ckpt, config=folder, device="cpu", n_decoys=100).to_dict()
    assert d["params"]["reference"] == "base" and d["params"]["config"] == str(folder)
    assert [lic["score"] for lic in d["licensees"]] == [0.0] and not d["used"]


def test_fp16_on_the_cpu_runs_or_is_one_line(monkeypatch):
    """``--dtype fp16 --device cpu``: PyTorch 2.x has CPU half kernels, so it must run (images close
    to fp32's); a PyTorch without them gets the one-line error of _check_cpu_half."""
    from tracemark.diffusion import generate_images, load_pipeline
    from tracemark_sim import default_base_path

    with monkeypatch.context() as m:  # a PyTorch without CPU half convolutions (as 1.x was)
        def no_half(*a, **k):
            raise RuntimeError('"slow_conv2d_cpu" not implemented for \'Half\'')

        m.setattr(torch.nn.functional, "conv2d", no_half)
        with pytest.raises(TracemarkError, match=r"^dtype fp16 on the CPU: .*use dtype fp32 or bf16") as err:
            load_pipeline(default_base_path(), device="cpu", dtype="fp16")
        assert "\n" not in str(err.value)

    if int(torch.__version__.split(".")[0]) < 2:
        pytest.skip(f"PyTorch {torch.__version__} has no CPU float16 kernels: only the one-line error applies")
    half = load_pipeline(default_base_path(), device="cpu", dtype="fp16")  # must load: no error expected
    assert half.unet.dtype == torch.float16
    a = generate_images(half, ["a red circle", "a face"], seed=1, steps=4).astype(int)
    b = generate_images(load_pipeline(default_base_path(), device="cpu"), ["a red circle", "a face"], seed=1,
                        steps=4).astype(int)
    diff = np.abs(a - b)
    # measured (torch 2.13, 1 and 4 threads): mean 0.077 levels, max 1
    assert b.std() > 5 and diff.mean() < 0.25 and diff.max() <= 2, (diff.mean(), diff.max())
