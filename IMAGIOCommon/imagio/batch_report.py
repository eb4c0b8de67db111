"""What `imagio batch` writes about the cohort: summary.csv, batch.json and cohort.html.

``summary.csv`` has one row per manifest case: ``case_id``, ``step``,
``status`` (ok | error | skipped), ``message``, ``runtime_s`` and the step's
headline numbers read from its JSON, with the unit in each column name.
``cohort.html`` is one self-contained page (inline SVG, no scripts): case
status, the minimal-ablative-margin distribution with its threshold line,
coverage per case, route reachability and segmented volumes.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from collections import Counter
from pathlib import Path

BASE_COLUMNS = ("case_id", "step", "status", "message", "runtime_s")
#: headline columns first in this order when present; any others follow in order of appearance
PREFERRED = ("minimal_margin_mm", "coverage_percent", "residual_tumor_ml", "p_margin_ge_threshold_percent",
             "threshold_mm", "verdict", "route_length_mm", "reachable", "generation", "gap_to_target_mm",
             "min_lumen_diameter_mm", "volume_ml", "segment_count", "segments", "feasible", "probe_count")
STATUS_COLORS = {"ok": "#2e9d4a", "error": "#d64541", "skipped": "#8a8f98"}


class SummaryTable:
    """The batch summary: one dict per case (in manifest order) with the columns of summary.csv."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        extra: list[str] = []
        for r in rows:
            for k in r:
                if k not in BASE_COLUMNS and k not in extra:
                    extra.append(k)
        ordered = [c for c in PREFERRED if c in extra] + [c for c in extra if c not in PREFERRED]
        self.columns = [*BASE_COLUMNS, *ordered]

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def row(self, case_id: str) -> dict:
        return next(r for r in self.rows if r["case_id"] == case_id)

    def counts(self) -> dict[str, int]:
        c = Counter(r["status"] for r in self.rows)
        return {s: c.get(s, 0) for s in ("ok", "error", "skipped")}

    @property
    def exit_status(self) -> int:
        """0 when every case succeeded (or was complete already), 1 when some failed."""
        return 1 if self.counts()["error"] else 0

    def to_csv(self, path=None) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: _csv_value(r.get(k)) for k in self.columns})
        text = buf.getvalue()
        if path is not None:
            atomic_write(Path(path), text)
        return text

    def to_pandas(self):
        import pandas as pd  # optional: only when asked for

        return pd.DataFrame(self.rows, columns=self.columns)


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return v


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def summary_row(record: dict, status: str | None = None, message: str | None = None) -> dict:
    row = {"case_id": record["case_id"], "step": record["step"], "status": status or record["status"],
           "message": record.get("message", "") if message is None else message,
           "runtime_s": record.get("runtime_s")}
    row.update(record.get("numbers") or {})
    return row


def write_batch_json(path: Path, info: dict) -> None:
    atomic_write(Path(path), json.dumps(info, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------------ cohort.html
def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _svg_open(w, h):
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'font-family="sans-serif" font-size="12">']


def _ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    n_steps = max(1, math.ceil((hi - start) / step - 1e-9))  # the last tick at or beyond hi
    return [round(start + i * step, 10) for i in range(n_steps + 1)]


def histogram_with_threshold(values, thresholds, xlabel, width=560, height=260, color="#3b7dd8") -> str:
    """A histogram (counts of cases) with dashed threshold line(s) that are always inside the axis."""
    vals = [v for v in (_num(x) for x in values) if v is not None]
    if not vals:
        return "<p class='none'>no values</p>"
    ths = sorted({t for t in (_num(x) for x in thresholds) if t is not None})
    lo, hi = min(vals + ths), max(vals + ths)
    pad = max(0.5, 0.05 * (hi - lo))
    ticks = _ticks(lo - pad, hi + pad)
    x0, x1 = ticks[0], ticks[-1]
    nb = max(5, min(20, int(math.sqrt(len(vals)) * 2)))
    bw = (x1 - x0) / nb
    counts = [0] * nb
    for v in vals:
        counts[min(nb - 1, int((v - x0) / bw))] += 1
    ml, mr, mt, mb = 46, 14, 30, 44
    pw, ph = width - ml - mr, height - mt - mb
    cmax = max(counts)

    def sx(v):
        return ml + (v - x0) / (x1 - x0) * pw

    p = _svg_open(width, height)
    for i, c in enumerate(counts):
        if c:
            h = c / cmax * ph
            p.append(f'<rect x="{sx(x0 + i * bw) + 0.5:.1f}" y="{mt + ph - h:.1f}" width="{max(pw / nb - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="{color}"><title>{c} case(s) in [{x0 + i * bw:.3g}, '
                     f'{x0 + (i + 1) * bw:.3g})</title></rect>')
    p.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#333"/>')
    p.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#333"/>')
    for t in ticks:
        p.append(f'<line x1="{sx(t):.1f}" y1="{mt + ph}" x2="{sx(t):.1f}" y2="{mt + ph + 4}" stroke="#333"/>'
                 f'<text x="{sx(t):.1f}" y="{mt + ph + 17}" text-anchor="middle">{t:g}</text>')
    for t in _ticks(0, cmax, min(cmax, 4)):
        if t == int(t) and t <= cmax:
            y = mt + ph - t / cmax * ph
            p.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{int(t)}</text>')
    p.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{html.escape(xlabel)}</text>')
    p.append(f'<text x="13" y="{mt + ph / 2:.1f}" transform="rotate(-90 13 {mt + ph / 2:.1f})" '
             f'text-anchor="middle">cases</text>')
    for t in ths:
        right = sx(t) > ml + 0.6 * pw  # label on the side with room
        p.append(f'<line x1="{sx(t):.1f}" y1="{mt - 4}" x2="{sx(t):.1f}" y2="{mt + ph}" stroke="#c0392b" '
                 f'stroke-width="2" stroke-dasharray="6 4"/><text x="{sx(t) + (-4 if right else 4):.1f}" '
                 f'y="{mt - 10}" fill="#c0392b" text-anchor="{"end" if right else "start"}">threshold {t:g} mm</text>')
    p.append("</svg>")
    return "".join(p)


def bars(items, xlabel, width=640, lo=None, hi=None, ref=None, ref_label="", unit="") -> str:
    """Horizontal bars, one per case: items = [(label, value, color, note)]."""
    items = [(lab, _num(v), col, note) for lab, v, col, note in items]
    vals = [v for _, v, _, _ in items if v is not None]
    if not items:
        return "<p class='none'>no cases</p>"
    extra = [] if ref is None else [ref]
    lo = min([0.0, *vals, *extra]) if lo is None else lo
    hi = max([1.0, *vals, *extra]) if hi is None else hi
    ticks = _ticks(lo, hi)
    x0, x1 = ticks[0], ticks[-1]
    row, ml, mr, mt, mb = 20, 180, 200, 10, 40
    height = mt + mb + row * len(items)
    pw = width - ml - mr

    def sx(v):
        return ml + (v - x0) / (x1 - x0) * pw

    p = _svg_open(width, height)
    for t in ticks:
        p.append(f'<line x1="{sx(t):.1f}" y1="{mt}" x2="{sx(t):.1f}" y2="{mt + row * len(items)}" stroke="#e3e3e3"/>'
                 f'<text x="{sx(t):.1f}" y="{mt + row * len(items) + 16}" text-anchor="middle">{t:g}</text>')
    for i, (lab, v, col, note) in enumerate(items):
        y = mt + i * row
        short = lab if len(lab) <= 28 else lab[:27] + "…"
        p.append(f'<text x="{ml - 6}" y="{y + 14}" text-anchor="end">{html.escape(short)}</text>')
        if v is None:
            p.append(f'<text x="{ml + 4}" y="{y + 14}" fill="#999">{html.escape(note or "no value")}</text>')
            continue
        a, b = sorted((sx(max(v, x0)), sx(max(0.0, x0))))
        p.append(f'<rect x="{a:.1f}" y="{y + 3}" width="{max(b - a, 1.5):.1f}" height="{row - 6}" fill="{col}">'
                 f'<title>{html.escape(lab)}: {v:g} {html.escape(unit)}</title></rect>')
        note = note if len(note) <= 34 else note[:33] + "…"
        p.append(f'<text x="{max(a, b) + 4:.1f}" y="{y + 14}">{v:.3g}{html.escape(unit)}'
                 f'{(" " + html.escape(note)) if note else ""}</text>')
    if ref is not None:
        p.append(f'<line x1="{sx(ref):.1f}" y1="{mt - 2}" x2="{sx(ref):.1f}" y2="{mt + row * len(items)}" '
                 f'stroke="#c0392b" stroke-width="2" stroke-dasharray="6 4"><title>{html.escape(ref_label)}</title>'
                 f'</line>')
    label = xlabel + (f" (dashed: {ref_label})" if ref is not None and ref_label else "")
    p.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">{html.escape(label)}</text>')
    p.append("</svg>")
    return "".join(p)


def status_grid(rows) -> str:
    cells = []
    for r in rows:
        col = STATUS_COLORS.get(r["status"], "#999")
        tip = f"{r['case_id']} ({r['step']}): {r['status']}" + (f" - {r['message']}" if r.get("message") else "")
        cells.append(f'<span class="cell" style="background:{col}" title="{html.escape(tip)}">'
                     f'{html.escape(r["case_id"])}</span>')
    return '<div class="grid">' + "".join(cells) + "</div>"


CSS = """body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.kpi{display:inline-block;margin:0 18px 8px 0;padding:8px 14px;border-radius:6px;background:#f3f4f6}
.kpi b{font-size:20px;display:block}
.grid{display:flex;flex-wrap:wrap;gap:4px}.cell{color:#fff;padding:3px 7px;border-radius:4px;font-size:12px}
table{border-collapse:collapse;font-size:12px;margin-top:6px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f3f4f6}td.msg{min-width:260px;max-width:420px}.wide{overflow-x:auto}.err{color:#b03a2e}.none{color:#888}.note{color:#555;font-size:13px;max-width:860px}
.legend span{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px -1px 12px}"""


def _legend(pairs):
    return '<p class="legend">' + "".join(f'<span style="background:{c}"></span>{html.escape(t)}'
                                          for t, c in pairs) + "</p>"


def cohort_html(table: SummaryTable, info: dict) -> str:
    rows = table.rows
    counts = table.counts()
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>IMAGIO cohort: {esc(info.get('name', ''))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>IMAGIO cohort report: {esc(info.get('name', ''))}</h1>",
             f"<p class='note'>{len(rows)} case(s) from manifest {esc(str(info.get('manifest', '')))}; "
             f"{esc(info.get('engine', ''))}; written {esc(str(info.get('finished', '')))}. Numbers are the steps' own "
             f"outputs (DIR/&lt;case_id&gt;/&lt;step&gt;/), collected in summary.csv.</p>"]
    parts.append("".join(f"<div class='kpi' style='border-left:5px solid {STATUS_COLORS[s]}'><b>{counts[s]}</b>{s}"
                         f"</div>" for s in ("ok", "error", "skipped")))
    runtimes = [r["runtime_s"] for r in rows if _num(r.get("runtime_s")) is not None]
    if runtimes:
        parts.append(f"<div class='kpi'><b>{sum(runtimes) / 60:.1f} min</b>case run time in all "
                     f"(median {sorted(runtimes)[len(runtimes) // 2]:.1f} s per case)</div>")
    parts.append("<h2>Status per case</h2>" + status_grid(rows)
                 + _legend([(s, STATUS_COLORS[s]) for s in ("ok", "error", "skipped")]))
    failed = [r for r in rows if r["status"] == "error"]
    if failed:
        parts.append("<table><tr><th>case</th><th>step</th><th>message</th></tr>" + "".join(
            f"<tr><td>{esc(r['case_id'])}</td><td>{esc(r['step'])}</td><td class='err'>{esc(r.get('message') or '')}"
            f"</td></tr>" for r in failed) + "</table>")

    margin = [r for r in rows if r["step"] == "margin" and _num(r.get("minimal_margin_mm")) is not None]
    if margin:
        ths = [r.get("threshold_mm") for r in margin]
        below = [r for r in margin if _num(r.get("threshold_mm")) is not None
                 and r["minimal_margin_mm"] < r["threshold_mm"]]
        parts.append("<h2>Minimal ablative margin (MAM)</h2>")
        parts.append(f"<p class='note'>{len(margin)} margin case(s); {len(below)} below their threshold. "
                     f"Negative values: tumour outside the ablation zone (depth in mm).</p>")
        parts.append(histogram_with_threshold([r["minimal_margin_mm"] for r in margin], ths,
                                              "minimal ablative margin (mm)"))
        items = [(r["case_id"], r["minimal_margin_mm"],
                  "#d64541" if (_num(r.get("threshold_mm")) is not None and r["minimal_margin_mm"] < r["threshold_mm"])
                  else "#2e9d4a", "") for r in sorted(margin, key=lambda r: r["minimal_margin_mm"])]
        common = Counter(_num(t) for t in ths if _num(t) is not None).most_common(1)
        ref = common[0][0] if common else None
        parts.append(bars(items, "minimal ablative margin per case (mm)", ref=ref,
                          ref_label=f"threshold {ref:g} mm" if ref is not None else "", unit=" mm"))
        parts.append(_legend([("at or above threshold", "#2e9d4a"), ("below threshold", "#d64541")]))

    cov = [r for r in rows if _num(r.get("coverage_percent")) is not None]
    if cov:
        parts.append("<h2>Coverage</h2><p class='note'>margin: share of the tumour inside the ablation zone; "
                     "ablation-zone: share of the tumour inside the predicted zone; ablation-plan: share of "
                     "tumour + margin covered by the planned zones.</p>")
        items = [(f"{r['case_id']} ({r['step']})", r["coverage_percent"],
                  "#2e9d4a" if r["coverage_percent"] >= 99.0 else "#e67e22", "")
                 for r in sorted(cov, key=lambda r: r["coverage_percent"])]
        parts.append(bars(items, "coverage (%)", lo=0.0, hi=100.0, unit=" %"))
        parts.append(_legend([("at least 99 %", "#2e9d4a"), ("below 99 %", "#e67e22")]))
        res = [r for r in cov if _num(r.get("residual_tumor_ml")) is not None and r["residual_tumor_ml"] > 0]
        if res:
            parts.append("<table><tr><th>case</th><th>residual tumour (ml)</th></tr>" + "".join(
                f"<tr><td>{esc(r['case_id'])}</td><td>{r['residual_tumor_ml']:.3f}</td></tr>" for r in res)
                + "</table>")

    nav = [r for r in rows if r["step"] == "lungnav" and r["status"] != "error"]
    if nav:
        n_ok = sum(1 for r in nav if r.get("reachable") is True)
        parts.append(f"<h2>Route reachability</h2><p class='note'>{n_ok} of {len(nav)} target(s) reachable with "
                     f"the scope; bar: route length (mm), gap to the target and exit generation beside it.</p>")
        items = [(r["case_id"], r.get("route_length_mm"), "#2e9d4a" if r.get("reachable") else "#d64541",
                  f"(gap {r['gap_to_target_mm']:.1f} mm, generation {r.get('generation')})"
                  if _num(r.get("gap_to_target_mm")) is not None else "") for r in nav]
        parts.append(bars(items, "route length (mm)", unit=" mm"))
        parts.append(_legend([("reachable", "#2e9d4a"), ("not reachable", "#d64541")]))

    seg = [r for r in rows if _num(r.get("volume_ml")) is not None]
    if seg:
        parts.append("<h2>Segmented volumes</h2>")
        items = [(r["case_id"], r["volume_ml"], "#3b7dd8", r.get("segments") or "")
                 for r in sorted(seg, key=lambda r: r["volume_ml"])]
        parts.append(bars(items, "volume (ml)", unit=" ml"))

    parts.append("<h2>All cases</h2><p class='note'>As in summary.csv; each case's files are in "
                 "DIR/&lt;case_id&gt;/&lt;step&gt;/, its terminal output in DIR/&lt;case_id&gt;/log.txt.</p>"
                 "<div class='wide'><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in table.columns) + "</tr>")
    for r in rows:
        cells = []
        for c in table.columns:
            cls = ("msg err" if r["status"] == "error" else "msg") if c == "message" else ""
            cells.append(f"<td class='{cls}'>{esc(_fmt(r.get(c)))}</td>" if cls else f"<td>{esc(_fmt(r.get(c)))}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></div></body></html>")
    return "\n".join(parts)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


__all__ = ["SummaryTable", "summary_row", "cohort_html", "write_batch_json", "atomic_write"]
