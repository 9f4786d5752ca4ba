"""The HTML evidence report (tracemark.audit.report): three outcomes, the threshold, odds in words, who and
when, the reproduce command as a command, print-friendly, and no secret in it (issue #30 item 8)."""

from __future__ import annotations

import base64
import hashlib
import html as htmlmod
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from tracemark.audit.blackbox import audit_images
from tracemark.audit.report import _command, write_report
from tracemark.evaluation.samples import make_sample_dataset
from tracemark.marking.protect import protect
from tracemark.marking.trigger import trigger_of

from registry_helpers import seeded_registry

OWNER = "Example Photo Archive Ltd"
GREENS = ("#e2f5e2", "#3a3", "green", "No watermark detected")


@pytest.fixture(scope="module")
def reports(tmp_path_factory, sample_dir):
    """A positive (acme's copy) and a negative (clean images never issued) report, as the CLI writes
    them: the audit recorded in the registry, then the report with that registry."""
    tmp = tmp_path_factory.mktemp("report")
    reg = seeded_registry(tmp / "home")
    reg.conn.execute("UPDATE owner SET name = ? WHERE id = 1", (OWNER,))
    for lic in ("acme", "bob", "carol"):
        protect(sample_dir, tmp / f"c_{lic}", lic, registry=reg, rate=0.3, workers=1)
    unrelated = make_sample_dataset(tmp / "unrelated", n=40, size=128, seed=2, fmt="mixed")
    out = {}
    for name, folder in (("positive", tmp / "c_acme"), ("negative", unrelated)):
        res = audit_images(folder, reg, data_dir=sample_dir)
        if name == "positive":  # a model audit's hash: 64 hex digits, shown whole
            res.model_hash = hashlib.sha256(b"suspect weights").hexdigest()
        reg.add_audit("audit-" + res.kind, res.target, res.verdict.used, res.verdict.p_value, res.to_dict())
        out[name] = (res, write_report(res, tmp / f"{name}.html", registry=reg).read_text())
    return reg, out


def _img(html: str, alt: str) -> np.ndarray:
    b64 = re.search(rf'alt="{alt}" src="data:image/png;base64,([^"]+)"', html).group(1)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


def _reddish(a: np.ndarray) -> int:
    return int(((a[..., 0] > 170) & (a[..., 1] < 90) & (a[..., 2] < 90)).sum())


def test_negative_report_is_no_evidence_never_green_and_says_what_could_have_been_detected(reports):
    res, html = reports[1]["negative"]
    assert not res.verdict.used
    assert not any(g in html for g in GREENS)
    assert "No evidence of use found" in html and "Not an acquittal" in html
    # what the test could have detected: the z a copy needed, the images and the marked samples tested
    assert f"z &ge; {res.verdict.z_needed():.2f}" in html and "What this test could have detected" in html
    assert "40 images" in html and "15 marked samples" in html
    # no red "suspect key" when nobody is a suspect: the best copy is drawn in a neutral colour
    assert "suspect key" not in html and "best-scoring copy" in html.lower()
    assert _reddish(_img(html, "null histogram")) == 0 and _reddish(_img(html, "per-licensee scores")) == 0
    assert "accusing starts" in html


def test_negative_report_lists_the_audits_notes_and_warnings(reports, tmp_path):
    res, _ = reports[1]["negative"]
    res.params["notes"] = ["reference: the base itself"]
    res.verdict.warnings.append("no leaked file matched a marked sample")
    try:
        html = write_report(res, tmp_path / "n.html", registry=reports[0]).read_text()
    finally:
        res.params.pop("notes")
        res.verdict.warnings.pop()
    assert "Note: reference: the base itself" in html and "Warning: no leaked file matched" in html


def test_positive_report_has_odds_date_owner_hashes_threshold_and_collapsed_json(reports):
    reg, out = reports
    res, html = out["positive"]
    r = res.to_dict()
    assert r["named"] == ["acme"] and "Named: acme" in html
    k = int(np.floor(-np.log10(r["p_value"])))
    assert f"less than 1 in 10<sup>{k}</sup> by chance" in html and f"p = {r['p_value']:.2e}" in html
    audit = reg.conn.execute("SELECT created FROM audits ORDER BY id DESC LIMIT 1 OFFSET 1").fetchone()["created"]
    assert audit[:10] + " " + audit[11:19] + " UTC" in html  # the date the audit was recorded
    assert OWNER in html
    acme = next(c for c in reg.copies(with_marked=False) if c.licensee == "acme")
    assert f"issued {acme.created[:10]}" in html
    assert res.model_hash in html  # whole, not cut to 16 digits
    ds = reg.datasets()[0]
    assert ds["content_hash"] in html
    # the threshold on the bar chart and the histogram, in words beside them
    assert f"z = {res.verdict.z_needed():.2f}, the threshold" in html and "accusing starts" in html
    assert _reddish(_img(html, "null histogram")) > 0  # the named key is red
    # how to reproduce: a command, and the verdict's JSON (the --json one) collapsed
    assert f"tracemark audit --images {r['params']['images']} --data" in html
    m = re.search(r"<details><summary>.*?</summary>\s*<pre>(.*?)</pre></details>", html, re.S)
    assert m and json.loads(htmlmod.unescape(m.group(1))) == json.loads(json.dumps(r, default=float))


def test_reports_are_print_friendly_and_keep_secrets(reports):
    reg, out = reports
    words = [trigger_of(c, reg) for c in reg.copies() if c.strategy == "trigger"]
    assert words
    for _, html in out.values():
        assert "@media print" in html and "pre-wrap" in html and "overflow-x:auto" not in html
        assert not any(w in html for w in words)  # no secret trigger word leaks into the report


def test_reproduce_command_is_the_cli_as_it_stands():
    """MODEL positional, the white box by default, --blackbox for generation, paths quoted."""
    base = {"alpha": 0.01, "n_decoys": 1000, "seed": 0, "dataset": None, "config": None}
    wb = _command({"kind": "whitebox", "params": {**base, "model": "/m/base", "lora": "/m/my lora.safetensors",
                                                  "data": "/d/faces", "base": None, "statistic": "loss",
                                                  "reference_model": ["/m/base"],
                                                  "reference_lora": ["/s/1.safetensors", "/s/2.safetensors"]}})
    assert wb == ("tracemark audit /m/base --lora '/m/my lora.safetensors' --data /d/faces --reference /m/base "
                  "--reference-lora /s/1.safetensors --reference-lora /s/2.safetensors --statistic loss --seed 0 "
                  "--alpha 0.01 --decoys 1000")
    bb = _command({"kind": "model", "params": {**base, "model": "/m/x", "lora": None, "n": 64, "steps": 25,
                                               "guidance": 6.0, "data": "/d/faces", "dataset": "faces"}})
    assert bb == ("tracemark audit /m/x --blackbox --n 64 --seed 0 --steps 25 --guidance 6.0 --data /d/faces "
                  "--dataset faces --alpha 0.01 --decoys 1000")
    im = _command({"kind": "images", "params": {**base, "images": "/g/out", "data": None}})
    assert im == "tracemark audit --images /g/out --alpha 0.01 --decoys 1000"
    assert not any("--model" in c or "--whitebox" in c for c in (wb, bb, im))


@pytest.mark.parametrize("p, words", [(1.9e-44, "less than 1 in 10^43"), (0.004, "about 1 in 250"),
                                      (0.11, "about 1 in 9.1"), (0.5, "about 1 in 2"), (2e-5, "about 1 in 50,000"),
                                      (0.0, "less than 1 in 10^307")])
def test_odds_in_words(p, words):
    from tracemark.audit.report import odds_in_words

    assert odds_in_words(p) == words
