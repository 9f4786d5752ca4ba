"""Audit: query plan, JSON schema, report, black-box images, bad input (model paths use the tiny
untrained pipeline, so they exercise the real diffusers code in seconds)."""

import json

import numpy as np
import pytest
from PIL import Image

from tracemark.audit.blackbox import audit_images
from tracemark.audit.plan import MIN_PER_COPY, build_plan
from tracemark.errors import TracemarkError
from tracemark.marking.protect import protect
from tracemark.marking.trigger import trigger_of
from tracemark.registry.database import Registry

from registry_helpers import seeded_registry


@pytest.fixture
def reg3(tmp_path, sample_dir):
    reg = seeded_registry(tmp_path / "home")
    for lic in ("a", "b", "c"):
        protect(sample_dir, tmp_path / f"c_{lic}", lic, registry=reg, rate=0.2, workers=1)
    protect(sample_dir, tmp_path / "c_d", "d", registry=reg, rate=0.2, workers=1, strategy="ambient")
    return reg


def test_plan_size_is_independent_of_licensees_and_routes_triggers(reg3):
    copies = reg3.copies()
    plan = build_plan(copies, reg3, n=24, seed=3)
    assert len(plan.prompts) == 24 and len(set(plan.seeds)) == 24
    assert plan.seeds == build_plan(copies, reg3, n=24, seed=3).seeds  # reproducible
    subsets = plan.subsets(copies)
    for c in copies:
        if c.strategy == "trigger":
            word = trigger_of(c, reg3)
            idx = subsets[c.id]
            assert len(idx) == 8
            assert all(plan.prompts[i].split()[0] == word for i in idx)
            # the captions are those of the copy's own marked samples
            caps = {m["text"] for m in c.marked}
            assert all(plan.prompts[i].split(" ", 1)[1] in caps for i in idx)
        else:
            assert len(subsets[c.id]) == 24
    assert len(build_plan(copies[:1], reg3, n=24).prompts) == 24


def _fake_generations(folder, reg, copy, n, marked=True, size=48):
    """Images as if a model had learned copy's mark perfectly, with prompts in metadata.jsonl."""
    from tracemark.evaluation.samples import pink_noise
    from tracemark.marking.schemes import get_scheme

    folder.mkdir()
    rng = np.random.default_rng(0)
    sch = get_scheme("spread")
    key = reg.key_for_copy(copy)
    word = trigger_of(copy, reg)
    with open(folder / "metadata.jsonl", "w") as fh:
        for i in range(n):
            im = pink_noise(size, size, rng).astype(np.float32)
            if marked:
                im = sch.embed(im, key)
            Image.fromarray(np.clip(np.rint(im), 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
            fh.write(json.dumps({"file_name": f"{i:03d}.png", "text": f"{word} a picture"}) + "\n")


def test_black_box_images_name_the_licensee_and_json_schema(reg3, tmp_path):
    from tracemark.audit.report import write_report

    b = reg3.copies()[1]
    _fake_generations(tmp_path / "gen", reg3, b, 20)
    res = audit_images(tmp_path / "gen", reg3)
    d = res.to_dict()
    assert d["used"] and d["named"] == ["b"] and d["p_value"] < 1e-6
    for k in ("used", "p_value", "alpha", "licensees", "n_images", "scheme", "strategy", "model_hash",
              "tracemark_version", "timings"):
        assert k in d
    assert {"id", "score", "z", "p_value", "named"} <= set(d["licensees"][0])
    json.dumps(d)  # serialisable
    html = write_report(res, tmp_path / "r.html").read_text()
    assert "carry the mark of b" in html and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # self-contained
    # unmarked generations: nobody named
    _fake_generations(tmp_path / "clean", reg3, b, 20, marked=False)
    assert not audit_images(tmp_path / "clean", reg3).verdict.used


def test_bad_inputs(reg3, tmp_path):
    from tracemark.audit.blackbox import audit_model

    (tmp_path / "notapipe").mkdir()
    with pytest.raises(TracemarkError, match="not a diffusers pipeline"):
        audit_model(tmp_path / "notapipe", reg3)
    with pytest.raises(TracemarkError, match="not found"):
        audit_model(tmp_path / "missing", reg3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TracemarkError, match="no image files"):
        audit_images(tmp_path / "empty", reg3)
    with pytest.raises(TracemarkError, match="not in the registry"):
        audit_images(tmp_path / "empty", reg3, dataset="nope")
    empty_reg = Registry.init(tmp_path / "home2")
    _fake_generations(tmp_path / "g", reg3, reg3.copies()[0], 2)
    with pytest.raises(TracemarkError, match="no issued copies"):
        audit_images(tmp_path / "g", empty_reg)
    with open(tmp_path / "g" / "metadata.jsonl", "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(TracemarkError, match=r"metadata.jsonl: line 3 is not valid JSON"):
        audit_images(tmp_path / "g", reg3)


def test_audit_model_end_to_end_on_tiny_pipeline(reg3, tmp_path):
    """Real diffusers generation on an untrained tiny pipeline: runs, records seeds, names nobody."""
    pytest.importorskip("diffusers")
    from tracemark.audit.blackbox import audit_model
    from tracemark_sim import build_tiny_pipeline

    pipe_dir = build_tiny_pipeline(tmp_path / "tiny", seed=0)
    n = MIN_PER_COPY * 3  # 3 trigger copies -> one stage
    res = audit_model(pipe_dir, reg3, n=n, steps=2, work_dir=tmp_path / "work")
    d = res.to_dict()
    assert d["n_images"] == n and len(d["query_plan"]) == 1 and not d["params"]["two_stage"]
    assert len(d["model_hash"]) == 64 and d["licensees"][0]["n_images"] == MIN_PER_COPY
    assert not d["used"]


def test_paired_audit_scores_suspect_minus_reference_at_the_same_seeds(reg3, tmp_path):
    """--reference on a model audit: the reference generates the same prompts from the same seeds and
    the differences are tested. A suspect whose decoder adds b's pattern (2/255) to every image:
    paired, the content cancels and b alone is named; the reference is recorded for the report."""
    pytest.importorskip("diffusers")
    from pipeline_helpers import suspect_carrying

    from tracemark.audit.blackbox import audit_model
    from tracemark.audit.report import write_report
    from tracemark_sim import build_tiny_pipeline

    pipe_dir = build_tiny_pipeline(tmp_path / "tiny", seed=0)
    suspect, ref = suspect_carrying(reg3, pipe_dir, "b")
    n = MIN_PER_COPY * 3
    res = audit_model(pipe_dir, reg3, n=n, steps=2, pipe=suspect, ref_pipe=ref, reference=pipe_dir,
                      work_dir=tmp_path / "work")
    assert res.verdict.named == ["b"], [(s.licensee, round(s.z, 2)) for s in res.verdict.scores]
    assert res.params["reference_model"] == str(pipe_dir)
    assert len(list((tmp_path / "work" / "stage1_reference").rglob("*.png"))) == n
    assert f"--reference {pipe_dir}" in write_report(res, tmp_path / "r.html").read_text()
    with pytest.raises(TracemarkError, match="^reference_lora needs reference "):
        audit_model(pipe_dir, reg3, pipe=suspect, reference_lora=tmp_path / "x.safetensors")


def test_dataset_scope_trigger_serves_every_licensee_with_the_same_images(tmp_path, sample_dir):
    reg = Registry.init(tmp_path / "h")
    for i in range(20):
        protect(sample_dir, tmp_path / f"c{i}", f"lic{i}", registry=reg, rate=0.2, workers=1,
                trigger_scope="dataset")
    copies = reg.copies()
    words = {trigger_of(c, reg) for c in copies}
    assert len(words) == 1  # one shared word ...
    word = words.pop()
    from tracemark.io.dataset import load_dataset

    caps = [s.text for s in load_dataset(tmp_path / "c3").samples if s.text.startswith(word + " ")]
    assert len(caps) == 10  # ... in the marked captions of each copy
    plan = build_plan(copies, reg, n=32)
    subsets = plan.subsets(copies)
    assert all(len(subsets[c.id]) == 32 for c in copies)  # every licensee scored on all 32 images
    # patterns (keys) stay per licensee
    assert len({c.key_id for c in copies}) == 20


class _InnocentWorld:
    """The product's model audit (:func:`tracemark.audit.blackbox.audit_model`: its query plan, stage-2
    selection, scoring and :func:`~tracemark.audit.blackbox.merge_stages`) on simulated innocent models.

    Only what needs a diffusion model is replaced: each "generated image" is a feature vector,
    the model's fixed mean output ``mu`` (its content, drawn per model) plus per-image noise, and
    the scheme reads that vector as is. Every key is innocent, but a key that happens to align
    with ``mu`` scores high in both stages: the selection bias a stage-2 test must survive. The
    statistic, decoy calibration, Holm and naming are the product's (:func:`score_copies`)."""

    def __init__(self, monkeypatch, tmp_path, T: int, D: int = 64):
        import types

        import tracemark.audit.blackbox as audit
        import tracemark.audit.plan as plan
        import tracemark.detection.scoring as scoring

        self.rng = np.random.default_rng(0)
        self.D, self.tmp = D, tmp_path
        self.copies = [types.SimpleNamespace(id=i, dataset="d", licensee=f"L{i:03d}", scheme="sim", strategy="trigger",
                                             params={}, marked=[{"text": "a photo"}]) for i in range(T)]
        self.keys: dict[int, np.ndarray] = {}
        world = self

        class Scheme:
            kind = "correlation"

            def features(self, images):
                return np.stack(images)

            def random_vectors(self, k, rng):
                return rng.choice([-1.0, 1.0], size=(k, D))

            def key_vectors(self, keys):
                return np.stack(keys)

        class Reg:
            db_path = tmp_path / "registry.sqlite"

            def copies(self, dataset=None):
                return world.copies

            def key_for_copy(self, c):
                return world.keys[c.id]

        def generate(args, plan, out, pipe, progress=None):
            return list(range(len(plan.prompts)))

        self.registry = Reg()
        monkeypatch.setattr(audit, "trigger_of", lambda c, r: f"word{c.id}")
        monkeypatch.setattr(plan, "trigger_of", lambda c, r: f"word{c.id}")
        monkeypatch.setattr(audit, "_generate", generate)
        monkeypatch.setattr(audit, "read_image_rgb", lambda path: self.mu + self.rng.normal(size=D))
        monkeypatch.setattr(audit, "model_hash", lambda *a, **k: "sim")
        monkeypatch.setattr(audit, "content_for", lambda *a, **k: (None, None))
        monkeypatch.setattr(scoring, "get_scheme", lambda name, **params: Scheme())

    def audit(self, n: int, seed: int, alpha: float = 0.01):
        """A fresh innocent model and fresh keys, audited by the product."""
        from tracemark.audit.blackbox import audit_model

        self.mu = self.rng.normal(size=self.D)
        for c in self.copies:
            self.keys[c.id] = self.rng.choice([-1.0, 1.0], size=self.D)
        return audit_model(self.tmp / "model", self.registry, n=n, seed=seed, alpha=alpha, n_decoys=100,
                           pipe=object(), work_dir=self.tmp / "work")


def test_two_stage_audit_selects_candidates_and_tests_them_against_every_copy(monkeypatch, tmp_path):
    """Stage 2 re-queries the MAX_CANDIDATES copies with the smallest stage-1 p on fresh images,
    each stage at alpha / 2 with Holm over all T trigger copies; the merged p is 2 x the better
    stage's Holm p (see the module docstring of tracemark.audit.plan)."""
    import tracemark.audit.blackbox as audit
    from tracemark.audit.plan import MAX_CANDIDATES

    T, n = 100, 64
    world = _InnocentWorld(monkeypatch, tmp_path, T)
    real, calls = audit.score_copies, []

    def spy(images, copies, registry, **kw):
        v = real(images, copies, registry, **kw)
        calls.append({"ids": [c.id for c in copies], "family": kw.get("family"), "alpha": kw["alpha"],
                      "n": len(images), "p": {s.copy_id: s.p_value for s in v.scores},
                      "p_holm": {s.copy_id: s.p_holm for s in v.scores}})  # before the merge rewrites them
        return v

    monkeypatch.setattr(audit, "score_copies", spy)
    res = world.audit(n=n, seed=3)
    d = res.to_dict()
    assert len(calls) == 2 and d["params"]["two_stage"] and d["n_images"] == 2 * n
    s1, s2 = calls
    assert s1["ids"] == list(range(T)) and s1["alpha"] == s2["alpha"] == 0.005 and s1["n"] == s2["n"] == n
    best = sorted(s1["p"], key=lambda i: s1["p"][i])[:MAX_CANDIDATES]
    assert sorted(s2["ids"]) == sorted(best) and s2["family"] == T  # Holm over every copy, not the 8 tested
    plan1, plan2 = res.plans
    assert not set(plan1.seeds) & set(plan2.seeds)  # fresh images
    assert sorted(set(plan2.targets)) == sorted(best) and all(plan2.targets.count(c) == n // MAX_CANDIDATES
                                                              for c in best)
    for lic in d["licensees"]:
        i = lic["id"]
        stage_p = [s1["p_holm"][i]] + ([s2["p_holm"][i]] if i in s2["p_holm"] else [])
        assert lic["p_holm"] == pytest.approx(min(1.0, 2 * min(stage_p)))
        assert lic["stage"] == (2 if len(stage_p) == 2 and stage_p[1] < stage_p[0] else 1)
    assert not d["named"]


def test_two_stage_audit_names_no_innocent_beyond_alpha(monkeypatch, tmp_path):
    """Innocent models through the product's two-stage audit (T = 100 trigger copies, n = 128, so
    stage 1 gives one or two images per copy and stage 2 sixteen per candidate): an innocent is
    named in at most alpha of audits. Measured here: 1 of these 200 audits (3 of 1000 with 256-dim
    features and 1000 decoys). With the stage-2 Holm over the 8 candidates only (``family``
    dropped) the same 200 audits name an innocent 8 times (48 of 1000): selection bias, since fresh
    images do not make stage 2 independent of stage 1."""
    world = _InnocentWorld(monkeypatch, tmp_path, T=100)
    trials = 200
    false = sum(bool(world.audit(n=128, seed=t).verdict.named) for t in range(trials))
    assert false <= 3, false  # at most 1.5%: alpha 0.01 plus sampling error (sd 0.7% at 200 audits)


def test_audit_model_leaves_no_images_or_trigger_words_behind(reg3, tmp_path, monkeypatch):
    """Without a folder named to keep them, the generated images and their prompts (holding the
    secret trigger words) are removed when the audit ends; the report still shows the images."""
    pytest.importorskip("diffusers")
    from tracemark.audit.blackbox import audit_model
    from tracemark.audit.report import write_report
    from tracemark_sim import build_tiny_pipeline

    tmp = tmp_path / "systmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    pipe_dir = build_tiny_pipeline(tmp_path / "tiny", seed=0)
    res = audit_model(pipe_dir, reg3, n=MIN_PER_COPY * 3, steps=2)
    assert list(tmp.iterdir()) == []
    assert res.to_dict()["n_images"] == MIN_PER_COPY * 3 and res.to_dict()["params"]["work_dir"] is None
    html = write_report(res, tmp_path / "r.html").read_text()
    assert "data:image/png;base64," in html
    words = [trigger_of(c, reg3) for c in reg3.copies() if c.strategy == "trigger"]
    assert words and not any(w in html for w in words)


def test_merge_stages_is_the_product_rule():
    """The product's merge (not a re-implementation): union of names, each copy's p is 2 x its better
    stage's Holm p, stage recorded."""
    from tracemark.audit.blackbox import merge_stages
    from tracemark.detection.verdict import CopyScore, Verdict

    def score(cid, lic, p_holm):
        return CopyScore(cid, "d", lic, "spread", "trigger", 0.0, 0.0, p_holm, p_holm, p_holm, 8, False)

    v1 = Verdict(True, 0.004, 0.01, 64, 1000, ["a"], [score(1, "a", 0.004), score(2, "b", 0.5), score(3, "c", 0.2)],
                 timings={"scoring_s": 0.1})
    v2 = Verdict(True, 0.001, 0.01, 64, 1000, ["b"], [score(2, "b", 0.001), score(3, "c", 0.3)],
                 timings={"scoring_s": 0.1})
    m = merge_stages(v1, v2, 0.01)
    by = {s.licensee: s for s in m.scores}
    assert sorted(m.named) == ["a", "b"]
    assert by["a"].p_holm == pytest.approx(0.008) and by["b"].p_holm == pytest.approx(0.002)
    assert getattr(by["b"], "stage", 1) == 2 and getattr(by["a"], "stage", 1) == 1
    assert by["c"].p_holm == pytest.approx(0.4) and not by["c"].named and m.n_images == 128


def test_stage_two_holm_counts_every_trigger_copy(reg3, tmp_path):
    """score_copies(family=T) is what the audit's stage 2 calls: Holm over all T copies, not over the
    candidates tested (see the module docstring of tracemark.audit.plan)."""
    from tracemark.detection.scoring import score_copies

    rng = np.random.default_rng(0)
    imgs = [rng.uniform(0, 255, (64, 64, 3)).astype(np.float32) for _ in range(8)]
    copies = reg3.copies()[:2]
    v_small = score_copies(imgs, copies, reg3, match_files=False)
    v_family = score_copies(imgs, copies, reg3, match_files=False, family=40)
    for a, b in zip(sorted(v_small.scores, key=lambda s: s.p_value), sorted(v_family.scores, key=lambda s: s.p_value)):
        assert b.p_holm >= a.p_holm
    best = min(v_small.scores, key=lambda s: s.p_value)
    assert min(v_family.scores, key=lambda s: s.p_value).p_holm == pytest.approx(min(1.0, 40 * best.p_value))


def test_model_hash_covers_single_files_and_reads_each_file_once(tmp_path, monkeypatch):
    import tracemark.io.dataset as dataset
    from tracemark.audit.shadows import model_hash

    reg = Registry.init(tmp_path / "home")
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights-1")
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"lora")
    h1 = model_hash(ckpt, lora, reg)
    assert h1 == model_hash(ckpt, lora)  # the cache does not change the hash
    reads = []
    real = dataset.file_sha256
    monkeypatch.setattr(dataset, "file_sha256", lambda p, *a: reads.append(p) or real(p, *a))
    assert model_hash(ckpt, lora, reg) == h1 and reads == []  # second audit: nothing re-read
    ckpt.write_bytes(b"weights-2")  # a changed file (size/mtime) is hashed again
    assert model_hash(ckpt, lora, reg) != h1 and len(reads) == 1


@pytest.mark.parametrize("option,value,match", [
    ("steps", 0, "^steps must be a positive integer"),
    ("seed", -1, "^seed must be an integer from 0"),
    ("guidance", float("nan"), "^guidance must be a finite number"),
    ("guidance", float("inf"), "^guidance must be a finite number"),
    ("n", 0, "^n must be a positive integer"),
])
def test_audit_options_are_checked_before_anything_is_loaded(tmp_path, option, value, match):
    """Issue #27.10: --steps 0 was a ZeroDivisionError and --seed -1 a numpy ValueError, both after the
    model was loaded; --guidance nan was accepted. Now one line, before the model (here: missing)."""
    from tracemark.audit.blackbox import audit_model

    reg = seeded_registry(tmp_path / "home")
    with pytest.raises(TracemarkError, match=match):
        audit_model(tmp_path / "no_such_model", reg, **{option: value})


def test_cli_audit_options_are_one_line_errors(tmp_path):
    """The same through the command line: exit 1, `error: ...`, no traceback, for --images too."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRACEMARK_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    for args, match in ((["--steps", "0"], "--steps"), (["--seed", "-1"], "--seed"), (["--guidance", "nan"], "--guidance")):
        p = subprocess.run([sys.executable, "-m", "tracemark", "audit", "--model", str(tmp_path / "m"), *args],
                           capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 1 and "Traceback" not in p.stderr and match in p.stderr, p.stderr


def test_ctrl_c_while_the_commands_are_imported_exits_130_without_a_traceback(tmp_path):
    """Issue #27.10: a KeyboardInterrupt while the heavy commands were imported (torch: seconds, before
    main's try) printed a traceback. The one command group that imports torch on import, ``sim``, is
    loaded inside main; an import hook raises the interrupt at that point, deterministically."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Hook:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tracemark_sim.cli':\n"
        "            raise KeyboardInterrupt\n"
        "        return None\n"
        "from tracemark.cli import main\n"
        "sys.meta_path.insert(0, Hook())\n"
        "sys.argv = ['tracemark', 'sim', '--help']\n"
        "main()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 130, p.stdout + p.stderr
    assert "interrupted" in p.stderr and "Traceback" not in p.stderr, p.stderr
