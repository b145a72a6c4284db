"""Video-level explanations: which frames, and where in them, made a whole clip match a prompt.

(Minimal version written by the X-CLIP part of issue 17 so that it can land on its own: the dataclass is the shared
interface; ``explain_clip`` here only dispatches X-CLIP models. The mean-pooling part replaces this module.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np


@dataclass
class ClipExplanation:
    """What explain_clip returns for T frames and K prompts of one clip (or window)."""
    cosine: np.ndarray            # (K,) float32 video-level score, exactly as the model defines it
    probs: np.ndarray             # (K,) float32, the library's own probabilities
    maps: np.ndarray              # (T, K, H, W) float32 in [0, 1], ONE scale per prompt shared over its T frames
    raw: np.ndarray               # (T, K, h, w) float32 token-grid relevance, not normalised
    frame_importance: np.ndarray  # (T, K) each frame's additive share of the explained video score
    relevance_mass: np.ndarray    # (T, K) the method's relevance summed per frame (raw, ReLU'd), beside it
    indices: np.ndarray           # (T,) frame indices in the video (0..T-1 for in-memory frames)
    times: np.ndarray             # (T,) true presentation times in seconds (NaN for in-memory frames)
    prompts: List[str]
    method: str
    pooling: str                  # "mean" or "xclip"
    library: str = ""
    model: str = ""
    input: str = ""               # input mode and size fed to the model, e.g. "native 320x240"
    windows: List[dict] = field(default_factory=list)  # X-CLIP: [{"start": i, "stop": j, "cosine": [K], "probs": [K]}]
    frames: Optional[np.ndarray] = None  # (T, H, W, 3) uint8 RGB when the caller passed frames in memory


def _is_xclip(model) -> bool:
    target = getattr(model, "model", model)
    return any(c.__name__ == "XCLIPModel" for c in type(target).__mro__)


def explain_clip(model, frames, prompts, *, pooling="mean", method="grad_eclip", tokenizer=None, input=None,
                 scale=1.0, batch_size=16, progress=True, **options) -> ClipExplanation:
    """Explain the video-level score of T frames (T, H, W, 3) uint8 RGB for K prompts (see ``ClipExplanation``).
    An X-CLIP model (or ``pooling="xclip"``) goes to ``gradeclip.xclip_level.explain_xclip``."""
    if _is_xclip(model) or pooling == "xclip":
        from .xclip_level import explain_xclip

        return explain_xclip(model, frames, prompts, method=method, tokenizer=tokenizer, progress=progress,
                             input=input, scale=scale, batch_size=batch_size, **options)
    raise NotImplementedError(f"pooling {pooling!r} lands with the mean-pooling part of issue 17; this build "
                              f"explains X-CLIP models only")
