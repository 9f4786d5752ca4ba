"""White-box audit (tracemark.diffusion.denoiser + audit.audit_whitebox) on the tiny untrained pipeline: the
real diffusers code in seconds. Whether a *fine-tuned* model betrays its copy is measured by the
experiments (docs/research/learnability_log.md), not here."""

import json

import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.marking.protect import protect

from pipeline_helpers import memorising_pair, suspect_carrying
from registry_helpers import seeded_registry

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def wb(tmp_path_factory, sample_dir):
    from tracemark_sim import build_tiny_pipeline

    tmp = tmp_path_factory.mktemp("wb")
    reg = seeded_registry(tmp / "home")
    # random selection: these known-answer tests check the statistics' routing on 50 unrelated images
    for lic in ("a", "b", "c"):
        protect(sample_dir, tmp / f"c_{lic}", lic, registry=reg, rate=0.1, workers=1, selection="random")
    protect(sample_dir, tmp / "c_d", "d", registry=reg, rate=0.1, workers=1, strategy="ambient", selection="random")
    return reg, build_tiny_pipeline(tmp / "tiny", seed=0)


def test_innocent_model_names_nobody_and_reports(wb, sample_dir, tmp_path):
    from tracemark.audit.whitebox import audit_whitebox
    from tracemark.audit.report import write_report

    reg, pipe_dir = wb
    res = audit_whitebox(pipe_dir, reg, sample_dir, device="cpu", t_fracs=(0.5,), draws=1)
    d = res.to_dict()
    assert d["kind"] == "whitebox" and not d["used"] and d["params"]["reference"] == "data"
    # every copy is tested on exactly its own marked samples (5 of 50 at 10%)
    assert sorted(s["n_images"] for s in d["licensees"]) == [5, 5, 5, 5]
    # each trigger copy has its own word, so its samples are probed with its own prompts: 3 x 5 + 5 ambient
    assert d["n_images"] == 20
    html = write_report(res, tmp_path / "r.html").read_text()
    # the reproduce command in the CLI's form: MODEL positional, the white box being the default
    assert "Denoiser residuals" in html and f"tracemark audit {pipe_dir} --data {sample_dir}" in html
    assert "--whitebox" not in html
    for c in reg.copies():  # no secret trigger word leaks into the report
        from tracemark.marking.trigger import trigger_of

        w = trigger_of(c, reg)
        assert w is None or w not in html
    json.dumps(d, default=float)


def test_residual_carrying_a_key_pattern_names_that_licensee_only(wb, sample_dir):
    """A suspect whose clean-image predictions carry licensee b's pattern: residuals must be routed
    to the right copies and scored against the right keys (fails if probes, subsets or keys mix up)."""
    from tracemark.audit.whitebox import audit_whitebox

    reg, pipe_dir = wb
    suspect, ref = suspect_carrying(reg, pipe_dir, "b")
    res = audit_whitebox(pipe_dir, reg, sample_dir, pipe=suspect, ref_pipe=ref, t_fracs=(0.5,), draws=1,
                         statistic="residual")
    assert res.params["reference"] == "base"
    assert res.verdict.named == ["b"], [(s.licensee, round(s.z, 2)) for s in res.verdict.scores]


def test_shadow_reference_is_loaded_recorded_and_compared_against(wb, sample_dir, tmp_path):
    """--reference: the residual is taken against the given (shadow) pipeline, not the LoRA-off or
    the data, it is recorded with its path, and the report's reproduce command carries it."""
    from tracemark.audit.whitebox import audit_whitebox
    from tracemark.audit.report import write_report

    reg, pipe_dir = wb
    suspect, _ = suspect_carrying(reg, pipe_dir, "c")
    res = audit_whitebox(pipe_dir, reg, sample_dir, pipe=suspect, reference=pipe_dir, device="cpu", t_fracs=(0.5,),
                         draws=1, statistic="residual")
    assert res.params["reference"] == "shadow" and res.params["reference_model"] == str(pipe_dir)
    assert res.verdict.named == ["c"], [(s.licensee, round(s.z, 2)) for s in res.verdict.scores]
    assert f"--reference {pipe_dir}" in write_report(res, tmp_path / "r.html").read_text()
    with pytest.raises(TracemarkError, match="^reference_lora needs reference "):
        audit_whitebox(pipe_dir, reg, sample_dir, reference_lora=tmp_path / "x.safetensors")
    with pytest.raises(TracemarkError, match="not both"):
        audit_whitebox(pipe_dir, reg, sample_dir, base=pipe_dir, reference=pipe_dir)


def test_wrong_or_missing_data_is_a_one_line_error(wb, tmp_path):
    from tracemark.audit.whitebox import audit_whitebox
    from tracemark.evaluation.samples import make_sample_dataset

    reg, pipe_dir = wb
    with pytest.raises(TracemarkError, match="dataset folder not found"):
        audit_whitebox(pipe_dir, reg, tmp_path / "nope")
    other = make_sample_dataset(tmp_path / "other", n=50, size=128, seed=99, fmt="mixed")
    with pytest.raises(TracemarkError, match="is this the original dataset"):
        audit_whitebox(pipe_dir, reg, other)


def test_denoiser_residuals_are_seeded_and_batch_independent(wb, sample_dir):
    from tracemark.io.dataset import load_dataset, read_image_rgb
    from tracemark_sim.pipeline import load_pipeline
    from tracemark.diffusion.denoiser import Probe, denoiser_residuals

    _, pipe_dir = wb
    pipe = load_pipeline(pipe_dir)
    probes = [Probe(read_image_rgb(s.path), s.text) for s in load_dataset(sample_dir).samples[:5]]
    a = denoiser_residuals(pipe, probes, t_fracs=(0.4,), draws=1, seed=1, batch_size=5)
    b = denoiser_residuals(pipe, probes, t_fracs=(0.4,), draws=1, seed=1, batch_size=2)
    c = denoiser_residuals(pipe, probes, t_fracs=(0.4,), draws=1, seed=2, batch_size=5)
    assert all(np.allclose(x, y, atol=1e-3) for x, y in zip(a, b))
    assert not np.allclose(a[0], c[0])
    with pytest.raises(ValueError, match="lora-off"):
        denoiser_residuals(pipe, probes, reference="lora-off")


def test_trigger_contrast_cancels_what_the_model_does_for_every_prompt(wb, sample_dir):
    """A suspect that adds licensee b's pattern whatever the prompt (a change of the whole model,
    not a trigger-bound mark): the plain residual carries it, the trigger contrast cancels it
    exactly. Ambient copies have no trigger: their probes carry no plain prompt and keep the plain
    residual."""
    from tracemark.audit.whitebox import whitebox_probes
    from tracemark.diffusion.denoiser import denoiser_residuals

    reg, pipe_dir = wb
    copies = reg.copies()
    probes, subsets = whitebox_probes(copies, reg, sample_dir)
    trig = sorted({int(i) for c in copies if c.strategy == "trigger" for i in subsets[c.id]})
    amb = sorted({int(i) for c in copies if c.strategy == "ambient" for i in subsets[c.id]} - set(trig))
    assert trig and amb
    for i in trig:
        assert probes[i].plain is not None and probes[i].prompt.endswith(probes[i].plain)
        assert probes[i].prompt != probes[i].plain
    assert all(probes[i].plain is None for i in amb)
    suspect, ref = suspect_carrying(reg, pipe_dir, "b")
    kw = dict(ref_pipe=ref, t_fracs=(0.5,), draws=1)
    plain = denoiser_residuals(suspect, probes, **kw)
    contrast = denoiser_residuals(suspect, probes, contrast=True, **kw)
    assert min(np.abs(plain[i]).max() for i in trig) > 0.5  # the bump: 2/255 RMS, peaks above 0.5
    assert max(np.abs(contrast[i]).max() for i in trig) < 1e-3
    assert all(np.allclose(plain[i], contrast[i], atol=1e-4) for i in amb)


def test_loss_statistic_names_the_copy_a_memorising_suspect_fitted(wb, sample_dir):
    """Known answer for the paired-loss statistic: a suspect whose denoiser memorised the latent
    image of licensee a's pattern, against a reference that memorised the blank latent. The loss
    statistic (what ``auto`` picks with a reference) names a and nobody else; the residual statistic
    is recorded as asked."""
    from tracemark.audit.whitebox import audit_whitebox

    reg, pipe_dir = wb
    suspect, ref = memorising_pair(reg, pipe_dir, "a")
    res = audit_whitebox(pipe_dir, reg, sample_dir, pipe=suspect, ref_pipe=ref, t_fracs=(0.5,), draws=1)
    assert res.params["statistic"] == "loss" and res.params["reference"] == "base"
    assert res.verdict.named == ["a"], [(s.licensee, round(s.z, 2)) for s in res.verdict.scores]
    with pytest.raises(TracemarkError, match="statistic must be one of"):
        audit_whitebox(pipe_dir, reg, sample_dir, pipe=suspect, ref_pipe=ref, statistic="x0")


def test_loss_statistic_needs_a_reference_and_auto_falls_back_to_the_residual(wb, sample_dir):
    from tracemark.audit.whitebox import audit_whitebox

    reg, pipe_dir = wb
    with pytest.raises(TracemarkError, match="^statistic loss needs a model to compare with: lora .*use statistic residual$"):
        audit_whitebox(pipe_dir, reg, sample_dir, device="cpu", t_fracs=(0.5,), draws=1, statistic="loss")
    res = audit_whitebox(pipe_dir, reg, sample_dir, device="cpu", t_fracs=(0.5,), draws=1)
    assert res.params["statistic"] == "residual" and res.params["reference"] == "data"


def test_loss_gradients_are_the_paired_loss_difference_linearised(wb, sample_dir):
    """<-g, v> must match the finite difference of [L_S - L_R] along v (up to the output's one
    positive scale), be batch-independent, and vanish when the suspect is the reference."""
    import torch

    from tracemark.io.dataset import load_dataset, read_image_rgb
    from tracemark_sim.pipeline import load_pipeline
    from tracemark.diffusion.denoiser import Probe, _noise, _to_tensor, loss_gradients

    reg, pipe_dir = wb
    suspect, ref = memorising_pair(reg, pipe_dir, "b")
    probes = [Probe(read_image_rgb(s.path), s.text) for s in load_dataset(sample_dir).samples[:3]]
    kw = dict(ref_pipe=ref, reference="base", t_fracs=(0.4,), draws=1, seed=3)
    g = loss_gradients(suspect, probes, batch_size=3, **kw)
    assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(g, loss_gradients(suspect, probes, batch_size=1, **kw)))
    size = g[0].shape[0]
    t_val = int(round(0.4 * (suspect.scheduler.config.num_train_timesteps - 1)))

    def paired(x):  # [L_S - L_R] summed over the three probes, at the audit's seeded noise
        with torch.no_grad():
            z0 = suspect.vae.encode(x).latent_dist.mean * suspect.vae.config.scaling_factor
            eps = _noise(3, 0, len(x), t_val, 0, z0)
            t = torch.full((len(x),), t_val, dtype=torch.long)
            noisy = suspect.scheduler.add_noise(z0, eps, t)
            tgt = suspect.scheduler.get_velocity(z0, eps, t) if suspect.scheduler.config.prediction_type == \
                "v_prediction" else eps
            return float(((suspect.unet(noisy, t).sample - tgt) ** 2).sum() - ((ref.unet(noisy, t).sample - tgt) ** 2).sum())

    x = _to_tensor([p.image for p in probes], size)
    G = torch.from_numpy(np.stack(g)).permute(0, 3, 1, 2)
    rng = np.random.default_rng(0)
    proj, fd = [], []
    for _ in range(4):
        v = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
        h = 1e-2
        fd.append(-(paired(x + h * v) - paired(x - h * v)) / (2 * h))
        proj.append(float((G * v).sum()))
    scale = np.dot(proj, fd) / np.dot(proj, proj)
    assert scale > 0 and np.allclose(np.array(proj) * scale, fd, rtol=0.05, atol=0.02 * np.abs(fd).max())
    same = load_pipeline(pipe_dir)
    zero = loss_gradients(same, probes, ref_pipe=load_pipeline(pipe_dir), reference="base", t_fracs=(0.4,), draws=1)
    assert all(np.abs(z).max() == 0 for z in zero)


def test_several_shadows_are_averaged_by_the_loss_statistic(wb, sample_dir, tmp_path):
    """Several references: the loss gradients against each are averaged. Two copies of the same
    reference, or the reference plus the suspect itself (whose own gradient is zero), give the one
    reference's verdict; the residual statistic refuses a list; the report repeats the flags."""
    from tracemark.audit.whitebox import audit_whitebox
    from tracemark.audit.report import write_report

    reg, pipe_dir = wb
    suspect, ref = memorising_pair(reg, pipe_dir, "a")
    kw = dict(pipe=suspect, t_fracs=(0.5,), draws=1)
    one = audit_whitebox(pipe_dir, reg, sample_dir, ref_pipe=ref, **kw)
    z1 = {s.licensee: s.z for s in one.verdict.scores}
    for refs in ([ref, ref], [ref, suspect]):
        two = audit_whitebox(pipe_dir, reg, sample_dir, ref_pipe=refs, **kw)
        assert two.params["n_references"] == 2 and two.params["statistic"] == "loss"
        assert two.verdict.named == ["a"]
        assert {s.licensee: s.z for s in two.verdict.scores} == pytest.approx(z1, abs=1e-6)
    with pytest.raises(TracemarkError, match="^several references are averaged by statistic loss only; use statistic loss \\(or one reference\\)$"):
        audit_whitebox(pipe_dir, reg, sample_dir, ref_pipe=[ref, ref], statistic="residual", **kw)
    # from paths: each loaded in turn, and the report's command gives both back
    res = audit_whitebox(pipe_dir, reg, sample_dir, reference=[pipe_dir, pipe_dir], device="cpu", **kw)
    assert res.params["n_references"] == 2 and res.params["reference_model"] == [str(pipe_dir)] * 2
    html = write_report(res, tmp_path / "r.html").read_text()
    assert f"--reference {pipe_dir} --reference {pipe_dir} --statistic" in html


def test_reference_pairs_pair_loras_with_their_pipelines(tmp_path):
    from tracemark.audit.references import _reference_params, reference_pairs

    b, l1, l2 = tmp_path / "base", tmp_path / "l1", tmp_path / "l2"
    assert reference_pairs(None, None) == []
    assert reference_pairs(b, l1) == [(b, l1)]
    assert reference_pairs([b], [l1, l2]) == [(b, l1), (b, l2)]  # the owner's shadows on the public base
    assert reference_pairs([b, l1], None) == [(b, None), (l1, None)]
    with pytest.raises(TracemarkError, match="needs reference "):
        reference_pairs(None, [l1])
    with pytest.raises(TracemarkError, match="one reference_lora per reference"):
        reference_pairs([b, b, b], [l1, l2])
    # written back as the CLI takes them: the shared base once, the LoRAs each
    assert _reference_params(reference_pairs([b], [l1, l2])) == {"reference_model": str(b),
                                                                 "reference_lora": [str(l1), str(l2)]}
    assert _reference_params(reference_pairs(b, l1)) == {"reference_model": str(b), "reference_lora": str(l1)}


def test_one_audit_command_plans_the_white_box_from_the_registry(wb, sample_dir, tmp_path):
    """Issue #28.5: `tracemark audit MODEL --lora L` needs no --data or --reference: the data folder
    recorded at issue time, and the shadows registered for (dataset, base); without shadows it falls
    back to the LoRA switched off and says so."""
    from tracemark.audit.references import whitebox_plan
    from tracemark.audit.shadows import base_fingerprint

    reg, pipe_dir = wb
    plan = whitebox_plan(reg, pipe_dir, lora=tmp_path / "l.safetensors")
    assert plan.data == sample_dir.resolve() and plan.dataset == "data" and plan.reference is None
    assert any("LoRA switched off" in n and "tracemark shadow" in n for n in plan.notes)
    # a registered, ready shadow of this base is used as the reference
    folder = tmp_path / "shadow-1"
    folder.mkdir()
    weights = folder / "pytorch_lora_weights.safetensors"
    weights.write_bytes(b"not really weights")
    sid = reg.add_shadow(dataset="data", base_path=str(pipe_dir), base_hash=base_fingerprint(pipe_dir, reg),
                         preset="tiny", seed=1, path=str(folder), recipe={"steps": 2})
    reg.finish_shadow(sid, reg.file_digest(weights))
    plan = whitebox_plan(reg, pipe_dir, lora=tmp_path / "l.safetensors")
    assert plan.reference == [pipe_dir] and plan.reference_lora == [folder]
    assert any("1 registered shadow" in n for n in plan.notes)
    # a whole checkpoint without --base: the weakest white box, said plainly
    plan = whitebox_plan(reg, pipe_dir)
    assert plan.reference is None and any("weakest" in n for n in plan.notes)
    with pytest.raises(TracemarkError, match="not in the registry"):
        whitebox_plan(reg, pipe_dir, dataset="nope")


def test_the_plan_picks_the_one_dataset_with_shadows_when_several_have_copies(sample_dir, tmp_path):
    """Several datasets with copies: `tracemark audit BASE --lora L` needs no --dataset when only one
    of them has shadows on that base; otherwise it asks for --dataset in one line."""
    import shutil

    from tracemark.audit.references import whitebox_plan
    from tracemark.audit.shadows import base_fingerprint

    reg = seeded_registry(tmp_path / "home")
    other = tmp_path / "other"
    shutil.copytree(sample_dir, other)
    for src, out in ((sample_dir, "c1"), (other, "c2")):
        protect(src, tmp_path / out, "a", registry=reg, rate=0.1, workers=1, selection="random")
    base = tmp_path / "base"
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    with pytest.raises(TracemarkError, match="several datasets"):
        whitebox_plan(reg, base, lora=tmp_path / "l.safetensors")
    folder = tmp_path / "shadow-1"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    sid = reg.add_shadow(dataset="other", base_path=str(base), base_hash=base_fingerprint(base, reg),
                         preset="tiny", seed=1, path=str(folder), recipe={"steps": 2})
    reg.finish_shadow(sid, reg.file_digest(folder / "pytorch_lora_weights.safetensors"))
    plan = whitebox_plan(reg, base, lora=tmp_path / "l.safetensors")
    assert plan.dataset == "other" and plan.reference_lora == [folder]
    assert any("only one with shadows" in n for n in plan.notes)
    assert whitebox_plan(reg, base, lora=tmp_path / "l.safetensors", dataset=sample_dir.name).reference is None


@pytest.fixture(scope="module")
def ambient_copies(tmp_path_factory, sample_dir):
    """Three ambient copies marking 30 of the 50 samples each (overlapping at random)."""
    tmp = tmp_path_factory.mktemp("cap")
    reg = seeded_registry(tmp / "home")
    for lic in ("p", "q", "r"):
        protect(sample_dir, tmp / f"c_{lic}", lic, registry=reg, rate=0.6, workers=1, strategy="ambient",
                selection="random")
    return reg, reg.copies()


def _read(probes, subsets, copy_id):
    """The (prompt, image bytes) each probe of a copy reads: what it was tested on."""
    return [(probes[i].prompt, probes[i].image.tobytes()) for i in subsets[copy_id]]


def _as_copy(copy, copy_id, marked):
    from types import SimpleNamespace

    return SimpleNamespace(id=copy_id, dataset=copy.dataset, licensee=copy.licensee, strategy="ambient",
                           params={}, marked=marked)


def test_the_probe_cap_is_honoured_and_recorded(wb, sample_dir, tmp_path):
    from tracemark.audit.report import write_report
    from tracemark.audit.whitebox import audit_whitebox, whitebox_probes

    reg, pipe_dir = wb
    copies = reg.copies()
    probes, subsets = whitebox_probes(copies, reg, sample_dir, max_probes_per_copy=3)
    assert sorted(len(v) for v in subsets.values()) == [3, 3, 3, 3]
    assert len(probes) == 3 * 3 + 3  # three trigger copies' own prompts, one ambient copy
    full, all_sub = whitebox_probes(copies, reg, sample_dir, max_probes_per_copy=None)
    assert sorted(len(v) for v in all_sub.values()) == [5, 5, 5, 5] and len(full) == 20
    for c in copies:  # the capped samples are the copy's own marked samples, read with its prompts
        assert set(_read(probes, subsets, c.id)) <= set(_read(full, all_sub, c.id))
    res = audit_whitebox(pipe_dir, reg, sample_dir, device="cpu", t_fracs=(0.5,), draws=1, max_probes_per_copy=3)
    d = res.to_dict()
    assert sorted(s["n_images"] for s in d["licensees"]) == [3, 3, 3, 3] and d["params"]["n_probes"] == 12
    assert d["params"]["max_probes_per_copy"] == 3
    assert d["params"]["marked_read"] == {str(c.id): [3, 5] for c in copies}
    assert "--max-probes-per-copy 3 " in write_report(res, tmp_path / "r.html").read_text()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(TracemarkError, match="^max_probes_per_copy must be a whole number") as e:
            audit_whitebox(pipe_dir, reg, sample_dir, max_probes_per_copy=bad)
        assert e.value.params == ("max_probes_per_copy",)


def test_a_copys_capped_subset_is_deterministic_and_the_same_whatever_else_is_audited(ambient_copies, sample_dir,
                                                                                      tmp_path):
    from tracemark.audit.whitebox import whitebox_probes

    reg, copies = ambient_copies
    alone = {c.id: _read(*whitebox_probes([c], reg, sample_dir, max_probes_per_copy=7), c.id) for c in copies}
    together = whitebox_probes(copies[::-1], reg, sample_dir, max_probes_per_copy=7)
    again = whitebox_probes(copies, reg, sample_dir, max_probes_per_copy=7)
    for c in copies:
        assert len(alone[c.id]) == 7
        assert set(alone[c.id]) == set(_read(*together, c.id)) == set(_read(*again, c.id))
    # the order is keyed by the registry's secret: another master key keeps other samples
    other = seeded_registry(tmp_path / "other_home", seed=5)
    c = copies[0]
    from tracemark.audit.whitebox import probe_order, probe_subset

    names = [m["file_name"] for m in c.marked]
    mine = [m["file_name"] for m in probe_subset(c, probe_order(reg, c.dataset, names), 7)]
    theirs = [m["file_name"] for m in probe_subset(c, probe_order(other, c.dataset, names), 7)]
    assert set(mine) == {n for n, _ in sorted(probe_order(reg, c.dataset, names).items(), key=lambda kv: kv[1])[:7]}
    assert set(mine) != set(theirs)


def test_copies_that_marked_the_same_samples_read_the_same_probes(ambient_copies, sample_dir):
    """Ambient copies share a probe per sample; a per-copy choice of the capped subset would give
    copies with the same marked samples different subsets and twice the probes."""
    from tracemark.audit.whitebox import whitebox_probes

    reg, copies = ambient_copies
    c = copies[0]
    same = [_as_copy(c, 101, list(c.marked)), _as_copy(c, 102, list(c.marked)[::-1])]
    probes, subsets = whitebox_probes(same, reg, sample_dir, max_probes_per_copy=8)
    assert len(probes) == 8 and sorted(subsets[101]) == sorted(subsets[102])
    # a copy marking more samples keeps, of the other's samples, only ones the other keeps too
    from tracemark.audit.whitebox import probe_order, probe_subset

    fewer, more = list(c.marked)[:20], list(c.marked)
    order = probe_order(reg, c.dataset, [m["file_name"] for m in more])
    kept_fewer = {m["file_name"] for m in probe_subset(_as_copy(c, 1, fewer), order, 8)}
    kept_more = {m["file_name"] for m in probe_subset(_as_copy(c, 2, more), order, 8)}
    assert len(kept_fewer) == len(kept_more) == 8
    assert kept_more & {m["file_name"] for m in fewer} <= kept_fewer
    probes, subsets = whitebox_probes([_as_copy(c, 1, fewer), _as_copy(c, 2, more)], reg, sample_dir,
                                      max_probes_per_copy=8)
    assert len(probes) == len(kept_fewer | kept_more) < 16
    # real copies overlapping at random: each sample read by several copies is one probe
    probes, subsets = whitebox_probes(copies, reg, sample_dir, max_probes_per_copy=10)
    keys = [(p.prompt, p.image.tobytes()) for p in probes]
    assert len(keys) == len(set(keys)) < sum(len(v) for v in subsets.values())
