"""Saving to disk: a figure as PNG/PDF, an explanation's raw maps (.npy) and scores (.json), each file written
under a temporary name and renamed when complete (``gradeclip/files.py``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..explain import Explanation
from ..files import atomic_path, write_json

DEFAULT_OUT = "outputs"


def safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    if not safe:
        raise ValueError(f"cannot make a file name from {name!r}")
    return safe


def save_figure(fig, name: str, out_dir=DEFAULT_OUT, *, dpi: int = 150, formats: Sequence[str] = ("png", "pdf")
                ) -> List[Path]:
    """Save ``fig`` as ``out_dir/name.<format>`` for each format (PNG and PDF by default); returns the paths. Each file
    is written under a temporary name and renamed when complete (an interrupted save leaves no file of that name)."""
    if dpi <= 0:
        raise ValueError(f"dpi must be positive, got {dpi}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{safe_name(name)}.{fmt}"
        with atomic_path(path) as temp:
            fig.savefig(temp, dpi=dpi, bbox_inches="tight", format=fmt)
        paths.append(path)
    return paths


def save_explanation(result: Explanation, name: str, out_dir=DEFAULT_OUT, *, meta: Optional[dict] = None
                     ) -> List[Path]:
    """Write the raw token-grid maps as ``name_maps.npy`` (N, K, h, w) float32 and the scores as ``name_scores.json``
    (prompts, method, cosine, probs, map shapes, library and model, and any ``meta`` such as the model's name, video
    and frame indices). Both are written under temporary names and renamed when complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_name(name)
    maps_path, scores_path = out / f"{stem}_maps.npy", out / f"{stem}_scores.json"
    with atomic_path(maps_path) as temp:
        np.save(temp, result.raw.astype(np.float32))
    record = {
        "method": result.method,
        "prompts": result.prompts,
        "cosine": np.round(result.cosine, 6).tolist(),
        "probs": np.round(result.probs, 6).tolist(),
        "raw_maps": {"file": maps_path.name, "shape": list(result.raw.shape),
                     "axes": "frame, prompt, grid row, grid column"},
        "frame_size": list(result.frames.shape[1:3]),
        "library": result.library, "model": result.model,  # what explained it; meta may name the model better
        "precision": getattr(result, "precision", "fp32"),  # the forward's precision (gradeclip/precision.py)
        **({"input": result.view.as_json()} if getattr(result, "view", None) is not None else {}),
        **(meta or {}),
    }
    write_json(scores_path, record)
    return [maps_path, scores_path]
