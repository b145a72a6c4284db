"""Figures of a video-level (clip) explanation: per prompt, the frame strip, each frame's overlay on the clip's
shared scale, and the frame-importance curve against the frames' true times; and the picture of one export frame.
"""
from __future__ import annotations

from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from .figures import display_name, overlay
from .video_export import compose_frame


def time_axis(result):
    """``(x values (T,), axis label)`` of a ``ClipExplanation``: true times in seconds where known, else the frame
    indices."""
    times = np.asarray(result.times, dtype=float)
    if len(times) and np.isfinite(times).all():
        return times, "time (s)"
    return np.asarray(result.indices), "frame index"


def plot_clip(result, prompt: int = 0, *, frames: Optional[np.ndarray] = None, cmap: str = "jet",
              alpha: float = 0.5):
    """One prompt of a ``ClipExplanation``: the T frames (uint8 RGB (T, H, W, 3): ``frames`` or
    ``result.frames``), their overlays on one colour scale shared by the T frames, and below them each frame's
    additive share of the clip cosine (``frame_importance``) with the method's relevance mass per frame (right
    axis), against the frames' true times; for X-CLIP over several windows, each window's span and own cosine
    above the curve. Returns a matplotlib Figure."""
    frames = result.frames if frames is None else frames
    if frames is None:
        raise ValueError("no frames to draw: pass frames= (uint8 RGB (T, H, W, 3)), e.g. read_frames(video, "
                         "result.indices)")
    count = len(frames)
    if not 0 <= prompt < len(result.prompts):
        raise IndexError(f"prompt {prompt} out of range: the explanation has {len(result.prompts)} prompts")
    aspect = frames.shape[1] / frames.shape[2]
    width = max(6.0, 1.6 * count)
    fig = plt.figure(figsize=(width, 2 * (width / count) * aspect + 2.6), layout="constrained")
    grid = fig.add_gridspec(3, count, height_ratios=[(width / count) * aspect] * 2 + [2.2])
    x, label = time_axis(result)
    overlays = []
    for t in range(count):
        top, mid = fig.add_subplot(grid[0, t]), fig.add_subplot(grid[1, t])
        top.imshow(frames[t])
        top.set_title(f"{result.indices[t]}" + (f" · {x[t]:.2f} s" if label.startswith("time") else ""), fontsize=8)
        mid.imshow(overlay(frames[t], result.maps[t, prompt], cmap=cmap, alpha=alpha))
        for ax in (top, mid):
            ax.axis("off")
        overlays.append(mid)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=cmap), ax=overlays, fraction=0.02, pad=0.01)
    bar.set_label("relevance\n(1 = clip's peak)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    curve = fig.add_subplot(grid[2, :])
    importance = result.frame_importance[:, prompt]
    curve.axhline(0, color="0.6", linewidth=0.8)
    curve.plot(x, importance, "o-", color="tab:red", label="share of the clip cosine")
    curve.set_xlabel(label)
    curve.set_ylabel("frame importance")
    mass = curve.twinx()
    mass.plot(x, result.relevance_mass[:, prompt], "s--", color="tab:blue", alpha=0.6, markersize=3,
              label=f"{display_name(result.method)} relevance mass")
    mass.set_ylabel("relevance mass", color="tab:blue")
    _mark_windows(curve, result, x, prompt)
    lines = curve.get_lines()[1:] + mass.get_lines()
    curve.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="best")
    fig.suptitle(f"“{result.prompts[prompt]}” · clip cosine {result.cosine[prompt]:.3f}, p "
                 f"{result.probs[prompt]:.2f} · {result.pooling} pooling · {display_name(result.method)}"
                 f"\n{result.model} ({result.library}) · input {result.input} · one colour scale per prompt over "
                 f"the {count} frames", fontsize=9)
    return fig


def _mark_windows(axis, result, x: np.ndarray, prompt: int) -> None:
    """X-CLIP over several windows: shade each window's span of sampled frames on the curve's time axis and label
    it with that window's own cosine for ``prompt`` (windows may overlap: the last one ends at the last frame)."""
    if len(result.windows) < 2:
        return
    for n, window in enumerate(result.windows):
        first, last = x[window["start"]], x[window["stop"] - 1]
        axis.axvspan(first, last, ymin=0.9 - 0.08 * (n % 2), ymax=0.98 - 0.08 * (n % 2), color="tab:green",
                     alpha=0.25, linewidth=0)
        axis.text((first + last) / 2, 0.94 - 0.08 * (n % 2), f"window cos {window['cosine'][prompt]:.3f}",
                  transform=axis.get_xaxis_transform(), ha="center", va="center", fontsize=7, color="darkgreen")


def clip_picture(result, t: int, frame: np.ndarray, *, cmap: str = "jet", alpha: float = 0.5,
                 panel_height: int = 360) -> np.ndarray:
    """Export frame ``t`` of a ``ClipExplanation``: the frame beside its overlay for every prompt, on the clip's
    shared scale, headed with the clip's cosine and probability. Returns uint8 RGB (H', W', 3)."""
    time_s = float(result.times[t]) if np.isfinite(result.times[t]) else float("nan")
    return compose_frame(frame, result.maps[t], result.prompts, result.cosine, result.probs, time_s,
                         int(result.indices[t]), scale_label="one per prompt over the clip", cmap=cmap, alpha=alpha,
                         method=result.method, panel_height=min(panel_height, frame.shape[0]))
