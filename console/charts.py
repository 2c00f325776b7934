"""Small inline SVG line charts, drawn on the server (no chart library, no script)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

Series = Sequence[tuple[float, float]]
"""``(unix time, value)`` points, oldest first."""

PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563")


def format_value(value: float, unit: str = "") -> str:
    """A short label: ``12.3 ms``, ``0.0421``, ``3.2/s``, ``5 %``."""
    if value is None or not math.isfinite(value):
        return "–"
    if unit == "s":
        return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"
    if unit == "%":
        return f"{value * 100:.3g} %"
    if unit == "/s":
        return f"{value:.3g}/s"
    return f"{value:.3g}"


def line_chart(series: dict[str, Series], title: str, unit: str = "", width: int = 320, height: int = 96) -> str:
    """An ``<svg role="img">`` with one polyline per named series, its title and the latest values.

    Empty series draw an empty frame saying "no data yet".
    """
    pad_l, pad_r, pad_t, pad_b = 4, 4, 18, 14
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    label = escape(title)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{label}"><title>{label}</title>',
             f'<text x="{pad_l}" y="12" class="chart-title">{label}</text>',
             f'<rect x="{pad_l}" y="{pad_t}" width="{width - pad_l - pad_r}" height="{height - pad_t - pad_b}" '
             f'class="chart-frame"/>']
    if not points:
        parts.append(f'<text x="{width / 2:.0f}" y="{(height + pad_t) / 2:.0f}" class="chart-empty" '
                     f'text-anchor="middle">no data yet</text></svg>')
        return "".join(parts)
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    v0, v1 = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    if v1 <= v0:
        v1 = v0 + 1.0
    span_t = (t1 - t0) or 1.0
    inner_w, inner_h = width - pad_l - pad_r, height - pad_t - pad_b

    def xy(t: float, v: float) -> str:
        return f"{pad_l + (t - t0) / span_t * inner_w:.1f},{pad_t + inner_h - (v - v0) / (v1 - v0) * inner_h:.1f}"

    for i, (name, s) in enumerate(series.items()):
        pts = " ".join(xy(t, v) for t, v in s if math.isfinite(v))
        if pts:
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{PALETTE[i % len(PALETTE)]}" '
                         f'stroke-width="1.5"><title>{escape(name)}</title></polyline>')
    latest = [s[-1][1] for s in series.values() if s]
    summary = format_value(latest[0], unit) if len(latest) == 1 else f"max {format_value(max(latest), unit)}"
    parts.append(f'<text x="{width - pad_r}" y="12" class="chart-value" text-anchor="end">{escape(summary)}</text>')
    top = max(p[1] for p in points)
    parts.append(f'<text x="{pad_l}" y="{height - 2}" class="chart-axis">{escape(format_value(top, unit))} max</text>')
    parts.append("</svg>")
    return "".join(parts)
