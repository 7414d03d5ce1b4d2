"""The backtest HTML page on a small synthetic report: content, escaping, missing values, atomic rewrite."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from recops.evaluation.backtest_report import write_html_report

EVIL = "<script>alert(1)</script>"
CUTS = ("2024-02-01 00:00", "2024-02-15 00:00")


def metrics(base: float) -> dict[str, float]:
    return {"ndcg@10": base, "recall@10": base * 0.8, "recall@20": base * 1.2, "map@10": base * 0.6,
            "mrr@10": base * 1.5, "hitrate@10": base * 3, "coverage@10": 0.05, "novelty@10": 2.0}


def window(w: int, shift: float) -> dict[str, Any]:
    models: dict[str, Any] = {
        "popularity": {"params": {}, "valid_ndcg": 0.09, "metrics": metrics(0.10 + shift), "n_seeds": 1,
                       "seconds": 0.01},
        "recent_popularity": {"params": {"days": 7.0}, "valid_ndcg": 0.12, "metrics": metrics(0.14 + shift),
                              "n_seeds": 1, "seconds": 0.01},
        EVIL: {"params": {"l2": 100.0}, "valid_ndcg": float("nan"), "metrics": metrics(0.12 + shift),
               "n_seeds": 1, "seconds": 0.2},
        "recops": {"params": "params.yaml", "metrics": metrics(0.17 + shift), "n_seeds": 1, "seconds": 3.0},
    }
    models["popularity"]["metrics"]["ndcg@10"] = float("nan") if w == 1 else 0.10
    return {"window": w, "valid_start": "2024-01-18 00:00", "cut": CUTS[w], "test_end": "2024-02-29 00:00",
            "train_rows": 1000 + w, "valid_rows": 100, "test_rows": 120, "valid_users": 30, "test_users": 40 + w,
            "seconds": 4.2, "models": models}


def lift(best: str) -> dict[str, Any]:
    over = {"popularity": {"lift_pct": 60.0, "low_pct": 30.0, "high_pct": 90.0},
            "recent_popularity": {"lift_pct": 12.5, "low_pct": 2.0, "high_pct": 24.0},
            EVIL: {"lift_pct": 30.0, "low_pct": float("nan"), "high_pct": None}}
    return {"best_peer": best, "best_peer_value": 0.15, "recops_value": 0.18, "over": over,
            "lift_over_best_pct": over[best]["lift_pct"], "meets_target": over[best]["lift_pct"] >= 10.0}


def report() -> dict[str, Any]:
    windows = [window(0, 0.0), window(1, 0.02)]
    names = list(windows[0]["models"])
    pooled = {name: {k: v for k, v in metrics(0.1 + 0.02 * i).items() if "@" in k and "coverage" not in k
                     and "novelty" not in k} for i, name in enumerate(names)}
    return {
        "created": "2024-03-01T12:00:00+00:00",
        "protocol": "rolling origin on the global timeline; warm users (seen before each cut)",
        "config": {"windows": 2, "test_days": 14.0, "valid_days": None, "step_days": None, "k": 20, "seeds": 1,
                   "peers": ["popularity", "recent_popularity", EVIL], "bootstrap_resamples": 200,
                   "confidence": 0.9},
        "seed": 42, "data": {"n_users": 50, "n_items": 80, "rows": 2000},
        "windows": windows,
        "pooled": {"rows": 81, "metrics": pooled},
        "lift": {"ndcg@10": lift("recent_popularity"), "recall@20": lift(EVIL)},
        "lift_target_pct": 10.0,
        "recent_popularity_lift": {"ndcg@10": lift("popularity")["over"]["recent_popularity"],
                                   "recall@20": None},
        "seconds": 12.0,
    }


def test_page_content_and_escaping(tmp_path: Path) -> None:
    path = write_html_report(report(), tmp_path / "reports" / "backtest.html")
    assert path == tmp_path / "reports" / "backtest.html" and path.exists()
    text = path.read_text(encoding="utf-8")
    for name in ("popularity", "recent_popularity", "recops"):
        assert name in text
    for cut in CUTS:
        assert cut in text
    assert len(re.findall(r"<img ", text)) == 2
    assert text.count('src="data:image/png;base64,') == 2
    assert "&lt;script&gt;" in text
    assert "<script" not in text.lower()
    assert "n/a" in text                          # the NaN values and the half-missing interval
    assert "recops backtest" in text and "2024-03-01" in text
    assert "90% CI" in text                       # the confidence of the config
    assert "+10%" in text and 'class="pass"' in text
    assert "days=7" in text and "params.yaml" in text
    # sections in the order of the brief
    order = ["<h1>recops backtest", "Verdict", "cut (test start)", "Pooled metrics", "Lift of recops",
             "<img ", "Per window: metrics"]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)


def test_missing_parts_do_not_fail(tmp_path: Path) -> None:
    minimal = report()
    for w in minimal["windows"]:
        del w["models"]["recent_popularity"]
    del minimal["pooled"]["metrics"]["recent_popularity"]
    for entry in minimal["lift"].values():
        del entry["over"]["recent_popularity"]
    minimal["lift"]["ndcg@10"]["best_peer"] = "popularity"
    minimal["recent_popularity_lift"] = {"ndcg@10": None, "recall@20": None}
    text = write_html_report(minimal, tmp_path / "minimal.html").read_text(encoding="utf-8")
    assert "recent popularity was not among the peers" in text
    empty = write_html_report({"windows": [], "lift": {}, "pooled": {}}, tmp_path / "empty.html")
    assert empty.read_text(encoding="utf-8").count("<img ") == 2


def test_second_write_replaces_the_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "backtest.html"
    write_html_report(report(), path)
    first = path.stat().st_ino
    changed = report()
    changed["created"] = "2025-01-01T00:00:00+00:00"
    changed["pooled"]["metrics"]["recops"]["ndcg@10"] = math.pi / 10
    write_html_report(changed, path)
    assert path.stat().st_ino != first            # a new file renamed over the old one, not rewritten in place
    assert "2025-01-01" in path.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["backtest.html"]  # no temporary file left behind
