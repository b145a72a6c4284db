"""Frame-coordinate mean relevance maps of a batch run's groups: where in the frame the relevance falls on average.

Each video's ``mean_map.npy`` (K, 64, 64: its maps min-max normalised per frame, averaged over its explained frames,
on a grid over the frame, x and y from 0 to 1) is averaged over a group's videos (each video counts once). The
figure draws them at the frames' aspect (the median height/width of the group's frames), one colour scale per
prompt (a prompt's artefacts do not wash out the others), with n videos and frames in each panel's title.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np


def group_mean_maps(out: Path, members: Dict[str, List[str]], records: Dict[str, dict]) -> Dict[str, dict]:
    """value -> ``{"maps": (K, 64, 64) float mean of the videos' mean_map.npy, "videos": n, "frames": explained
    frames in all, "aspect": median frame height / width}`` for the video ids of each value (``records``: id ->
    record.json)."""
    means = {}
    for value, ids in members.items():
        maps = [np.load(Path(out) / "videos" / i / "mean_map.npy") for i in ids]
        sizes = [(records[i].get("input") or {}).get("frame_size_hw") for i in ids]
        aspects = [h / w for h, w in (s for s in sizes if s)] or [1.0]
        means[value] = {"maps": np.mean(maps, axis=0), "videos": len(ids),
                        "frames": sum(int(records[i].get("frames") or 0) for i in ids),
                        "aspect": float(np.median(aspects))}
    return means


def plot_group_maps(means: Dict[str, dict], prompts: List[str], column: str):
    """A row per group value, a column per prompt: the mean map over the frame (x, y normalised) at the frames'
    aspect, each prompt's column on its own colour scale (0 to its largest value), n in every title. Returns a
    matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = list(means)
    aspect = float(np.median([m["aspect"] for m in means.values()]))
    tops = [max(float(m["maps"][j].max()) for m in means.values()) or 1.0 for j in range(len(prompts))]
    fig, axes = plt.subplots(len(values), len(prompts), squeeze=False, layout="constrained",
                             figsize=(2.4 * len(prompts) + 0.6, (2.4 * aspect + 0.6) * len(values) + 0.9))
    images = [None] * len(prompts)
    for r, value in enumerate(values):
        m = means[value]
        for c, prompt in enumerate(prompts):
            ax = axes[r, c]
            images[c] = ax.imshow(m["maps"][c], extent=(0, 1, 1, 0), cmap="jet", vmin=0, vmax=tops[c])
            ax.set_aspect(m["aspect"])
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            ax.tick_params(labelsize=6)
            ax.set_title(f"{column} = {value} · {_short(prompt)}\n(n={m['videos']} videos, {m['frames']} frames)",
                         fontsize=7)
    for c, image in enumerate(images):
        if image is not None:
            bar = fig.colorbar(image, ax=axes[:, c], shrink=0.8, location="bottom", aspect=15)
            bar.ax.tick_params(labelsize=6)
            bar.set_label("mean relevance (per-frame min-max)", fontsize=6)
    fig.suptitle(f"mean relevance map per {column} (x, y: normalised frame coordinates)", fontsize=8)
    return fig


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"
