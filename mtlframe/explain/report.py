"""The ``explain`` report: one self-contained HTML page (inline CSS, PNGs as base64 data URIs, no
script or other external resource) and a rich summary table."""
from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.note{color:#555;font-style:italic}
.grid{display:flex;flex-wrap:wrap;gap:1em}.grid figure{margin:0}
"""


def _img(out_dir: Path, name: str, alt: str) -> str:
    data = base64.b64encode((out_dir / name).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _num(v: Any, fmt: str = ".4f") -> str:
    return "&ndash;" if v is None else format(v, fmt)


def _matrix(mat: Mapping[str, Mapping[str, float | None]]) -> str:
    names = list(mat)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = "".join(f"<tr><th>{html.escape(a)}</th>" + "".join(f"<td>{_num(mat[a].get(b), '.3f')}</td>" for b in names)
                   + "</tr>" for a in names)
    return f"<table><tr><th></th>{head}</tr>{rows}</table>"


def render_html(data: Mapping[str, Any], out_dir: Path) -> str:
    """The report page for ``data`` (:func:`mtlframe.explain.explain`'s ``explain.json``); the
    images named in it are read from ``out_dir`` and embedded."""
    e = html.escape
    parts = [f"<h1>mtlframe explain</h1><p>checkpoint <code>{e(data['checkpoint'])}</code>, "
             f"{e(data['split'])} split, {data['rows']:,} rows, backbone <code>{e(data['backbone'])}</code>; tasks: "
             + ", ".join(f"{e(t)} ({e(k)})" for t, k in data["tasks"].items()) + ".</p>"]
    # gates
    parts.append("<h2>Expert utilization (gates)</h2>")
    g = data.get("gates")
    if g:
        parts.append(f"<p>Mean gate weight of each expert per gate over the rows (each row of a gate sums to 1; "
                     f"blank: experts the gate cannot select). An expert is <b>collapsed</b> when its mean weight is "
                     f"below {g['threshold']} for every gate that can select it. Entropy in nats: of the mean "
                     "distribution (its exp is the effective number of experts used) and the mean per-row "
                     "entropy.</p>")
        parts.append("<table><tr><th>gate</th><th>top expert</th><th>weight</th><th>entropy</th>"
                     "<th>row entropy</th><th>max (ln E)</th></tr>")
        for name, s in g["gates"].items():
            top = max(range(len(s["mean"])), key=lambda i: s["mean"][i])
            parts.append(f"<tr><td>{e(name)}</td><td>{e(s['experts'][top])}</td><td>{s['mean'][top]:.3f}</td>"
                         f"<td>{s['entropy']:.3f}</td><td>{s['row_entropy']:.3f}</td>"
                         f"<td>{s['max_entropy']:.3f}</td></tr>")
        parts.append("</table>")
        for task, sel in (g.get("selectors") or {}).items():
            picks = ", ".join(f"expert {p} (weight {w:.2f}, r {row[p - 1]:.2f})"
                              for p, w, row in zip(sel["picks"], sel["weights"], sel["experts"]))
            parts.append(f"<p>DSelect-k selectors of <b>{e(task)}</b>: {e(picks)}</p>")
        for gname, group in g["groups"].items():
            collapsed = ", ".join(group["collapsed"]) or "none"
            parts.append(f"<h3>{e(gname or 'experts')}</h3><p>collapsed experts: {e(collapsed)}</p>"
                         + _img(out_dir, group["image"], f"gate heatmap {gname}"))
    else:
        parts.append('<p class="note">The backbone has no gates.</p>')
    # attributions
    parts.append("<h2>Feature attributions (Integrated Gradients)</h2>")
    if data.get("attributions"):
        parts.append(f"<p>Integrated Gradients on the concatenated encoder outputs (embedding space), summed over "
                     f"each feature's columns; baseline: the {e(data.get('attribution_baseline', ''))}. Ranked by the "
                     "mean absolute attribution over rows; <i>mean</i> is the signed mean. Completeness: "
                     "|sum of attributions &minus; (f(x) &minus; f(baseline))| per row.</p>")
        for task, s in data["attributions"].items():
            c = s["completeness"]
            parts.append(f"<h3>{e(task)} <small>({e(s['output'])})</small></h3><p>completeness: mean |delta| "
                         f"{c['mean_abs_delta']:.2e}, max {c['max_abs_delta']:.2e}, against a mean |f(x) &minus; "
                         f"f(baseline)| of {c['mean_abs_output_change']:.3f}.</p><div class='grid'><figure>"
                         + _img(out_dir, s["image"], f"attributions {task}") + "</figure><table><tr><th>#</th>"
                         "<th>feature</th><th>mean |attr|</th><th>share</th><th>mean</th></tr>")
            for i, r in enumerate(s["features"], 1):
                parts.append(f"<tr><td>{i}</td><td>{e(r['feature'])}</td><td>{r['mean_abs']:.4f}</td>"
                             f"<td>{r['share']:.1%}</td><td>{r['mean']:+.4f}</td></tr>")
            parts.append("</table></div>")
    # relations
    parts.append("<h2>Task relations</h2>")
    r = data.get("relations") or {}
    if r.get("prediction_correlation"):
        parts.append("<h3>Pearson correlation of predictions</h3>" + _matrix(r["prediction_correlation"]))
    if r.get("gradient_cosine"):
        parts.append(f"<h3>Cosine of task gradients</h3><p>Gradient of each task's loss over the rows on the "
                     f"shared parameters (<code>model.shared: {e(r['shared_parameters'])}</code>, "
                     f"{r['shared_parameter_count']:,} values); negative: the tasks pull the shared parameters "
                     "apart.</p>" + _matrix(r["gradient_cosine"]))
    if r.get("image"):
        parts.append(_img(out_dir, r["image"], "task relations"))
    # calibration
    parts.append("<h2>Calibration (binary tasks)</h2>")
    if data.get("calibration"):
        parts.append("<p>Expected calibration error: equal-width probability bins, each bin's |positive rate "
                     "&minus; mean prediction| weighted by its share of the rows.</p><div class='grid'>")
        for task, c in data["calibration"].items():
            parts.append(f"<figure>{_img(out_dir, c['image'], f'reliability {task}')}<figcaption>{e(task)}: ECE "
                         f"{c['ece']:.4f} ({c['bins']} bins)</figcaption></figure>")
        parts.append("</div>")
    else:
        parts.append('<p class="note">No binary task.</p>')
    if data.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in data["notes"]) + "</ul>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mtlframe explain</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>")


def write_report(data: Mapping[str, Any], out_dir: Path) -> Path:
    """Write ``out_dir/report.html``; returns its path."""
    path = Path(out_dir) / "report.html"
    path.write_text(render_html(data, Path(out_dir)), encoding="utf-8")
    return path


def summary_table(data: Mapping[str, Any]):
    """A rich table, one row per task: top features, its gate's entropy, ECE, IG completeness."""
    from rich.table import Table

    table = Table(title=f"explain: {data['split']} split, {data['rows']:,} rows, {data['backbone']}")
    for col in ("task", "type", "top features (share of |attribution|)", "gate entropy / ln E", "ECE",
                "IG max |delta|"):
        table.add_column(col, justify="left" if col[:3] in ("tas", "typ", "top") else "right")
    gates = (data.get("gates") or {}).get("gates", {})
    for task, kind in data["tasks"].items():
        a = (data.get("attributions") or {}).get(task)
        top = ", ".join(f"{r['feature']} {r['share']:.0%}" for r in a["features"][:3]) if a else "-"
        ent = [f"{s['entropy']:.2f}/{s['max_entropy']:.2f}" for s in gates.values() if s["row"] == task]
        c = (data.get("calibration") or {}).get(task)
        table.add_row(task, kind, top, ent[-1] if ent else "-", f"{c['ece']:.4f}" if c else "-",
                      f"{a['completeness']['max_abs_delta']:.1e}" if a else "-")
    return table
