"""Failure galleries: the frames whose relevance falls least (and most) inside the annotation, to look at.

``extremes`` picks, from per-frame metric rows, the ``k`` with the lowest and the ``k`` with the highest energy
inside the mask (ties broken by video, then frame number, so the choice is reproducible). ``plot_gallery`` draws
them: each frame (uint8 RGB, re-decoded by the caller with gradeclip's frame-exact reader) with its relevance
overlay and the mask's outline, the video, frame number (0-based index) and true time in the caption.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

GALLERY_K = 6


def extremes(rows: Sequence[dict], k: int = GALLERY_K, key: str = "energy") -> Tuple[List[dict], List[dict]]:
    """``(lowest, highest)``: the ``k`` rows with the lowest ``key`` (ascending) and the ``k`` with the highest
    (descending); rows whose value is NaN are left out. Each row needs ``key``, ``video`` and ``frame``. With fewer
    than 2k rows the two lists share rows."""
    if k < 1:
        raise ValueError(f"gallery size k must be at least 1, got {k}")
    valid = [r for r in rows if math.isfinite(float(r[key]))]
    order = sorted(valid, key=lambda r: (float(r[key]), str(r["video"]), int(r["frame"])))
    highest = sorted(valid, key=lambda r: (-float(r[key]), str(r["video"]), int(r["frame"])))
    return order[:k], highest[:k]


def gallery_csv_rows(lowest: Sequence[dict], highest: Sequence[dict], **fields) -> List[dict]:
    """The frame list of a gallery: ``fields`` (e.g. group, value, method, prompt), ``kind`` (lowest/highest),
    ``rank`` (1 = most extreme), then the row's ``video``, ``frame``, ``time_s`` and ``energy``."""
    out = []
    for kind, items in (("lowest", lowest), ("highest", highest)):
        for rank, row in enumerate(items, start=1):
            out.append({**fields, "kind": kind, "rank": rank, "video": row["video"], "frame": int(row["frame"]),
                        "time_s": round(float(row["time_s"]), 6), "energy": round(float(row["energy"]), 6)})
    return out


def plot_gallery(lowest: Sequence[dict], highest: Sequence[dict], title: str, *, cmap: str = "jet",
                 alpha: float = 0.5):
    """Two rows of panels (lowest energy, then highest), one per item. Each item: ``image`` (H, W, 3) uint8 RGB,
    ``map`` (H, W) float in [0, 1], ``mask`` (H, W) bool, ``video``, ``frame`` (0-based index), ``time_s``,
    ``energy``. Returns a matplotlib Figure, 1.2 inches per panel (6 columns fit a paper's full width at 100 %,
captions at 7 pt)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import overlay

    columns = max(len(lowest), len(highest), 1)
    h, w = (lowest or highest)[0]["image"].shape[:2] if (lowest or highest) else (3, 4)
    panel = 1.2
    fig, axes = plt.subplots(2, columns, squeeze=False, layout="constrained",
                             figsize=(panel * columns + 0.3, 2 * (panel * h / w + 0.6) + 0.35))
    for r, (label, items) in enumerate((("lowest energy in mask", lowest), ("highest energy in mask", highest))):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(items):
                ax.axis("off")
                continue
            item = items[c]
            ax.imshow(overlay(item["image"], item["map"], cmap=cmap, alpha=alpha))
            if np.asarray(item["mask"]).any():
                ax.contour(np.asarray(item["mask"], np.float32), levels=[0.5], colors="white", linewidths=0.8)
            ax.set_xlabel(f"{_short(item['video'])}\nframe {int(item['frame'])} · {float(item['time_s']):.2f} s\n"
                          f"energy {float(item['energy']):.3f}", fontsize=7)
        axes[r, 0].set_ylabel(label.replace(" in ", "\nin "), fontsize=7)
    fig.suptitle(title, fontsize=8)
    return fig


def _short(text: str, width: int = 20) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]
