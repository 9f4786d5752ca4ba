"""A self-contained HTML evidence report (inline images and plots, no external assets).

What a reviewer of the evidence needs on one page: who is named (or that nothing was found, and
what the test could have found), the odds in words beside the p-value, where accusing starts, the
best-scoring key against the decoy-key null, every copy's score, what was scored, when and by whom
the audit was run, and the command and parameters that reproduce it. Two outcomes have a report:
*named* (red) and *no evidence* (amber, never a green acquittal); an *error* is the CLI's one line.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shlex
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from jinja2 import Environment, select_autoescape
from markupsafe import Markup, escape
from PIL import Image

from tracemark.errors import TracemarkError

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tracemark evidence report: {{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.3em} h2{font-size:1.2em;margin-top:1.6em}
.verdict{padding:.8em 1em;border-radius:6px;margin:1em 0}
.verdict h2{margin:0 0 .3em 0;font-size:1.35em} .verdict p{margin:.4em 0}
.named-box{background:#fde2e2;border:2px solid #c22} .named-box h2{color:#a00}
.none-box{background:#fff4d6;border:2px solid #c90} .none-box h2{color:#6b4a00}
.odds{font-size:1.1em;font-weight:600}
table{border-collapse:collapse;font-size:.9em;max-width:100%} td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} .named{color:#b00;font-weight:bold}
table.meta td,table.meta th{text-align:left;vertical-align:top} table.meta th{width:11em}
code,.hash,td.l{overflow-wrap:anywhere} td{white-space:nowrap} td.l,table.meta td{white-space:normal} .hash{font-family:ui-monospace,monospace;font-size:.9em}
img{max-width:100%}
pre{background:#f7f7f7;padding:.8em;font-size:.85em;white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-all}
pre.cmd{background:#f0f0f0;border-left:3px solid #888;font-size:.95em}
details summary{cursor:pointer;font-weight:600}
ul.notes li{margin:.2em 0}
@media print{
 body{max-width:none;margin:0;padding:0;font-size:10pt}
 .verdict,.named-box,.none-box{-webkit-print-color-adjust:exact;print-color-adjust:exact}
 img,table,pre.cmd,.verdict{page-break-inside:avoid;break-inside:avoid}
 h2{page-break-after:avoid;break-after:avoid}
 table{font-size:8pt}
}
</style>
<script>window.addEventListener("beforeprint",()=>document.querySelectorAll("details").forEach(d=>d.open=true));</script>
</head><body>
<h1>tracemark evidence report</h1>
<table class="meta">
<tr><th>Audit date</th><td>{{ audit_date }}</td></tr>
<tr><th>Owner</th><td>{{ owner or "not recorded (the report was written without the registry)" }}</td></tr>
<tr><th>Dataset{{ "s" if datasets|length > 1 else "" }}</th><td>{% for d in datasets %}<b>{{ d.name }}</b>
{%- if d.n_samples %}: {{ d.n_samples }} samples, registered {{ d.created }}, content SHA-256
<span class="hash">{{ d.content_hash }}</span>{% endif %}{% if not loop.last %}<br>{% endif %}{% endfor %}</td></tr>
<tr><th>Audited</th><td>{{ kind_words }}: <code>{{ r.target }}</code>{% if r.params.lora %}, LoRA <code>{{ r.params.lora }}</code>{% endif %}</td></tr>
{% if r.model_hash %}<tr><th>Model SHA-256</th><td class="l"><span class="hash">{{ r.model_hash }}</span>
 (weights, configs{{ " and LoRA" if r.params.lora else "" }})</td></tr>{% endif %}
<tr><th>Test</th><td>{{ r.n_images }} {{ unit }} scored; {{ scores_all|length }} issued copies tested{% if one_method %}
 (scheme {{ r.scheme }}, strategy {{ r.strategy }}){% endif %}; {{ r.n_decoys }} decoy keys per test;
 alpha = {{ r.alpha }} (chance of naming any innocent licensee, Holm over copies)</td></tr>
<tr><th>Software</th><td>tracemark {{ r.tracemark_version }}</td></tr>
</table>
{% if r.used %}<div class="verdict named-box">
<h2>Named: {{ r.named|join(", ") }}</h2>
<p class="odds">p = {{ fmt_p(r.p_value) }} (Holm-corrected over {{ scores_all|length }} copies): {{ odds(r.p_value) }} by chance.</p>
<p>{{ r.sentence }}</p>
<p>Copies named: {% for s in named_scores %}{{ s.licensee }}'s copy of '{{ s.dataset }}' (copy {{ s.id }}
{%- if s.issued %}, issued {{ s.issued }}{% endif %}
{%- if s.n_marked %}, {{ s.n_marked }} marked samples{% endif %}; z = {{ '%.2f' % s.z }})
{{- "; " if not loop.last else "." }}{% endfor %}</p>
</div>{% else %}<div class="verdict none-box">
<h2>No evidence of use found</h2>
<p>Not an acquittal: no copy's mark reached the threshold, and a test with too few marked samples, or too little signal
in what was audited, finds nothing either.</p>
<p><b>What this test could have detected:</b> a copy would have been named from z &ge; {{ '%.2f' % z_needed }} (alpha = {{ r.alpha }}
after Holm's correction over {{ scores_all|length }} copies). The best-scoring copy, {{ top.licensee }}'s, reached
z = {{ '%.2f' % top.z }} (p = {{ fmt_p(top.p_value) }}, {{ odds(top.p_value) }} by chance; what keys never issued reach routinely).</p>
<p>Scored: {{ r.n_images }} {{ unit }}{% if marked_range %}; the copies tested hold {{ marked_range }} marked samples each{% endif %}.{% if forecast %}
Measured power at {{ forecast.n_marked }} marked samples ({{ forecast_mode }}): {{ forecast.text }}.{% endif %}</p>
{% if notes or warnings or untested %}<ul class="notes">{% for n in notes %}<li>Note: {{ n }}</li>{% endfor %}
{% for w in warnings %}<li>Warning: {{ w }}</li>{% endfor %}{% for u in untested %}<li>Not tested: {{ u }}</li>{% endfor %}</ul>{% endif %}
</div>{% endif %}
{% if r.used and (notes or warnings or untested) %}<ul class="notes">{% for n in notes %}<li>Note: {{ n }}</li>{% endfor %}
{% for w in warnings %}<li>Warning: {{ w }}</li>{% endfor %}{% for u in untested %}<li>Not tested: {{ u }}</li>{% endfor %}</ul>{% endif %}
<h2>The {{ "named" if top.named else "best-scoring" }} copy's key against keys never issued</h2>
<p>Histogram: the statistic of {{ r.n_decoys }} decoy keys (never issued) on the same {{ unit }}; dash-dot line: where
accusing starts ({{ threshold_words }}); {{ "red" if top.named else "dark blue" }} line: {{ top.licensee }}'s key
(z = {{ '%.2f' % top.z }}, p = {{ fmt_p(top.p_value) }}{{ ", named" if top.named else ", not named" }}).</p>
<img alt="null histogram" src="data:image/png;base64,{{ null_png }}">
{% if null_note %}<p>The decoy keys' statistics are all close to 0: the {{ unit }} hold almost nothing outside the
original dataset's content (as the original images themselves do), so there is nothing a key could be read in.</p>{% endif %}
<h2>Every issued copy</h2>
<p>Bars: each copy's z; dash-dot line: z = {{ '%.2f' % z_needed }}, the threshold of Holm's first step at alpha = {{ r.alpha }}
(a copy is named only beyond it; red bars are named).</p>
<img alt="per-licensee scores" src="data:image/png;base64,{{ bars_png }}">
<table><tr><th>copy</th><th class="l">licensee</th><th class="l">dataset</th>{% if has_issued %}<th class="l">issued</th>{% endif %}
{% if not one_method %}<th class="l">scheme</th><th class="l">strategy</th>{% endif %}
<th>{{ unit }}</th><th>z</th><th>p</th><th>p (Holm)</th><th>named</th></tr>
{% for s in scores %}<tr><td>{{ s.id }}</td><td class="l">{{ s.licensee }}</td><td class="l">{{ s.dataset }}</td>
{%- if has_issued %}<td>{{ s.issued or "" }}</td>{% endif %}
{%- if not one_method %}<td class="l">{{ s.scheme }}</td><td class="l">{{ s.strategy }}</td>{% endif %}
<td>{{ s.n_images }}</td>{% if s.n_images %}<td>{{ '%.2f' % s.z }}</td><td>{{ fmt_p(s.p_value) }}</td>
{%- else %}<td>–</td><td>–</td>{% endif %}<td>{{ fmt_p(s.p_holm) }}</td>
<td class="{{ 'named' if s.named else '' }}">{{ 'YES' if s.named else 'no' }}</td></tr>
{% endfor %}</table>
{% if unscored %}<p>Not scored (no {{ unit }} were meant for {{ "it" if unscored|length == 1 else "them" }}, e.g. no prompt
held {{ "its" if unscored|length == 1 else "their" }} trigger word): {{ unscored|map(attribute="licensee")|join(", ") }}. A p-value of 1 says
nothing about {{ "this copy" if unscored|length == 1 else "these copies" }}.</p>{% endif %}
{% if more %}<p>… and {{ more }} more copies with larger p-values (all in the JSON below).</p>{% endif %}
{% if r.kind == "whitebox" %}<h2>Denoiser residuals</h2>
{% if r.params.statistic == "loss" %}<p>{{ grid_n }} of the {{ r.n_images }} loss-gradient images scored (how the suspect's
denoising loss minus the reference's, at the same noisy inputs of an original marked sample, falls when the image
moves in each pixel direction; unit RMS, amplified 16x around grey; prompts withheld).</p>{% else %}
<p>{{ grid_n }} of the {{ r.n_images }} residual images scored (suspect's clean-image prediction minus the reference's at
the same noisy input of an original marked sample; amplified 8x around grey; prompts withheld).</p>{% endif %}
{% elif r.kind == "model" %}<h2>Generated images</h2>
<p>{{ grid_n }} of the {{ r.n_images }} images scored (prompts withheld: they contain secret trigger words).</p>
{% else %}<h2>Images scored</h2>
<p>{{ grid_n }} of the {{ r.n_images }} images read from <code>{{ r.target }}</code>.</p>{% endif %}
<img alt="scored images" src="data:image/png;base64,{{ grid_png }}" style="image-rendering:pixelated;width:{{ grid_w }}px">
<h2>How to reproduce</h2>
<p>With the same registry and master key (<code>--home</code> or <code>TRACEMARK_HOME</code>), tracemark {{ r.tracemark_version }}
and the same files (check the hashes above):</p>
<pre class="cmd">{{ command }}</pre>
<details><summary>The full verdict as JSON ({{ json_lines }} lines; also written by <code>--json</code>)</summary>
<pre>{{ full_json }}</pre></details>
<h2>Method</h2>
<p>For each issued copy, the {{ unit }} scored for it are reduced to the scheme's key-independent features, pooled
(unit-normalised sum), and correlated with the copy's key vector: z = &lt;m, p&gt; / sqrt(&lt;m², p²&gt;), standard normal
for any key that was not used. The p-value is the larger of the normal tail and the tail of a normal fitted to the
decoy keys' statistics; Holm's correction over copies keeps the chance of naming any innocent licensee below alpha.
"1 in N by chance" is 1 / p: how rarely a key that was never issued scores this high on the same {{ unit }}.</p>
</body></html>
"""

#: How each kind of audit is named in the report, and what it scores.
KINDS = {"whitebox": ("Model weights (white box)", "denoiser readings"),
         "model": ("Model (black box: images generated from it)", "images"),
         "images": ("Images (black box: a folder of images)", "images")}


def odds_in_words(p: float) -> str:
    """A p-value as the odds a reader without statistics can weigh: 1.9e-44 -> "less than 1 in
    10^43" (the power of ten rounded towards the weaker claim), 0.004 -> "about 1 in 250"."""
    if not p > 0:  # underflow: below the smallest double
        return "less than 1 in 10^307"
    if p >= 1:
        return "about 1 in 1"
    if p >= 1e-6:
        inv = float(f"{1.0 / p:.2g}")  # two significant figures
        return f"about 1 in {inv:.1f}".replace(".0", "") if inv < 10 else f"about 1 in {inv:,.0f}"
    return f"less than 1 in 10^{math.floor(-math.log10(p))}"


def _odds_html(p: float) -> Markup:
    text = odds_in_words(p)
    if "10^" in text:
        head, exp = text.split("10^")
        return Markup(f"{escape(head)}10<sup>{escape(exp)}</sup>")
    return Markup(escape(text))


def _when(iso: str) -> str:
    """An ISO time stamp as a reader writes it: 2025-01-02 14:03:00 UTC."""
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if t.tzinfo is not None else "")


def _fmt_p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3g}"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _null_plot(values: np.ndarray, value: float, threshold: float | None, named: bool, label: str) -> str:
    """Decoy histogram (counts), the N(0, 1) unused keys follow (as expected counts), the threshold,
    and the top copy: red only when it is named (a neutral colour otherwise: nobody is a suspect)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    lo, hi = min(values.min(), -4.0), max(values.max(), 4.0)
    bins = np.linspace(lo, hi, 61)
    ax.hist(values, bins=bins, color="#a9b0b8", label="decoy keys (never issued)")
    xs = np.linspace(lo, hi, 300)
    ax.plot(xs, len(values) * (bins[1] - bins[0]) * np.exp(-xs**2 / 2) / np.sqrt(2 * np.pi), color="#555", ls="--",
            lw=1, label="N(0, 1), expected")
    if threshold is not None:
        ax.axvline(threshold, color="#222", ls="-.", lw=1.5, label=f"accusing starts ({threshold:.2f})")
    ax.axvline(value, color="#c22" if named else "#2b4c7e", lw=2.5, label=label)
    ax.set_xlabel("statistic")
    ax.set_ylabel("decoy keys")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _png(fig)


def _bars_plot(scores: list[dict], z_needed: float) -> str:
    plt = _pyplot()
    top = sorted(scores, key=lambda s: s["p_value"])[:30]
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(top) + 1.2))
    ax.barh([f"{s['licensee']} (#{s['id']})" for s in top][::-1], [s["z"] for s in top][::-1],
            color=["#c33" if s["named"] else "#999" for s in top][::-1])
    ax.axvline(z_needed, color="#222", ls="-.", lw=1.5, label=f"named from z = {z_needed:.2f}")
    zs = [s["z"] for s in top] + [z_needed, 0.0]
    span = max(zs) - min(zs)
    ax.set_xlim(min(zs) - 0.05 * span, max(zs) + 0.08 * span)
    ax.set_xlabel("z")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
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
    return base64.b64encode(buf.getvalue()).decode(), len(items), cols * cell * 3 // 2


def _threshold(verdict, top: dict, z_needed: float) -> float | None:
    """Where accusing starts on the histogram's scale (the statistic of the top copy's group):
    the z of Holm's first step, or the decoy fit's equivalent when that is stricter (p is the
    larger of the two tails); for message schemes the agreement count of that z."""
    null = verdict.null.get(top["id"]) or {}
    if top["scheme"] == "dwtdct":  # count = L/2 + z sqrt(L)/2: recover sqrt(L) from the copy's own pair
        s, z = top["score"], top["z"]
        u = (-z + math.sqrt(max(0.0, z * z + 8 * s))) / 2
        return u * u / 2 + z_needed * u / 2 if u > 0 else None
    fit = null.get("decoy_mean", 0.0) + z_needed * null.get("decoy_std", 1.0) if null else z_needed
    return max(z_needed, fit)


def _registry_facts(registry, r: dict) -> dict:
    """Owner, datasets, issue dates and the audit's date, read from the registry when given."""
    facts: dict = {"owner": None, "datasets": {}, "copies": {}, "audit_date": None}
    if registry is None:
        return facts
    row = registry.conn.execute("SELECT name FROM owner WHERE id = 1").fetchone()
    facts["owner"] = row["name"] if row else None
    names = {s["dataset"] for s in r["licensees"]}
    facts["datasets"] = {d["name"]: dict(d) for d in registry.datasets() if d["name"] in names}
    facts["copies"] = {c.id: c for c in registry.copies(with_marked=False)}
    # the audit as the CLI recorded it (same kind, target and p-value), else none
    row = registry.conn.execute(
        "SELECT created FROM audits WHERE kind = ? AND target = ? AND p_value = ? ORDER BY id DESC LIMIT 1",
        ("audit-" + r["kind"], r["target"], r["p_value"])).fetchone()
    facts["audit_date"] = row["created"] if row else None
    return facts


def write_report(result, path: str | Path, max_rows: int = 50, *, force: bool = True, registry=None) -> Path:
    """Render an :class:`tracemark.audit.result.AuditResult` to one HTML file (atomically).

    ``registry``: the registry the audit ran against; it supplies the owner, the datasets' hashes
    and the copies' issue dates (without it the report says they were not recorded)."""
    r = result.to_dict()
    if not r["licensees"]:
        raise TracemarkError(f"{path}: no issued copy was tested; there is no evidence to report")
    verdict = result.verdict
    facts = _registry_facts(registry, r)
    scores = sorted((dict(s) for s in r["licensees"]), key=lambda s: s["p_value"])  # r stays the --json verdict
    for s in scores:
        c = facts["copies"].get(s["id"])
        s["issued"] = c.created[:10] if c is not None else None
        s["n_marked"] = c.n_marked if c is not None else None
    top = scores[0]
    z_needed = verdict.z_needed()
    null = verdict.null.get(top["id"]) or next(iter(verdict.null.values()), {})
    values = np.asarray(null.get("decoy_values", np.zeros(1)))
    value = top["score"] if top["scheme"] == "dwtdct" else top["z"]
    threshold = _threshold(verdict, top, z_needed)
    label = (f"{top['licensee']}'s key (named)" if top["named"]
             else f"best-scoring copy: {top['licensee']} (not named)")
    grid_png, grid_n, grid_w = _grid(list(getattr(result, "images", None) or result.image_paths))
    kind_words, unit = KINDS.get(r["kind"], (r["kind"], "images"))
    marked = sorted({s["n_marked"] for s in scores if s["n_marked"]})
    marked_range = (str(marked[0]) if len(marked) == 1 else f"{marked[0]} to {marked[-1]}") if marked else ""
    forecast = None
    if not r["used"] and marked and r["kind"] in ("whitebox", "model"):
        from tracemark.marking.forecast import forecast as power

        f = power(marked[0])
        forecast = {"n_marked": marked[0], "text": f.whitebox if r["kind"] == "whitebox" else f.blackbox}
    datasets = [facts["datasets"].get(name) or {"name": name} for name in sorted({s["dataset"] for s in scores})]
    for d in datasets:
        if d.get("created"):
            d["created"] = _when(d["created"])[:10]
    # decoys all near 0: the images hold (almost) nothing outside the dataset's content subspace
    null_note = bool(values.size > 1 and top["scheme"] != "dwtdct" and values.std() < 0.25)
    full_json = json.dumps(r, indent=2, default=float)
    env = Environment(autoescape=select_autoescape(["html"]))
    html = env.from_string(TEMPLATE).render(
        r=r, top=top, scores=scores[:max_rows], scores_all=scores, more=max(0, len(scores) - max_rows),
        named_scores=[s for s in scores if s["named"]], z_needed=z_needed,
        null_png=_null_plot(values, value, threshold, top["named"], label),
        threshold_words=(f"z = {z_needed:.2f} after Holm at alpha = {r['alpha']}" if threshold is None
                         or abs(threshold - z_needed) < 1e-9 else
                         f"{threshold:.2f} on this scale: z = {z_needed:.2f} after Holm at alpha = {r['alpha']}"),
        bars_png=_bars_plot(scores, z_needed), grid_png=grid_png, grid_n=grid_n, grid_w=min(grid_w, 768),
        audit_date=_when(facts["audit_date"] or datetime.now(timezone.utc).isoformat(timespec="seconds")),
        null_note=null_note, unscored=[s for s in scores if not s["n_images"]],
        owner=facts["owner"], datasets=datasets, has_issued=any(s["issued"] for s in scores),
        kind_words=kind_words, unit=unit, marked_range=marked_range, forecast=forecast,
        forecast_mode="white box" if r["kind"] == "whitebox" else "black box",
        notes=list(r["params"].get("notes") or []), warnings=list(verdict.warnings),
        untested=list(getattr(verdict, "untested", [])), one_method=isinstance(r["scheme"], str)
        and isinstance(r["strategy"], str), command=_command(r), full_json=full_json,
        json_lines=full_json.count("\n") + 1, odds=_odds_html, fmt_p=_fmt_p,
        title=("named: " + ", ".join(r["named"])) if r["used"] else "no evidence of use",
    )
    from tracemark.io.safe_write import write_text_atomic

    return write_text_atomic(Path(path), html, force=force)


def _q(v) -> str:
    return shlex.quote(str(v))


def _reference_flags(p: dict) -> str:
    """``--reference`` / ``--reference-lora`` as the audit took them (one, or a list of shadows)."""
    out = ""
    for key, flag in (("reference_model", "--reference"), ("reference_lora", "--reference-lora")):
        vals = p.get(key) or []
        for v in ([vals] if isinstance(vals, str) else vals):
            out += f" {flag} {_q(v)}"
    return out


def _command(r: dict) -> str:
    """The ``tracemark audit`` command line that reruns this audit (MODEL positional, white box by
    default, ``--blackbox`` for generation audits, ``--images DIR`` for a folder of images)."""
    from tracemark.audit.whitebox import DEFAULT_MAX_PROBES_PER_COPY

    p = r["params"]
    if r["kind"] not in ("model", "whitebox"):
        cmd = f"tracemark audit --images {_q(p['images'])}"
    else:
        cmd = f"tracemark audit {_q(p['model'])}"
        if p.get("lora"):
            cmd += f" --lora {_q(p['lora'])}"
    if r["kind"] == "model":
        cmd += f" --blackbox --n {p['n']} --seed {p['seed']} --steps {p['steps']} --guidance {p['guidance']}"
        cmd += _reference_flags(p)
    elif r["kind"] == "whitebox":
        cmd += f" --data {_q(p['data'])}"
        if p.get("base"):
            cmd += f" --base {_q(p['base'])}"
        cmd += _reference_flags(p)
        if p.get("statistic"):
            cmd += f" --statistic {p['statistic']}"
        if "max_probes_per_copy" in p and p["max_probes_per_copy"] != DEFAULT_MAX_PROBES_PER_COPY:
            cmd += f" --max-probes-per-copy {p['max_probes_per_copy'] or 0}"
        cmd += f" --seed {p['seed']}"
    if p.get("config"):  # the single-file checkpoint's pipeline folder
        cmd += f" --config {_q(p['config'])}"
    if p.get("data") and r["kind"] != "whitebox":
        cmd += f" --data {_q(p['data'])}"
    if p.get("dataset"):
        cmd += f" --dataset {_q(p['dataset'])}"
    return cmd + f" --alpha {p['alpha']} --decoys {p['n_decoys']}"
