"""The report's look in one place: fonts, colours and the common figure layout (plotly)."""
from __future__ import annotations

import json
from typing import Any

FONT = dict(family="Inter, 'Segoe UI', system-ui, -apple-system, sans-serif", size=13, color="#1f2937")
GREY, BLUE, DARK, ORANGE, RED, GREEN = "#c4c9d2", "#9ec5fe", "#1d4ed8", "#f97316", "#dc2626", "#16a34a"
BASELINE = "#94a3b8"  # bars of the baseline (or original) model, beside the chosen one in colour
PRECISION_COLORS = {"fp32": "#2563eb", "fp16": "#7c3aed", "int8": "#f97316", "int4": "#db2777"}
LAYER_COLORS = ["#2563eb", "#f97316", "#16a34a", "#db2777", "#7c3aed", "#0891b2", "#ca8a04", "#dc2626"]


def style(fig, **layout: Any) -> None:
    """The common layout; `layout` adds to it or overrides it (e.g. a wider top margin)."""
    fig.update_layout(**{"template": "plotly_white", "font": FONT, "margin": dict(l=60, r=30, t=50, b=40),
                         "hoverlabel": dict(bgcolor="white", font_size=12), **layout})


def plain(fig) -> dict[str, Any]:
    """The figure as plain JSON types (plotly's encoder handles numpy arrays and the like)."""
    import plotly.io as pio

    return json.loads(pio.to_json(fig, validate=False))
