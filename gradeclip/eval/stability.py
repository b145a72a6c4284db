"""Temporal stability of an explanation over a video.

For each pair of consecutive explained frames: the rank correlation (Spearman, ``metrics.rank_correlation``) of
their maps for each prompt, beside the frames' own similarity (cosine of their image embeddings). A map that
flickers while the frame barely changes shows as a low map correlation next to a frame similarity near 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .metrics import rank_correlation


@dataclass
class Stability:
    """``pairs``: (F - 1, 2) frame indices of each consecutive pair; ``map_corr``: (F - 1, K) rank correlation of
    their maps in [-1, 1] (NaN where a map is constant); ``frame_similarity``: (F - 1,) cosine of the frames' image
    embeddings (None when the result does not carry them); ``times``: (F - 1,) seconds of the later frame."""

    prompts: list
    pairs: np.ndarray
    map_corr: np.ndarray
    frame_similarity: Optional[np.ndarray]
    times: np.ndarray

    def mean(self) -> np.ndarray:
        """(K,) mean map correlation per prompt over the video, NaN-ignoring (NaN when all are NaN)."""
        out = np.full(self.map_corr.shape[1], np.nan)
        for j in range(len(out)):
            finite = self.map_corr[:, j][np.isfinite(self.map_corr[:, j])]
            if finite.size:
                out[j] = finite.mean()
        return out

    def as_json(self) -> dict:
        """A JSON-ready record (NaN as null), as written into the video sidecar."""
        def clean(values):
            return [None if not np.isfinite(v) else round(float(v), 6) for v in np.ravel(values)]

        return {
            "definition": "Spearman rank correlation of the raw maps of consecutive explained frames, per prompt; "
                          "frame_similarity: cosine of the two frames' image embeddings",
            "pairs": self.pairs.tolist(),
            "map_rank_correlation": {p: clean(self.map_corr[:, j]) for j, p in enumerate(self.prompts)},
            "mean_map_rank_correlation": dict(zip(self.prompts, clean(self.mean()))),
            "frame_similarity": None if self.frame_similarity is None else clean(self.frame_similarity),
        }


def temporal_stability(result) -> Stability:
    """Stability of a ``VideoExplanation`` (at least 2 explained frames)."""
    if len(result.indices) < 2:
        raise ValueError(f"temporal stability needs at least 2 explained frames, got {len(result.indices)}")
    raw = np.asarray(result.raw, dtype=np.float64)  # (F, K, h, w)
    corr = rank_correlation(raw[1:], raw[:-1])  # (F - 1, K)
    similarity = getattr(result, "frame_similarity", None)
    return Stability(prompts=list(result.prompts), pairs=np.stack([result.indices[:-1], result.indices[1:]], 1),
                     map_corr=corr, frame_similarity=None if similarity is None else np.asarray(similarity),
                     times=np.asarray(result.times[1:], dtype=np.float64))


def plot_stability(ax, stability: Stability) -> None:
    """Draw the map correlation of each prompt and the frame similarity against time on a matplotlib Axes."""
    for j, prompt in enumerate(stability.prompts):
        ax.plot(stability.times, stability.map_corr[:, j], lw=1.2, label=f"maps: {prompt}")
    if stability.frame_similarity is not None:
        ax.plot(stability.times, stability.frame_similarity, color="black", lw=1.0, ls="--",
                label="frames (embedding cosine)")
    ax.set_ylim(min(-0.05, float(np.nanmin(stability.map_corr, initial=0))), 1.05)
    ax.set_ylabel("consecutive\nrank corr.")
    ax.set_title("temporal stability: consecutive maps vs frames (gaps: a constant map, correlation undefined)",
                 fontsize=8)
    ax.legend(fontsize=7, loc="lower left", ncol=2)
