"""The dataset summary of a batch run, rebuilt from the per-video folders on disk (so a resumed run and an
uninterrupted one give the same summary).

``summary.csv``: one row per video x prompt (id, path, group columns, prompt, status, reason, frames, mean/max cosine,
temporal stability, and with masks pointing / energy / rank correlation). ``summary_groups.csv``: per group column
(named regex groups on the path, or manifest columns) and value, per prompt: videos, failed, and the means of the
per-video values. ``mean_maps_<column>.png``: each prompt's mean relevance map per value of the column, in
normalised frame coordinates (x and y from 0 to 1 across the frame).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

VALUES = ("frames", "mean_cos", "max_cos", "stability", "pointing", "energy", "rank_corr")


def groups_of(path: str, pattern: Optional[str]) -> Dict[str, str]:
    """The named groups of ``pattern`` found (``re.search``) in ``path`` with forward slashes; {} without a match."""
    if not pattern:
        return {}
    found = re.search(pattern, Path(path).as_posix())
    return {k: v for k, v in found.groupdict().items() if v is not None} if found else {}


def summary_rows(out: Path, jobs: List[dict], prompts: List[str], group_by: Optional[str] = None) -> List[dict]:
    """One row per job x prompt, from ``out/videos/<id>/record.json`` (status ``missing`` when there is none)."""
    rows = []
    for job in jobs:
        path = Path(out) / "videos" / job["id"] / "record.json"
        record = json.loads(path.read_text()) if path.is_file() else {"status": "missing"}
        groups = {**job.get("columns", {}), **groups_of(job["path"], group_by)}
        for j, prompt in enumerate(prompts):
            row = {"id": job["id"], "path": job["path"], **groups, "prompt": prompt,
                   "status": record["status"], "reason": record.get("reason", "")}
            ok = record["status"] == "complete"
            row["frames"] = record.get("frames", 0)
            for key in ("mean_cos", "max_cos", "stability"):
                value = record.get(key)[j] if ok and record.get(key) else None
                row[key] = float("nan") if value is None else round(float(value), 6)
            metrics = (record.get("metrics") or {}).get(prompt, {})
            for key in ("pointing", "energy", "rank_corr"):
                row[key] = round(float(metrics[key]), 6) if key in metrics else float("nan")
            rows.append(row)
    return rows


def group_rows(rows: List[dict], columns: List[str]) -> List[dict]:
    """Per column, value and prompt: ``videos``, ``failed`` and the NaN-ignoring mean of each value over the
    complete videos."""
    out = []
    for column in columns:
        keys = sorted({(r[column], r["prompt"]) for r in rows if column in r})
        for value, prompt in keys:
            items = [r for r in rows if r.get(column) == value and r["prompt"] == prompt]
            done = [r for r in items if r["status"] == "complete"]
            row = {"group": column, "value": value, "prompt": prompt, "videos": len(items),
                   "failed": len(items) - len(done)}
            for key in VALUES:
                numbers = np.array([r[key] for r in done], float)
                row[key] = round(float(np.nanmean(numbers)), 6) if np.isfinite(numbers).any() else float("nan")
            out.append(row)
    return out


def group_mean_maps(out: Path, rows: List[dict], column: str, prompts: List[str]) -> Dict[str, np.ndarray]:
    """value -> (K, 64, 64) mean over the complete videos of that value of their ``mean_map.npy``."""
    maps: Dict[str, list] = {}
    for row in rows:
        if row["prompt"] == prompts[0] and row["status"] == "complete" and column in row:
            maps.setdefault(row[column], []).append(np.load(Path(out) / "videos" / row["id"] / "mean_map.npy"))
    return {value: np.mean(items, axis=0) for value, items in sorted(maps.items())}


def plot_group_maps(means: Dict[str, np.ndarray], prompts: List[str], column: str):
    """A grid: a row per group value, a column per prompt, each the mean relevance map over the frame in
    normalised coordinates (colour scale shared by the whole figure). Returns a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = list(means)
    top = max(float(m.max()) for m in means.values()) if means else 1.0
    fig, axes = plt.subplots(len(values), len(prompts), figsize=(2.4 * len(prompts) + 0.8, 2.2 * len(values) + 0.4),
                             squeeze=False, layout="constrained")
    image = None
    for r, value in enumerate(values):
        for c, prompt in enumerate(prompts):
            ax = axes[r, c]
            image = ax.imshow(means[value][c], extent=(0, 1, 1, 0), cmap="jet", vmin=0, vmax=top)
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(prompt, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{column} = {value}", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="mean relevance (per-frame min-max)")
    fig.suptitle(f"mean relevance map per {column} (x, y: normalised frame coordinates)", fontsize=9)
    return fig


def format_summary(rows: List[dict], limit: int = 20) -> str:
    """The first ``limit`` rows of a summary (video x prompt or group) as a Markdown table."""
    if not rows:
        return "(no rows)"
    keys = [k for k in rows[0] if k not in ("path", "reason")]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows[:limit]:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) and k != "frames" else f"{row[k]:g}"
                 if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > limit:
        lines.append(f"({len(rows) - limit} more rows in the CSV)")
    return "\n".join(lines)
