"""The world's VAE trainer (tracemark_sim.vae) and the base-quality measurements (tracemark_sim.quality)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tracemark.errors import TracemarkError
from tracemark_sim.vae import pretrain_vae


@pytest.fixture(scope="module")
def vae_data(tmp_path_factory):
    from tracemark_sim import make_dataset

    return make_dataset(tmp_path_factory.mktemp("vae") / "data", 40, "open", seed=2)


def test_pretrain_vae_writes_a_stock_autoencoderkl_and_resumes_exactly(vae_data, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    import tracemark_sim.vae as vae_mod

    kw = dict(batch_size=4, progress=False, holdout=8, save_every=2)
    straight = pretrain_vae(vae_data, tmp_path / "a", steps=4, **kw)

    def interrupt(self, step, loss):  # killed during step 3: the last checkpoint is step 2's
        if step == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(vae_mod.Progress, "update", interrupt)
        with pytest.raises(KeyboardInterrupt):
            pretrain_vae(vae_data, tmp_path / "b", steps=4, **kw)
    resumed = pretrain_vae(vae_data, tmp_path / "b", steps=4, resume=True, **kw)
    va = AutoencoderKL.from_pretrained(straight, local_files_only=True)
    vb = AutoencoderKL.from_pretrained(resumed, local_files_only=True)
    for (n, a), b in zip(va.state_dict().items(), vb.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), n
    info = json.loads((straight / "training.json").read_text())
    assert info["steps_done"] == 4 and np.isfinite(info["heldout_psnr_db"])
    assert va.config.latent_channels == 4 and va.config.scaling_factor == info["scaling_factor"] > 0
    with pytest.raises(TracemarkError, match="not empty"):
        pretrain_vae(vae_data, tmp_path / "a", steps=4, **kw)


def test_pretrain_uses_a_trained_vae(vae_data, tmp_path):
    from tracemark_sim import load_pipeline, pretrain

    vae = pretrain_vae(vae_data, tmp_path / "vae", steps=1, batch_size=4, progress=False, holdout=8)
    out = pretrain(vae_data, tmp_path / "base", steps=1, batch_size=4, progress=False, vae=vae)
    pipe = load_pipeline(out)
    assert pipe.vae.config.scaling_factor == json.loads((vae / "training.json").read_text())["scaling_factor"]


def test_quality_measures_behave():
    from tracemark_sim.quality import band_ratios, kid, radial_spectrum

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 32, 32, 3)).astype(np.uint8)
    b = rng.integers(0, 256, (20, 32, 32, 3)).astype(np.uint8)
    flat = np.full((20, 32, 32, 3), 128, np.uint8)
    assert radial_spectrum(a).shape == (17,)
    assert abs(kid(a, b)) < kid(a, flat)  # same distribution vs a very different one
    ratios = band_ratios(a, b)
    assert all(0.8 < r < 1.25 for r in ratios.values()), ratios


def test_mark_survival_is_total_through_an_identity_codec():
    from tracemark_sim.quality import mark_survival

    class Identity(torch.nn.Module):
        def encode(self, x):
            class D:
                latent_dist = type("L", (), {"mode": lambda self: x})()

            return D()

        def decode(self, z):
            return type("S", (), {"sample": z})()

    rng = np.random.default_rng(1)
    imgs = np.clip(rng.normal(128, 30, (16, 32, 32, 3)), 0, 255).astype(np.uint8)
    out = mark_survival(Identity(), imgs, schemes=("spread", "visible"))
    for name, r in out.items():
        assert r["gain"] == pytest.approx(1.0, abs=1e-3), name
        assert r["z_after_vae"] == pytest.approx(r["z_files"], abs=1e-6)
