"""Self-contained HTML pages of the monitoring reports: inline CSS, no script, no request beyond the file;
every value escaped."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}td:first-child,
th:first-child{text-align:left}.note{color:#555;max-width:60em}"""


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{value:.4g}"
    return html.escape(str(value))


def render_table(title: str, note: str, table: pd.DataFrame) -> str:
    """A page with ``title``, an explanatory ``note`` and ``table`` (one row per record)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    body = f"<table><tr>{head}</tr>{rows}</table>" if len(table) else "<p>nothing served in this window</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='note'>{html.escape(note)}</p>{body}</body></html>\n")
