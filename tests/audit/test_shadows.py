"""The owner's shadows as a product feature (issue #28 item 4): ``tracemark shadow`` fine-tunes K
references of the base on the registered clean original, stores and registers them, resumes an
interrupted run; ``tracemark finetune`` is a product command (no test-world import).

Every fine-tune here is 2-4 steps on the CPU test model (the test world's, testworld/) and 8 images
of 32 px."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("diffusers")

from tracemark.io.dataset import content_hash, file_sha256, load_dataset  # noqa: E402
from tracemark.errors import TracemarkError  # noqa: E402
from tracemark_sim import BASE_MODEL as BASE  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 captioned 32x32 images in a folder named ``owner`` (the dataset's registry name)."""
    from tracemark_sim import make_dataset  # the test world draws the images; the product never imports it

    return make_dataset(tmp_path_factory.mktemp("shadow") / "owner", 8, "shapes", seed=3)


def _register(reg, data) -> None:
    """Register ``data`` as protect does (name = folder name, content hash of the clean original)."""
    ds = load_dataset(data)
    with reg.write() as c:
        reg.ensure_dataset(c, data.name, content_hash(ds), len(ds), str(data))


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_shadows_are_trained_stored_registered_and_not_retrained(registry, data, monkeypatch):
    from tracemark.diffusion import training
    from tracemark.audit.shadows import base_fingerprint, train_shadows

    _register(registry, data)
    shadows = train_shadows(registry, data, BASE, count=2, steps=2, progress=False)
    fp = base_fingerprint(BASE)
    assert [s.seed for s in shadows] == [1, 2] and all(s.status == "ready" for s in shadows)
    for s in shadows:
        assert s.path == str(registry.home / "shadows" / "owner" / fp / f"seed-{s.seed}")
        assert file_sha256(s.weights) == s.sha256
        assert s.preset == "tiny" and s.recipe["steps"] == 2 and s.recipe["method"] == "lora"  # auto: the tiny base
        assert s.base_hash == fp and (s.weights.parent / "recipe.json").is_file()
        assert not (s.weights.parent / "checkpoints").exists()
    assert shadows[0].sha256 != shadows[1].sha256  # two seeds, two references
    assert registry.shadows("owner", fp) == shadows and registry.shadows("owner") == shadows
    assert registry.shadows("owner", "0" * 64) == [] and registry.shadows("nobody") == []

    def no_training(*a, **k):
        raise AssertionError("a ready shadow was trained again")

    monkeypatch.setattr(training, "finetune", no_training)
    assert train_shadows(registry, data, BASE, count=2, steps=2, progress=False) == shadows
    with pytest.raises(TracemarkError, match="another recipe") as exc:  # same seeds, other steps: refused, kept
        train_shadows(registry, data, BASE, count=1, steps=3, progress=False)
    assert "\n" not in str(exc.value)

    shadows[1].weights.unlink()  # a lost weights file: no longer offered to the audit
    assert registry.shadows("owner", fp) == shadows[:1]


def test_an_interrupted_shadow_resumes_where_it_stopped(registry, data, monkeypatch, tmp_path):
    """Ctrl-C after step 2 of 3 (checkpoints every 100 steps): the trainer keeps steps 1-2, the shadow
    stays 'training', and the rerun trains step 3 only, to the weights of an uninterrupted run."""
    import torch
    from safetensors.torch import load_file

    from tracemark.audit import shadows as shadows_mod
    from tracemark.diffusion import training
    from tracemark.audit.shadows import base_fingerprint, train_shadows

    _register(registry, data)
    monkeypatch.setattr(shadows_mod, "_save_every", lambda steps, every: 100)
    real_update = training.Progress.update
    seen: list[int] = []

    def interrupting(self, step, loss):
        seen.append(step)
        real_update(self, step, loss)
        if step == 2 and len(seen) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.Progress, "update", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train_shadows(registry, data, BASE, count=1, steps=3, progress=False)
    fp = base_fingerprint(BASE)
    (run,) = registry.shadow_runs("owner", fp)
    assert run.status == "training" and registry.shadows("owner", fp) == []
    ckpt = torch.load(run.weights.parent / training.CHECKPOINT, map_location="cpu", weights_only=False)
    assert ckpt["step"] == 2

    (resumed,) = train_shadows(registry, data, BASE, count=1, steps=3, progress=False)
    assert seen == [1, 2, 3] and resumed.status == "ready" and registry.shadows("owner", fp) == [resumed]
    straight = training.finetune(data, BASE, tmp_path / "straight", preset=training.TINY, steps=3, seed=1,
                                 progress=False)
    a, b = load_file(resumed.weights), load_file(straight / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_folder_that_is_not_a_registered_dataset_is_one_line(registry, data, tmp_path):
    from tracemark.audit.shadows import train_shadows

    with pytest.raises(TracemarkError, match="not a registered dataset") as exc:
        train_shadows(registry, data, BASE, count=1, steps=1, progress=False)
    assert "\n" not in str(exc.value)
    _register(registry, data)
    edited = tmp_path / "owner"  # same name, other content (a copy, not the clean original)
    edited.mkdir()
    for p in data.iterdir():
        (edited / p.name).write_bytes(p.read_bytes())
    first = sorted(edited.glob("*.png"))[0]
    first.write_bytes(sorted(edited.glob("*.png"))[1].read_bytes())
    with pytest.raises(TracemarkError, match="differs from the registered dataset"):
        train_shadows(registry, edited, BASE, count=1, steps=1, progress=False)
    with pytest.raises(TracemarkError, match="^preset must be one of"):
        train_shadows(registry, data, BASE, count=1, steps=1, preset="sdxl", progress=False)
    with pytest.raises(TracemarkError, match="^count must be at least 1"):
        train_shadows(registry, data, BASE, count=0, progress=False)


def test_shadow_cli_refuses_an_unregistered_folder_in_one_line(registry, data):
    p = subprocess.run([sys.executable, "-m", "tracemark.cli", "shadow", str(data), "--steps", "1"],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "not a registered dataset" in lines[0], p.stderr


def test_finetune_is_a_product_command_on_the_default_base(data, tmp_path):
    """``tracemark finetune`` without --base: the default base the installed test world declares (entry
    point ``tracemark.default_base``, with a notice), the tiny preset by ``auto``, LoRA weights
    written; of the test world only its light package ``__init__`` (which the entry point names) is
    imported, none of its modules."""
    import json

    out = tmp_path / "lora"
    code = (
        "import sys\n"
        f"sys.argv = ['tracemark', 'finetune', {str(data)!r}, '--out', {str(out)!r}, '--steps', '1', "
        "'--batch-size', '4']\n"
        "from tracemark.cli import main\n"
        "try:\n    main()\n    rc = 0\nexcept SystemExit as e:\n    rc = e.code or 0\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('tracemark_sim.', 'research')))\n"
        "print('TEST-WORLD', bad)\n"
        "sys.exit(rc or (3 if bad else 0))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert f"default base model of tracemark-testworld ({BASE})" in p.stderr and "--base" in p.stderr
    cfg = json.loads((out / "training.json").read_text())["config"]
    assert cfg["rank"] == 16 and cfg["lr"] == 2e-3 and cfg["cache_latents"]  # the tiny preset, chosen by auto


def test_presets_live_in_the_product_and_auto_picks_by_unet_size(tmp_path):
    import json

    from tracemark.diffusion.training import PRESETS, SD15, TINY, preset_for_base
    from tracemark_sim.train import TINY as WORLD_TINY

    assert PRESETS == {"sd15": SD15, "tiny": TINY} and WORLD_TINY is TINY
    assert preset_for_base(BASE) is TINY and preset_for_base(BASE, "sd15") is SD15
    big = tmp_path / "sd" / "unet"
    big.mkdir(parents=True)
    (big / "config.json").write_text(json.dumps({"sample_size": 64}))
    assert preset_for_base(big.parent) is SD15
