"""A self-contained HTML evidence report (inline images and plots, no external assets).

What a reviewer of the evidence needs on one page: the verdict in one sentence, the suspect
key's score against the decoy-key null, every licensee's score, what the model generated, and
all the parameters needed to reproduce the audit.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from jinja2 import Environment, select_autoescape
from PIL import Image

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tracemark audit report</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} .verdict{font-size:1.2em;padding:.8em;border-radius:6px}
.used{background:#fde2e2;border:1px solid #d33} .clean{background:#e2f5e2;border:1px solid #3a3}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} img{max-width:100%} .named{color:#b00;font-weight:bold}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
</style></head><body>
<h1>tracemark audit report</h1>
<p class="verdict {{ 'used' if r.used else 'clean' }}">{{ r.sentence }}</p>
<p>Target: <code>{{ r.target }}</code> ({{ r.kind }}){% if r.model_hash %}, model SHA-256 <code>{{ r.model_hash[:16] }}…</code>{% endif %};
{{ r.n_images }} images; {{ r.n_decoys }} decoy keys per test; alpha = {{ r.alpha }} (family-wise, Holm over copies);
tracemark {{ r.tracemark_version }}.</p>
<h2>The suspect key against the decoy-key null</h2>
<p>Histogram: the statistic of {{ r.n_decoys }} keys that were never issued, computed on the same images; red line: the
statistic of {{ top.licensee }}'s key (z = {{ '%.2f' % top.z }}, p = {{ '%.2e' % top.p_value }}).</p>
<img alt="null histogram" src="data:image/png;base64,{{ null_png }}">
<h2>Every issued copy</h2>
<img alt="per-licensee scores" src="data:image/png;base64,{{ bars_png }}">
<table><tr><th>copy</th><th class="l">licensee</th><th class="l">dataset</th><th class="l">scheme</th><th class="l">strategy</th>
<th>images</th><th>z</th><th>p</th><th>p (Holm)</th><th>named</th></tr>
{% for s in scores %}<tr><td>{{ s.id }}</td><td class="l">{{ s.licensee }}</td><td class="l">{{ s.dataset }}</td>
<td class="l">{{ s.scheme }}</td><td class="l">{{ s.strategy }}</td><td>{{ s.n_images }}</td><td>{{ '%.2f' % s.z }}</td>
<td>{{ '%.2e' % s.p_value }}</td><td>{{ '%.2e' % s.p_holm }}</td><td class="{{ 'named' if s.named else '' }}">{{ 'YES' if s.named else 'no' }}</td></tr>
{% endfor %}</table>
{% if more %}<p>… and {{ more }} more copies with larger p-values (all in the JSON).</p>{% endif %}
{% if r.kind == "whitebox" %}<h2>Denoiser residuals</h2>
{% if r.params.statistic == "loss" %}<p>{{ grid_n }} of the {{ r.n_images }} loss-gradient images scored (how the suspect's
denoising loss minus the reference's, at the same noisy inputs of an original marked sample, falls when the image
moves in each pixel direction; unit RMS, amplified 16x around grey; prompts withheld).</p>{% else %}
<p>{{ grid_n }} of the {{ r.n_images }} residual images scored (suspect's clean-image prediction minus the reference's at
the same noisy input of an original marked sample; amplified 8x around grey; prompts withheld).</p>{% endif %}{% else %}<h2>Generated images</h2>
<p>{{ grid_n }} of the {{ r.n_images }} images scored (prompts withheld: they contain secret trigger words).</p>{% endif %}
<img alt="generated images" src="data:image/png;base64,{{ grid_png }}" style="image-rendering:pixelated;width:{{ grid_w }}px">
<h2>How to reproduce</h2>
<pre>{{ params }}</pre>
<h2>Method</h2>
<p>For each issued copy, the images queried for it are reduced to the scheme's key-independent features, pooled
(unit-normalised sum), and correlated with the copy's key vector: z = &lt;m, p&gt; / sqrt(&lt;m², p²&gt;), standard normal
for any key that was not used. The p-value is the larger of the normal tail and the tail of a normal fitted to the
decoy keys' statistics; Holm's correction over copies controls the chance of naming any innocent licensee.</p>
</body></html>
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _null_plot(values: np.ndarray, z: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.hist(values, bins=40, density=True, color="#8aa", label="decoy keys")
    xs = np.linspace(min(values.min(), -4), max(values.max(), 4), 200)
    ax.plot(xs, np.exp(-xs**2 / 2) / np.sqrt(2 * np.pi), "k--", lw=1, label="N(0, 1)")
    ax.axvline(z, color="r", lw=2, label="suspect key")
    ax.set_xlabel("statistic")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _bars_plot(scores: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = sorted(scores, key=lambda s: s["p_value"])[:30]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(top) + 1))
    ax.barh([s["licensee"] for s in top][::-1], [s["z"] for s in top][::-1],
            color=["#c33" if s["named"] else "#999" for s in top][::-1])
    ax.set_xlabel("z")
    return _png(fig)


def _grid(items: list, max_n: int = 64, cell: int = 64) -> tuple[str, int, int]:
    """A PNG contact sheet of images given as arrays (H x W x 3 uint8) or file paths."""
    items = items[:max_n]
    cols = min(8, max(1, len(items)))
    rows = (len(items) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * cell, max(1, rows) * cell), "white")
    for i, it in enumerate(items):
        im = Image.fromarray(np.asarray(it, np.uint8)) if isinstance(it, np.ndarray) else Image.open(it)
        with im:
            canvas.paste(im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST),
                         ((i % cols) * cell, (i // cols) * cell))
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode(), len(items), cols * cell * 2


def write_report(result, path: str | Path, max_rows: int = 50, *, force: bool = True) -> Path:
    """Render an :class:`tracemark.audit.AuditResult` to one HTML file (atomically)."""
    r = result.to_dict()
    scores = sorted(r["licensees"], key=lambda s: s["p_value"])
    top = scores[0]
    null = result.verdict.null.get(top["id"]) or next(iter(result.verdict.null.values()), {})
    values = np.asarray(null.get("decoy_values", np.zeros(1)))
    grid_png, grid_n, grid_w = _grid(list(getattr(result, "images", None) or result.image_paths))
    env = Environment(autoescape=select_autoescape(["html"]))
    html = env.from_string(TEMPLATE).render(
        r=r, top=top, scores=scores[:max_rows], more=max(0, len(scores) - max_rows),
        null_png=_null_plot(values, top["z"] if r["licensees"] and top["scheme"] != "dwtdct" else top["score"]),
        bars_png=_bars_plot(scores), grid_png=grid_png, grid_n=grid_n, grid_w=min(grid_w, 1024),
        params=json.dumps({"command": _command(r), **r["params"], "query_plan": r["query_plan"]}, indent=2),
    )
    from tracemark.fsutil import write_text_atomic

    return write_text_atomic(Path(path), html, force=force)


def _reference_flags(p: dict) -> str:
    """``--reference`` / ``--reference-lora`` as the audit took them (one, or a list of shadows)."""
    out = ""
    for key, flag in (("reference_model", "--reference"), ("reference_lora", "--reference-lora")):
        vals = p.get(key) or []
        for v in ([vals] if isinstance(vals, str) else vals):
            out += f" {flag} {v}"
    return out


def _command(r: dict) -> str:
    p = r["params"]
    if r["kind"] == "model":
        cmd = f"tracemark audit --model {p['model']}"
        if p.get("lora"):
            cmd += f" --lora {p['lora']}"
        cmd += f" --n {p['n']} --seed {p['seed']} --steps {p['steps']} --guidance {p['guidance']}"
        cmd += _reference_flags(p)
    elif r["kind"] == "whitebox":
        cmd = f"tracemark audit --whitebox --model {p['model']} --data {p['data']}"
        if p.get("lora"):
            cmd += f" --lora {p['lora']}"
        if p.get("base"):
            cmd += f" --base {p['base']}"
        cmd += _reference_flags(p)
        if p.get("statistic"):
            cmd += f" --statistic {p['statistic']}"
        cmd += f" --seed {p['seed']}"
    else:
        cmd = f"tracemark audit --images {p['images']}"
    if p.get("config"):  # the single-file checkpoint's pipeline folder
        cmd += f" --config {p['config']}"
    if p.get("data") and r["kind"] != "whitebox":
        cmd += f" --data {p['data']}"
    if p.get("dataset"):
        cmd += f" --dataset {p['dataset']}"
    return cmd + f" --alpha {p['alpha']} --decoys {p['n_decoys']}"
