"""report.html: one self-contained page (images inlined as base64 PNG, plots as inline SVG, no external assets)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

COLUMNS = (
    "method",
    "steps",
    "domain",
    "id_sim",
    "context_acc",
    "diversity",
    "clip_i",
    "clip_t",
    "dino",
    "n_images",
    "tune_s",
    "gen_s_per_image",
    "drift",
    "drift_toward_subject",
)
PLOTTED = (
    ("id_sim", "ID similarity (identity judge)"),
    ("context_acc", "context accuracy (context judge)"),
    ("clip_i", "CLIP-I"),
    ("clip_t", "CLIP-T"),
    ("dino", "DINO"),
)
REF_COLORS = {
    "real_same_identity": "#2a9d8f",
    "real_different_identity": "#e76f51",
    "vae_reconstruction": "#8d99ae",
    "base_class_word": "#e9c46a",
    "base_described_identity": "#b5838d",
    "textual_inversion": "#6d597a",
    "dreambooth": "#355070",
}
CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 24px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th{background:#f3f3f3} td.l{text-align:left}
table.grid td{padding:2px;text-align:center;vertical-align:middle}
table.grid img{width:80px;height:80px;image-rendering:pixelated;margin:1px}
.plots{display:flex;flex-wrap:wrap;gap:16px}
"""


def png_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(image: Image.Image, title: str = "") -> str:
    return f'<img src="{png_data_uri(image)}" title="{html.escape(title)}" alt="{html.escape(title)}">'


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if c in ("method", "domain") else ""}">{_fmt(r.get(c))}</td>' for c in cols)
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _label(row: dict) -> str:
    return row["method"] if row["steps"] is None else f"{row['method']}@{row['steps']}"


def plot_svg(rows: list[dict], metric: str, title: str, width: int = 500, height: int = 260) -> str:
    """E4T's `metric` against tuning steps (categorical x: the step counts as evenly spaced ticks),
    with each reference row and each baseline (at its budget) as a dashed horizontal line."""
    e4t = sorted((r for r in rows if r["method"] == "e4t" and r.get(metric) is not None), key=lambda r: r["steps"])
    refs = [r for r in rows if r["method"] != "e4t" and r.get(metric) is not None]
    values = [r[metric] for r in e4t + refs]
    if not e4t or not values:
        return ""
    lo, hi = min(0.0, *values), max(1.0, *values)
    left, right, top, bottom = 48, 210, 28, 36
    pw, ph = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (pw * (i + 0.5) / len(e4t))

    def y(v: float) -> float:
        return top + ph * (hi - v) / (hi - lo)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    for i, r in enumerate(e4t):
        parts.append(f'<text x="{x(i):.1f}" y="{top + ph + 16}" text-anchor="middle">{r["steps"]}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">tuning steps</text>')
    for j, r in enumerate(refs):
        color = REF_COLORS.get(r["method"], "#555")
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(r[metric]):.1f}" y2="{y(r[metric]):.1f}" '
            f'stroke="{color}" stroke-dasharray="5,4" stroke-width="1.5"/>'
        )
        parts.append(
            f'<text x="{left + pw + 6}" y="{top + 12 + 14 * j}" fill="{color}">'
            f"— {html.escape(_label(r))} {r[metric]:.2f}</text>"
        )
    points = " ".join(f"{x(i):.1f},{y(r[metric]):.1f}" for i, r in enumerate(e4t))
    parts.append(f'<polyline points="{points}" fill="none" stroke="#264653" stroke-width="2"/>')
    for i, r in enumerate(e4t):
        parts.append(
            f'<circle cx="{x(i):.1f}" cy="{y(r[metric]):.1f}" r="3.5" fill="#264653">'
            f"<title>{r[metric]:.3f}</title></circle>"
        )
    parts.append(f'<text x="{left + pw + 6}" y="{top + 12 + 14 * len(refs)}" fill="#264653">● e4t</text>')
    parts.append("</svg>")
    return "".join(parts)


def subject_grid(run, i: int, grid_images: int) -> str:
    """Rows: prompts; columns: the truth render, then every row's first images for that prompt."""
    subject = run.subjects[i]
    refs = "".join(_img(im, "reference view") for im in run.references[i])
    head = (
        f"<h4>{html.escape(subject.identity)}</h4><p>input {_img(run.inputs[i], 'input image')} "
        f"&nbsp; reference views {refs}</p>"
    )
    labels = [row.label for row in run.rows]
    cells = ["<tr><th>prompt</th>" + "".join(f"<th>{html.escape(lab)}</th>" for lab in labels) + "</tr>"]
    for p in run.prompts:
        tds = "".join(
            "<td>"
            + "".join(_img(im, f"{row.label}: {p.caption}") for im in row.groups[i, p.index][:grid_images])
            + "</td>"
            for row in run.rows
        )
        cells.append(f'<tr><td class="l">{html.escape(p.template)}</td>{tds}</tr>')
    return head + '<table class="grid">' + "".join(cells) + "</table>"


COMBINED_COLUMNS = (
    "domain",
    "rule",
    "id_sim",
    "id_sim_alone",
    "id_sim_distractor",
    "context_acc",
    "context_acc_alone",
    "n_images",
)


def combined_table(rows: list[dict]) -> str:
    """One line per (domain pair, concept position): the concept's id_sim combined, alone, and the floor."""
    head = "".join(f"<th>{c}</th>" for c in ("concept",) + COMBINED_COLUMNS)
    lines = []
    for r in rows:
        for c in [None, *r["concepts"]]:
            name = "both" if c is None else f"{c['position']} ({c['domain']})"
            values = [r.get(k) if c is None or k not in c else c[k] for k in COMBINED_COLUMNS]
            cells = "".join(f'<td class="{"l" if isinstance(v, str) else ""}">{_fmt(v)}</td>' for v in values)
            lines.append(f'<tr><td class="l">{html.escape(name)}</td>{cells}</tr>')
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def combined_section(result: dict, grids: dict | None) -> str:
    rows = result.get("combined") or []
    if not rows:
        return ""
    parts = [
        "<h2>Prompts that combine concepts</h2>",
        f"<p>{html.escape(result['protocol']['metrics']['combined'])}.</p>",
    ]
    parts.append(combined_table(rows))
    for pair, lines in (grids or {}).items():
        cells = "".join(
            f'<tr><td class="l">{html.escape(text)}</td><td>{"".join(_img(im, text) for im in images)}</td></tr>'
            for text, images in lines
        )
        parts.append(f'<h4>{html.escape(pair)}: first pair, first prompt</h4><table class="grid">{cells}</table>')
    return "".join(parts)


def write_report(
    path: str | Path, result: dict, runs: list, grid_images: int = 1, combined_grids: dict | None = None
) -> None:
    """The page: the table, fidelity-vs-steps plots per domain, then one image grid per subject."""
    proto = result["protocol"]
    shown = {k for r in result["rows"] for k in r}  # define only the metrics the table holds
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>e4t eval</title>",
        f"<style>{CSS}</style></head><body><h1>e4t eval</h1>",
        f"<p>{html.escape(proto['paper'])}. Base {html.escape(proto['base']['hash'])}; packs "
        + ", ".join(f"{html.escape(d)} {html.escape(p['hash'])}" for d, p in proto["packs"].items())
        + f"; wall time {result.get('wall_s', 0):.0f} s.</p>",
        "<h2>Rows</h2>",
        table(result["rows"]),
        "<ul>"
        + "".join(f"<li><b>{k}</b>: {html.escape(v)}</li>" for k, v in proto["metrics"].items() if k in shown)
        + "</ul>",
    ]
    for run in runs:
        rows = [r for r in result["rows"] if r["domain"] == run.domain]
        plots = [plot_svg(rows, m, t) for m, t in PLOTTED if any(r.get(m) is not None for r in rows)]
        parts.append(f"<h2>{html.escape(run.domain)}: fidelity against tuning steps</h2>")
        parts.append('<div class="plots">' + "".join(plots) + "</div>")
        parts.append(f"<h2>{html.escape(run.domain)}: images (seed of image 0 of each prompt)</h2>")
        parts += [subject_grid(run, i, grid_images) for i in range(len(run.subjects))]
    parts.append(combined_section(result, combined_grids))
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts), encoding="utf-8")
