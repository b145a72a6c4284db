"""What a clip-level explanation returns (``explain_clip``, ``explain_xclip``): one result type that mean pooling
(``clip_level.py``) and X-CLIP (``xclip_level.py``) both fill, kept apart from both so that neither imports the
other's module for it."""
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
    precision: str = "fp32"       # how the forward ran: fp32, bf16 or fp16 (gradeclip/precision.py)
