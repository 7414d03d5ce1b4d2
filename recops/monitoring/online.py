"""Online metrics: what users did with what was served, per served version and UTC day.

Inputs are the impression log (``recops.serving.impressions.read_impressions``: one row per shown item) and the
event log (what users did, ``recops.data.events``). An event is a *click* on an impression when the same user
interacted with an item that impression showed, at most ``attribution_minutes`` after it was served; each event
goes to the most recent such impression (last touch), so a list shown twice is not credited twice.

Per (version, day) and each ``k``: lists served, users, CTR@k (share of lists with a click in their first k),
item CTR@k (clicks per item shown in the first k), coverage@k (share of the catalogue shown in the first k),
novelty@k (mean ``-log2`` of the shown items' share of the reference interactions: higher is less popular), the
share of slots that explored and the CTR of those slots, and the shares of lists that were cached or a fallback
(cold or unknown users). Pure and vectorised (``merge_asof`` for attribution, group-bys for the rest); no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from recops.columns import Columns


def attribute_clicks(shown: pd.DataFrame, events: pd.DataFrame, window_seconds: float) -> pd.DataFrame:
    """``shown`` (impression rows) with a boolean ``clicked`` column: an event of the same user on the same item
    within ``window_seconds`` after the impression, credited to the latest such impression only.

    ``events`` needs ``user_id``, ``item_id`` and ``timestamp`` (unix seconds). Ids are compared as text, so an
    impression logged with integer ids joins events logged with text ids."""
    out = shown.copy()
    out["clicked"] = False
    if out.empty or events.empty:
        return out
    left = pd.DataFrame({
        "time": pd.to_numeric(events[Columns.TIMESTAMP], errors="coerce").astype(np.float64),
        "user": events[Columns.USER_ID].astype(str).to_numpy(),
        "item": events[Columns.ITEM_ID].astype(str).to_numpy(),
    }).dropna(subset=["time"]).sort_values("time", kind="stable")
    right = pd.DataFrame({
        "time": out["time"].to_numpy(dtype=np.float64),
        "user": out["user_id"].astype(str).to_numpy(),
        "item": out["item_id"].astype(str).to_numpy(),
        "row": np.arange(len(out)),
    }).sort_values("time", kind="stable")
    matched = pd.merge_asof(left, right, on="time", by=["user", "item"], direction="backward",
                            tolerance=float(window_seconds), allow_exact_matches=True)
    rows = matched["row"].dropna().to_numpy(dtype=np.int64)
    clicked = np.zeros(len(out), dtype=bool)
    clicked[rows] = True
    out["clicked"] = clicked
    return out


def online_metrics(shown: pd.DataFrame, ks: Sequence[int], n_items: int,
                   reference_counts: pd.Series | None = None) -> pd.DataFrame:
    """One row per (version, day) of ``shown`` (with ``clicked``, from :func:`attribute_clicks`).

    ``n_items``: the catalogue size (coverage's denominator); ``reference_counts``: interactions per item id
    (text index) of the champion's training data, for novelty (an item absent from it counts once)."""
    columns = ["version", "day", "lists", "users"]
    if shown.empty:
        return pd.DataFrame(columns=columns)
    frame = shown.assign(
        day=pd.to_datetime(shown["time"], unit="s", utc=True).dt.strftime("%Y-%m-%d"),
        item_key=shown["item_id"].astype(str),
    )
    keys = ["version", "day"]
    groups = frame.groupby(keys, sort=True)
    out = pd.DataFrame({
        "lists": groups["impression_id"].nunique(),
        "users": groups["user_id"].nunique(),
    })
    per_list = frame.groupby([*keys, "impression_id"], sort=False).agg(
        cached=("cached", "first"), fallback=("fallback", "first"))
    by_list = per_list.groupby(level=[0, 1])
    out["cached_share"] = by_list["cached"].mean()
    out["fallback_share"] = by_list["fallback"].apply(lambda s: s.notna().mean())
    out["explored_share"] = groups["explored"].mean()
    explored = frame[frame["explored"]]
    out["explored_ctr"] = explored.groupby(keys)["clicked"].mean() if not explored.empty else np.nan
    if reference_counts is not None and len(reference_counts):
        counts = reference_counts.copy()
        counts.index = counts.index.astype(str)
        total = float(counts.sum())
        share = frame["item_key"].map(counts).fillna(1.0).to_numpy(dtype=np.float64) / total
        frame["surprise"] = -np.log2(np.clip(share, 1e-12, 1.0))
    for k in sorted(set(int(k) for k in ks)):
        top = frame[frame["position"] < k]
        top_groups = top.groupby(keys)
        clicked_lists = top.groupby([*keys, "impression_id"])["clicked"].any().groupby(level=[0, 1]).mean()
        out[f"ctr@{k}"] = clicked_lists
        out[f"item_ctr@{k}"] = top_groups["clicked"].mean()
        out[f"coverage@{k}"] = top_groups["item_key"].nunique() / max(int(n_items), 1)
        if "surprise" in top:
            out[f"novelty@{k}"] = top_groups["surprise"].mean()
    return out.reset_index()


_EXPOSED = {"ctr": "share of lists with a click in their first k", "item_ctr": "clicks per item shown in the "
            "first k", "coverage": "share of the catalogue shown in the first k", "novelty": "mean -log2 "
            "popularity share of the items shown in the first k"}


def prometheus_lines(report: dict) -> str:
    """The latest day of each version of an online-metrics report (``recops monitor``) as Prometheus gauges,
    ``recops_online_<metric>{version, k, day}``, plus the explored-slot CTR and the fallback share."""
    latest: dict[str, dict] = {}
    for row in report.get("rows", []):
        version = str(row["version"])
        if version not in latest or row["day"] > latest[version]["day"]:
            latest[version] = row
    lines = []

    def gauge(name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP recops_online_{name} {help_text} (recops monitor: latest day per version)")
        lines.append(f"# TYPE recops_online_{name} gauge")
        for labels, value in samples:
            text = ",".join(f'{key}="{val}"' for key, val in labels.items())
            lines.append(f"recops_online_{name}{{{text}}} {float(value)!r}")

    for metric, help_text in _EXPOSED.items():
        samples = [({"version": v, "k": key.split("@")[1], "day": row["day"]}, value)
                   for v, row in latest.items() for key, value in row.items()
                   if key.startswith(metric + "@") and isinstance(value, (int, float)) and np.isfinite(value)]
        if samples:
            gauge(metric, help_text, samples)
    for metric, help_text in (("explored_ctr", "click rate of the exploration slots"),
                              ("fallback_share", "share of lists that were a fallback (cold or unknown user)"),
                              ("lists", "lists served")):
        samples = [({"version": v, "day": row["day"]}, row[metric]) for v, row in latest.items()
                   if isinstance(row.get(metric), (int, float)) and np.isfinite(row[metric])]
        if samples:
            gauge(metric, help_text, samples)
    return "\n".join(lines) + ("\n" if lines else "")
