"""Explanations measured against the user's own annotations of a video: per-frame masks or boxes
(``eval.mask_sources``: a folder of mask images, a mask video, or COCO-style boxes; ``open_masks`` is importable
from here too).

Per explained frame, prompt and method: the pointing game (``metrics.pointing_game``), the energy in the mask
(``metrics.energy_pointing_game``) and the rank correlation of map and mask (``metrics.rank_correlation``), on the
map min-max normalised per frame and upsampled bilinearly to the frame size. A constant map (``metrics.is_constant``)
says nothing: it is a miss with energy 0 and no rank correlation (a missing value, never a number), and the
summary counts such maps (``constant_maps``) so that a method that returns nothing is visible.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .mask_sources import MASK_SUFFIXES, MaskSource, frame_number, open_masks  # noqa: F401 (public here too)
from .metrics import energy_pointing_game, is_constant, pointing_game, rank_correlation

METRICS = ("pointing", "energy", "rank_corr")


def score_frames(result, source: MaskSource) -> dict:
    """Score a ``VideoExplanation`` against ``source``.

    Returns ``{"rows": [...], "missing": [frame indices without annotation], "resized": source.resized}``; one row
    per annotated explained frame and prompt: ``frame``, ``time_s``, ``prompt``, ``method``, ``pointing`` (0/1),
    ``energy`` in [0, 1], ``rank_corr`` in [-1, 1] (NaN for a constant map or an empty/full mask), ``constant``
    (1 when the raw map is constant: scored a miss with energy 0), ``mask_share`` (the share of the frame the mask
    covers: the chance level of the pointing game). ``time_s`` is the explained frame's own time. With
    ``input="library"`` map and mask are both cut to the part of the frame the model saw, and the share is of that
    part.
    """
    have = set(source.indices)
    rows, missing = [], []
    size = tuple(result.frame_size)
    for n, index in enumerate(result.indices.tolist()):
        if index not in have:
            missing.append(index)
            continue
        maps, (top, left, bottom, right) = result.frame_maps(n, size)  # (K, h, w) on the part the model saw
        mask = source.mask(index, size)[top:bottom, left:right]  # metrics count only what the model saw
        masks = np.broadcast_to(mask, maps.shape)
        hits, energy = pointing_game(maps, masks), energy_pointing_game(maps, masks)
        corr = rank_correlation(maps, masks.astype(np.float64))
        constant = is_constant(result.raw[n])
        for j, prompt in enumerate(result.prompts):
            rows.append({"frame": index, "time_s": round(float(result.times[n]), 6), "prompt": prompt,
                         "method": result.method, "pointing": int(hits[j]), "energy": float(energy[j]),
                         "rank_corr": float(corr[j]), "constant": int(constant[j]),
                         "mask_share": float(mask.mean())})
    return {"rows": rows, "missing": missing, "resized": source.resized}


def summarize(rows: Sequence[dict]) -> List[dict]:
    """Mean of each metric per (method, prompt) over the annotated explained frames: ``frames`` (how many),
    ``pointing``, ``energy``, ``rank_corr`` (over the frames where it is defined; NaN when it is nowhere),
    ``constant_maps`` (how many of the frames' maps were constant: misses with energy 0) and ``chance`` (mean mask
    share: the expected hit rate of a uniformly random point)."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["prompt"]), []).append(row)
    table = []
    for (method, prompt), items in groups.items():
        corr = np.array([r["rank_corr"] for r in items], float)
        table.append({"method": method, "prompt": prompt, "frames": len(items),
                      "pointing": float(np.mean([r["pointing"] for r in items])),
                      "energy": float(np.mean([r["energy"] for r in items])),
                      "rank_corr": float(np.nanmean(corr)) if np.isfinite(corr).any() else float("nan"),
                      "constant_maps": int(sum(r.get("constant", 0) for r in items)),
                      "chance": float(np.mean([r["mask_share"] for r in items]))})
    return table


def format_table(table: Sequence[dict]) -> str:
    """The rows of ``summarize`` as a Markdown table (also readable as plain text); a missing value (NaN) is "–"."""
    def value(x):
        return "–" if x != x else f"{x:.3f}"

    lines = ["| method | prompt | annotated frames | pointing ↑ | energy ↑ | rank corr ↑ | constant maps | chance |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['prompt']} | {r['frames']} | {value(r['pointing'])} | {value(r['energy'])} | "
              f"{value(r['rank_corr'])} | {r['constant_maps']} | {value(r['chance'])} |" for r in table]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path) -> Path:
    """Rows (dicts) as CSV, columns in order of first appearance, blank where a row lacks one or its value is NaN
    (a missing value, never a number); written atomically (``files.atomic_path``); returns the path."""
    from ..files import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["empty"]
    clean = [{k: "" if isinstance(v, float) and v != v else v for k, v in row.items()} for row in rows]
    with atomic_path(path) as temp, open(temp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(clean)
    return path


def write_table(table: Sequence[dict], text: str, out, stem: str) -> List[Path]:
    """A summary table as ``{stem}.csv`` (``write_csv``) and its Markdown ``text`` as ``{stem}.md`` in folder
    ``out`` (created if missing), both written atomically; returns the two paths."""
    from ..files import write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [write_csv(table, out / f"{stem}.csv"), write_text(out / f"{stem}.md", text + os.linesep)]


def _segments(frames: Sequence[int], explained: Optional[Sequence[int]]) -> List[int]:
    """Positions i where the line must break before point i: the frames (sorted) are not neighbours among the
    explained frames (an explained frame between them has no annotation, or failed to decode)."""
    if explained is None:  # neighbours: the smallest step between annotated frames
        steps = np.diff(frames)
        step = steps[steps > 0].min() if (steps > 0).any() else 1
        return [i for i in range(1, len(frames)) if frames[i] - frames[i - 1] != step]
    position = {int(f): p for p, f in enumerate(sorted(set(int(f) for f in explained)))}
    return [i for i in range(1, len(frames))
            if frames[i] not in position or frames[i - 1] not in position
            or position[frames[i]] - position[frames[i - 1]] != 1]


def _with_gaps(x, y, breaks):
    """x, y with a NaN inserted before each break position (matplotlib draws NaN as a gap)."""
    x, y = list(map(float, x)), list(map(float, y))
    for i in reversed(breaks):
        x.insert(i, np.nan)
        y.insert(i, np.nan)
    return np.asarray(x), np.asarray(y)


def plot_metrics_over_time(rows: Sequence[dict], explained: Optional[Sequence[int]] = None):
    """One panel per metric (pointing, energy, rank correlation) against time (s), a line per method and prompt,
    drawn only between neighbouring explained frames: a frame without annotation, a frame not explained or not
    decoded (``explained``: every explained frame index; default: the annotated frames at their smallest step)
    and a missing value (NaN, e.g. the rank correlation of a constant map) leave a gap. The chance level is a
    labelled dashed line: the mask's share of the frame (what a random point or a uniform map scores) on the
    pointing and energy panels, 0 on the rank-correlation panel. Returns a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(METRICS), 1, figsize=(8, 7), sharex=True, layout="constrained")
    keys = sorted({(r["method"], r["prompt"]) for r in rows})
    chance_rows = sorted({r["frame"]: r for r in rows}.values(), key=lambda r: r["frame"])
    chance_breaks = _segments([r["frame"] for r in chance_rows], explained)
    for ax, metric, label in zip(axes, METRICS, ("pointing hit", "energy in mask", "rank corr. map–mask")):
        for method, prompt in keys:
            items = sorted((r for r in rows if r["method"] == method and r["prompt"] == prompt),
                           key=lambda r: r["frame"])
            x, y = _with_gaps([r["time_s"] for r in items], [r[metric] for r in items],
                              _segments([r["frame"] for r in items], explained))
            ax.plot(x, y, marker=".", ms=4, lw=1.2, label=f"{method} · {prompt}")
        if metric == "rank_corr":
            ax.axhline(0.0, color="grey", ls="--", lw=1.0, label="chance (no correlation)")
        else:
            x, y = _with_gaps([r["time_s"] for r in chance_rows], [r["mask_share"] for r in chance_rows],
                              chance_breaks)
            ax.plot(x, y, color="grey", ls="--", lw=1.0, label="chance (mask's share of the frame)")
        ax.set_ylabel(label)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles + axes[2].get_lines()[-1:], labels + [axes[2].get_lines()[-1].get_label()], fontsize=7,
               loc="outside lower center", ncol=3)
    axes[0].set_ylim(-0.1, 1.1)
    axes[1].set_ylim(-0.05, 1.05)
    axes[2].set_ylim(-1.05, 1.05)
    axes[-1].set_xlabel("time (s); gaps: frames not annotated, not explained, or without a value")
    return fig
