"""Figures: heatmap overlays, the explanation figure, word importance, frame strips (saving them: ``saving.py``)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from PIL import Image

from ..explain import Explanation
# How papers write the methods' names (code names are registry keys)
DISPLAY_NAMES = {
    "grad_eclip": "Grad-ECLIP", "grad_eclip_no_spatial": "Grad-ECLIP (no spatial weight)", "grad_cam": "Grad-CAM",
    "self_attention": "Self-attention", "rollout": "Attention rollout", "game": "GAME", "maskclip": "MaskCLIP",
    "rise": "RISE", "gradcam_pp": "Grad-CAM++", "xgradcam": "XGrad-CAM", "layercam": "LayerCAM",
    "eigencam": "EigenCAM", "scorecam": "Score-CAM", "legrad": "LeGrad", "clip_surgery": "CLIP Surgery", "gem": "GEM",
}
ZERO_LABEL = "all-zero map\n(no relevance anywhere)"
CONSTANT_LABEL = "constant map\n(the same value everywhere)"


def display_name(method: str) -> str:
    """The name a paper uses for ``method`` (e.g. ``"gradcam_pp"`` -> ``"Grad-CAM++"``); unknown names unchanged."""
    return DISPLAY_NAMES.get(method, method)


def _relevance_label(method: str) -> str:
    return f"{display_name(method)} relevance\n(each map scaled to 0–1)"


def mark_constant(ax, frame, label: str) -> None:
    """Show a map that has one value everywhere as such (the colour map would paint it as "low relevance")."""
    ax.imshow(frame, alpha=0.35)
    ax.text(0.5, 0.5, label, transform=ax.transAxes, ha="center", va="center", fontsize=8,
            bbox=dict(facecolor="white", edgecolor="0.3", alpha=0.9, pad=2))


def overlay(frame: np.ndarray, heatmap: np.ndarray, *, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend a heatmap onto a frame.

    ``frame``: uint8 RGB (H, W, 3). ``heatmap``: float (h, w) in [0, 1] (values outside are clipped), resized
    bilinearly to the frame when its size differs. ``alpha``: weight of the colour map, 0..1.
    Returns uint8 RGB (H, W, 3).
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"frame must be uint8 RGB (H, W, 3), got {frame.dtype} {frame.shape}")
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w), got shape {heatmap.shape}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if heatmap.shape != frame.shape[:2]:
        heatmap = np.asarray(Image.fromarray(heatmap).resize(frame.shape[1::-1], Image.BILINEAR))
    colour = matplotlib.colormaps[cmap](np.clip(np.nan_to_num(heatmap), 0, 1))[..., :3] * 255
    return np.clip(frame * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)


def _title(prompt: str, width: int = 28) -> str:
    return prompt if len(prompt) <= width else prompt[: width - 1] + "…"


def plot_explanation(result: Explanation, index: int = 0, *, cmap: str = "jet", alpha: float = 0.5,
                     title: Optional[str] = None):
    """Figure: frame ``index`` of ``result`` beside one overlay per prompt, cosine and probability in each title,
    and a colorbar naming the method; under the frame, the model and its library. A map that is zero everywhere, or
    has one value everywhere, is marked as such (not painted as "low relevance"). Returns a Figure."""
    n, k = result.maps.shape[:2]
    if not -n <= index < n:
        raise IndexError(f"frame index {index} out of range for {n} explained frame(s)")
    frame = result.frames[index]
    fig, axes = plt.subplots(1, k + 1, figsize=(3.2 * (k + 1), 3.2 * frame.shape[0] / frame.shape[1] + 0.9),
                             squeeze=False, layout="constrained")
    axes = axes[0]
    axes[0].imshow(frame)
    axes[0].set_title("frame", fontsize=10)
    if result.library:  # which model explained it, for a figure that travels without its JSON
        axes[0].set_title(f"{Path(result.model).name or 'model'} · {result.library}", fontsize=7, loc="left",
                          y=-0.02, va="top", color="0.35")
    caption = _input_caption(result)
    if caption:  # and which input it was fed, on the line below
        axes[0].annotate(caption, xy=(0, -0.02), xycoords="axes fraction", xytext=(0, -9), textcoords="offset points",
                         fontsize=7, va="top", color="0.35")
    for j, ax in enumerate(axes[1:]):
        label = constant_label(result, index, j)
        if label:
            mark_constant(ax, frame, label)
        else:
            ax.imshow(overlay(frame, result.maps[index, j], cmap=cmap, alpha=alpha))
        _mark_unseen(ax, getattr(result, "seen", None))
        ax.set_title(f"{_title(result.prompts[j])}\ncos {result.cosine[index, j]:.3f} · "
                     f"p {result.probs[index, j]:.2f}", fontsize=10)
    for ax in axes:
        ax.axis("off")
    mappable = matplotlib.cm.ScalarMappable(norm=mcolors.Normalize(0, 1), cmap=cmap)
    fig.colorbar(mappable, ax=list(axes), shrink=0.8, label=_relevance_label(result.method))
    if title:
        fig.suptitle(title)
    return fig


def _input_caption(result) -> str:
    """``input library 224×224 px; hatched: not seen by the model`` (empty without a recorded input)."""
    view = getattr(result, "view", None)
    if view is None:
        return ""
    seen = getattr(result, "seen", None)
    return view.label().split(", sees")[0] + ("; hatched: not seen by the model" if seen is not None
                                              and not seen.all() else "")


def _mark_unseen(ax, seen) -> None:
    """Grey and hatch the part of the frame the model did not see (``seen`` (H, W) bool; nothing when all seen)."""
    if seen is None or seen.all():
        return
    unseen = ~seen
    ax.imshow(np.where(unseen[..., None], [0.5, 0.5, 0.5, 0.75], [0, 0, 0, 0]))
    ax.contourf(unseen.astype(float), levels=[0.5, 1.5], colors="none", hatches=["///"])




def is_constant_map(raw) -> bool:
    """True for a map (any shape) with one value everywhere, by the rule of ``explain.normalize_maps``: a range
    below 1e-6 of the map's magnitude (rounding noise). Such a map prefers no location, whatever its value."""
    raw = np.asarray(raw, dtype=np.float64)
    low, high = raw.min(), raw.max()
    return not high - low > 1e-6 * max(abs(low), abs(high))


def constant_label(result: Explanation, index: int, prompt: int) -> str:
    """The label of a map that has one value everywhere: ``ZERO_LABEL`` if that value is 0, else ``CONSTANT_LABEL``;
    an empty string for a map that varies (below zero too)."""
    raw = np.asarray(result.raw[index, prompt])
    if not is_constant_map(raw):
        return ""
    return ZERO_LABEL if not np.any(raw) else CONSTANT_LABEL


def plot_method_grid(explanations, index: int = 0, *, cmap: str = "jet", alpha: float = 0.5, columns: int = 4,
                     width: float = 7.0):
    """Paper figure of one frame's overlays: for each prompt, the frame and then one panel per method, wrapped into
    rows of ``columns`` panels; the prompt is written beside each of its rows, panels are titled with the methods'
    display names ("Grad-ECLIP", "Grad-CAM++"), one colorbar is shared by all, and an all-zero or constant map is
    marked.
    ``explanations``: dict name -> ``Explanation`` of the same frames and prompts (as ``compare_methods`` returns).
    ``width``: figure width in inches (7 fits a two-column paper's full width). Returns a Figure."""
    names = list(explanations)
    if not names:
        raise ValueError("no explanations to plot")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be an int >= 1, got {columns!r}")
    first = explanations[names[0]]
    frame, prompts = first.frames[index], first.prompts
    panels = [None] + names  # None: the frame itself
    columns = min(columns, len(panels))
    rows_per_prompt = -(-len(panels) // columns)
    side = width / (columns + 0.35)  # room for the row labels and the colorbar
    aspect = frame.shape[0] / frame.shape[1]
    fig, axes = plt.subplots(len(prompts) * rows_per_prompt, columns, squeeze=False, layout="constrained",
                             figsize=(width, side * aspect * len(prompts) * rows_per_prompt + 0.3 * len(prompts)))
    for p, prompt in enumerate(prompts):
        for slot in range(rows_per_prompt * columns):
            ax = axes[p * rows_per_prompt + slot // columns, slot % columns]
            ax.set_xticks([])
            ax.set_yticks([])
            if slot >= len(panels):
                ax.axis("off")
                continue
            name = panels[slot]
            if name is None:
                ax.imshow(frame)
                ax.set_title("frame", fontsize=8)
            elif constant_label(explanations[name], index, p):
                mark_constant(ax, frame, constant_label(explanations[name], index, p))
            else:
                ax.imshow(overlay(frame, explanations[name].maps[index, p], cmap=cmap, alpha=alpha))
            if name is not None:
                ax.set_title(display_name(name), fontsize=8)
            if slot % columns == 0:
                ax.set_ylabel(_title(prompt, 26), fontsize=8, fontweight="bold")
            for spine in ax.spines.values():
                spine.set_visible(False)
    mappable = matplotlib.cm.ScalarMappable(norm=mcolors.Normalize(0, 1), cmap=cmap)
    fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.6, aspect=30,
                 label="relevance (each map scaled to 0–1)").ax.tick_params(labelsize=7)
    return fig


def plot_scores(prompts: Sequence[str], cosine: np.ndarray, probs: np.ndarray, *, kind: Optional[str] = None):
    """Bar chart of one frame's cosine and probability per prompt (``cosine``, ``probs``: (K,)). ``kind``: how the
    probabilities were made, written on the axis; by default "softmax over prompts" when they sum to 1 (CLIP) and
    "sigmoid, each prompt on its own" otherwise (SigLIP), never a softmax label on sigmoid scores. Returns a
    Figure."""
    cosine, probs = np.asarray(cosine).ravel(), np.asarray(probs).ravel()
    if kind is None:
        kind = "softmax over prompts" if abs(probs.sum() - 1) < 1e-3 else "sigmoid, each prompt on its own"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.5 * len(prompts) + 1.5), layout="constrained")
    labels = [_title(p, 40) for p in prompts]
    left.barh(labels, cosine, color="tab:blue")
    left.set_xlabel("cosine similarity")
    right.barh(labels, probs, color="tab:orange")
    right.set_xlabel(f"probability ({kind})")
    right.set_xlim(0, 1)
    right.set_yticks([])
    left.invert_yaxis()
    right.invert_yaxis()
    return fig


def plot_word_importance(pairs: Sequence[Tuple[str, float]], *, cmap: str = "Reds", title: Optional[str] = None):
    """Tokens of a prompt shaded by their weight (``pairs`` from ``word_importance``). Returns a Figure."""
    pairs = list(pairs)
    fig, ax = plt.subplots(figsize=(max(3.0, 0.17 * sum(len(w) + 2 for w, _ in pairs)), 1.0))
    ax.axis("off")
    top = max((wt for _, wt in pairs), default=0) or 1.0
    colours = matplotlib.colormaps[cmap]
    renderer = fig.canvas.get_renderer()
    x = 0.0
    for word, weight in pairs:  # words laid out left to right, each advancing by its rendered width
        text = ax.text(x, 0.4, word, fontsize=13, va="center", transform=ax.transAxes,
                       bbox=dict(facecolor=colours(0.85 * weight / top), edgecolor="none", pad=3))
        x += (text.get_window_extent(renderer).width + 14) / ax.bbox.width  # + 14 px between boxes
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    return fig


def plot_frame_strip(frames: np.ndarray, labels: Optional[Iterable[str]] = None):
    """Frames (N, H, W, 3) uint8 RGB in one row, each with its label (e.g. index and time). Returns a Figure."""
    frames = np.asarray(frames)
    labels = list(labels) if labels is not None else [str(i) for i in range(len(frames))]
    aspect = frames.shape[1] / frames.shape[2]
    fig, axes = plt.subplots(1, len(frames), figsize=(2.2 * len(frames), 2.2 * aspect + 0.4), squeeze=False,
                             layout="constrained")
    for ax, frame, label in zip(axes[0], frames, labels):
        ax.imshow(frame)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    return fig


def format_scores(prompts: Sequence[str], cosine, probs) -> str:
    """A plain-text table of one frame's scores: prompt, cosine and probability per row."""
    width = max(6, *(len(p) for p in prompts))
    lines = [f"{'prompt':<{width}}  cosine    prob", f"{'-' * width}  ------  ------"]
    lines += [f"{p:<{width}}  {c:6.3f}  {q:6.3f}" for p, c, q in zip(prompts, np.ravel(cosine), np.ravel(probs))]
    return "\n".join(lines)
