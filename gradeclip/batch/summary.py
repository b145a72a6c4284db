"""The dataset summary of a batch run, rebuilt from the per-video folders on disk (so a resumed run and an
uninterrupted one give the same summary).

``summary.csv``: one row per video x prompt (id, path, group columns, prompt, status and reason, frames declared /
decoded / damaged / explained, mean/max cosine, temporal stability, constant maps, and with masks whether they were
found, annotated and missing frames, masks resized, chance level, pointing / energy / rank correlation).
``summary_groups.csv``: per group column (named groups of each ``--group-by`` regex, or manifest columns) and value,
per prompt: videos counted by status, those included, frames and annotated frames summed over the included videos
(complete ones; partial ones too with ``--include-partial``) and the means of the other per-video values over them.
``stats.csv``/``stats.md`` (module ``stats``): counts, mean, sd and bootstrap intervals per grouping and cross.
``summary.json``: the run's counts and what was excluded. The figures are ``figures``'s.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

VALUES = ("frames", "mean_cos", "max_cos", "stability", "constant_maps", "annotated_frames", "chance", "pointing",
          "energy", "rank_corr", "head_share", "torso_share", "legs_share")
COUNTS = ("declared_frames", "decoded_frames", "damaged_frames")
SUMMED = ("frames", "annotated_frames")  # group rows give their total over the included videos


def groups_of(path: str, patterns) -> Dict[str, str]:
    """The named groups of each pattern (a regex or a list of them) found (``re.search``) in ``path`` with forward
    slashes; a pattern without a match adds nothing."""
    if not patterns:
        return {}
    found: Dict[str, str] = {}
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        match = re.search(pattern, Path(path).as_posix())
        found.update({k: v for k, v in (match.groupdict() if match else {}).items() if v is not None})
    return found


def included(status: str, include_partial: bool) -> bool:
    """Whether a video of ``status`` counts in group statistics: complete ones, and partial ones on request."""
    return status == "complete" or (include_partial and status == "partial")


def summary_rows(out: Path, jobs: List[dict], prompts: List[str], group_by=None, masks_asked: bool = False
                 ) -> List[dict]:
    """One row per job x prompt, from ``out/videos/<id>/record.json`` (status ``missing`` when there is none):
    status and reason, frame counts, per-prompt values (NaN for a failed video), and with ``masks_asked`` whether
    masks were found, annotated frames, missing frames, masks resized (``WxH->WxH``) and the chance level."""
    rows = []
    for job in jobs:
        path = Path(out) / "videos" / job["id"] / "record.json"
        record = json.loads(path.read_text()) if path.is_file() else {
            "status": "missing", "reason": "no record.json: rerun the same command to compute it"}
        groups = {**job.get("columns", {}), **groups_of(job["path"], group_by)}
        usable = record["status"] in ("complete", "partial")
        resized = record.get("masks_resized")
        for j, prompt in enumerate(prompts):
            row = {"id": job["id"], "path": job["path"], **groups, "prompt": prompt,
                   "status": record["status"], "reason": record.get("reason", "")}
            row.update({key: record.get(key, "") for key in COUNTS})
            row["frames"] = record.get("frames", 0)
            for key in ("mean_cos", "max_cos", "stability", "constant_maps"):
                value = record.get(key)[j] if usable and record.get(key) else None
                row[key] = float("nan") if value is None else round(float(value), 6)
            if masks_asked:
                row["masks"] = "found" if record.get("masks") else "none"
                row["annotated_frames"] = record.get("annotated_frames", 0) if usable else float("nan")
                row["missing_frames"] = len(record.get("missing_frames") or [])
                row["masks_resized"] = "" if not resized else \
                    f"{resized['from'][1]}x{resized['from'][0]}->{resized['to'][1]}x{resized['to'][0]}"
                row["chance"] = float("nan") if record.get("chance") is None else round(float(record["chance"]), 6)
            metrics = (record.get("metrics") or {}).get(prompt, {})
            for key in ("pointing", "energy", "rank_corr"):
                row[key] = round(float(metrics[key]), 6) if key in metrics else float("nan")
            rows.append(row)
    return rows


def group_rows(rows: List[dict], columns: List[str], include_partial: bool = False) -> List[dict]:
    """Per column, value and prompt: ``videos``, how many are ``complete``, ``partial``, ``failed`` (or missing),
    ``included`` in the means (complete, and partial with ``include_partial``), ``with_masks``/``without_masks``
    (when masks were asked for), ``frames`` and ``annotated_frames`` summed over the included videos, and the
    NaN-ignoring mean of each other value over them (spread and intervals: ``stats.group_stats``)."""
    out = []
    for column in columns:
        keys = sorted({(r[column], r["prompt"]) for r in rows if column in r})
        for value, prompt in keys:
            items = [r for r in rows if r.get(column) == value and r["prompt"] == prompt]
            used = [r for r in items if included(r["status"], include_partial)]
            complete = sum(r["status"] == "complete" for r in items)
            partial = sum(r["status"] == "partial" for r in items)
            row = {"group": column, "value": value, "prompt": prompt, "videos": len(items), "complete": complete,
                   "partial": partial, "failed": len(items) - complete - partial, "included": len(used)}
            if any("masks" in r for r in items):
                row["with_masks"] = sum(r.get("masks") == "found" for r in items)
                row["without_masks"] = len(items) - row["with_masks"]
            for key in (k for k in VALUES if any(k in r for r in items)):
                numbers = np.array([r.get(key, float("nan")) for r in used], float)
                if key in SUMMED:  # counts of frames over the included videos, not a per-video mean
                    row[key] = int(np.nansum(numbers))
                else:
                    row[key] = round(float(np.nanmean(numbers)), 6) if np.isfinite(numbers).any() else float("nan")
            out.append(row)
    return out


def run_counts(rows: List[dict], prompts: List[str], include_partial: bool, masks_asked: bool) -> dict:
    """``summary.json``: how many videos are complete, partial, failed (or missing), which were excluded from the
    group statistics and why, and with masks how many videos had them."""
    videos = [r for r in rows if r["prompt"] == prompts[0]]
    counts = {"videos": len(videos), "include_partial": include_partial}
    for status in ("complete", "partial", "failed", "missing"):
        counts[status] = sum(r["status"] == status for r in videos)
    counts["excluded"] = [{"id": r["id"], "status": r["status"], "reason": r["reason"]} for r in videos
                          if not included(r["status"], include_partial)]
    if masks_asked:
        counts["with_masks"] = sum(r["masks"] == "found" for r in videos)
        counts["without_masks"] = [r["id"] for r in videos if r["masks"] != "found"]
        counts["masks_resized"] = sorted({r["masks_resized"] for r in videos if r["masks_resized"]})
        counts["missing_frames"] = sum(r["missing_frames"] for r in videos)
    return counts


def format_summary(rows: List[dict], limit: Optional[int] = None) -> str:
    """A summary (video x prompt or group) as a Markdown table: every row, or the first ``limit``."""
    if not rows:
        return "(no rows)"
    keys = [k for k in rows[0] if k not in ("path", "reason")]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    limit = len(rows) if limit is None else limit
    for row in rows[:limit]:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) and k != "frames" else f"{row[k]:g}"
                 if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > limit:
        lines.append(f"({len(rows) - limit} more rows in the CSV)")
    return "\n".join(lines)
