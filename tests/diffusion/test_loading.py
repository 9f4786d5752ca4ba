"""tracemark.diffusion: LoRAs in the layouts auditors receive, devices, dtypes, and the arrow
product -> test world (never the other way round). Runs on the tiny untrained pipeline."""

from __future__ import annotations

import json
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

    from tracemark.sim import build_tiny_pipeline
    from tracemark.sim.pipeline import load_pipeline

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
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", "cuda") == torch.float16 and resolve_dtype("auto", "cpu") == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(TracemarkError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(TracemarkError, match="--device must be"):
        resolve_device("tpu")
    with pytest.raises(TracemarkError, match="--dtype must be"):
        resolve_dtype("fp8", "cpu")
    pipe = load_pipeline(base, lora=files["kohya"], device="cpu", dtype="bf16")  # half precision on the CPU
    assert pipe.unet.dtype == torch.bfloat16
    out = generate(base, ["a red circle"], 2, tmp_path / "g", steps=2, pipe=pipe)
    assert len(list(out.glob("*.png"))) == 2
    with pytest.raises(TracemarkError, match="needs --config"):
        load_pipeline(files["kohya"])  # a .safetensors given as --model is taken for a single-file checkpoint


def test_ancestral_sampler_is_reproducible_per_image(lora_files, tmp_path):
    """Each image has its own generator, also for the sampler's fresh noise: same image whatever the batch."""
    from diffusers import EulerAncestralDiscreteScheduler

    from tracemark.diffusion import generate_images, load_pipeline
    from tracemark.sim import default_base_path

    pipe = load_pipeline(default_base_path())  # trained: real images, not NaNs of an untrained net
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    a = generate_images(pipe, ["a red circle", "a blue sky", "a face"], seed=5, steps=4, batch_size=3)
    b = generate_images(pipe, ["a red circle", "a blue sky", "a face"], seed=5, steps=4, batch_size=1)
    c = generate_images(pipe, ["a red circle", "a blue sky", "a face"], seed=6, steps=4, batch_size=3)
    diff = np.abs(a.astype(int) - b.astype(int))
    # equal up to float non-associativity across batch shapes and threads (a sampler drawing its fresh
    # noise from a shared generator differs by 13.9 levels on average: measured)
    assert a.std() > 5 and diff.mean() < 0.05 and diff.max() <= 4, (diff.mean(), diff.max())  # measured 1e-4, 1
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10


def test_the_product_never_loads_the_test_world():
    code = (
        "import sys, tracemark, tracemark.cli, tracemark.audit, tracemark.audit_cli, tracemark.diffusion, "
        "tracemark.whitebox, tracemark.trace\n"
        "tracemark.cli._mount_optional(['audit'])\n"
        "tracemark.cli._mount_optional(['generate'])\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('tracemark.sim', 'tracemark.eval')))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
