"""What one batch video's ``record.json`` says about its data: frames declared, decoded and damaged (hence its
status), constant maps, and what its masks covered.

Statuses: ``complete`` (every declared frame decoded), ``partial`` (fewer frames decoded than the container declares,
or frames damaged or undecodable; ``reason`` says which), ``failed`` (nothing usable; ``reason`` says why).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np


def declared_frames(path: str, info) -> Optional[int]:
    """The frame count the container of ``path`` declares: ``info.declared_frames`` (``video_info``), else the
    video stream's own count as PyAV reads it from the header; None when neither is known."""
    if getattr(info, "declared_frames", None) is not None:
        return int(info.declared_frames)
    try:
        import av

        with av.open(str(path)) as container:
            count = int(container.streams.video[0].frames)
    except Exception:  # a header PyAV cannot read declares nothing
        return None
    return count if count > 0 else None


def frame_status(declared: Optional[int], decoded: int, damaged: int) -> dict:
    """``{"status", "reason"}`` from the frame counts: ``partial`` when ``decoded < declared`` or ``damaged > 0``
    (the reason names each), else ``complete`` (reason "")."""
    reasons = []
    if declared is not None and decoded < declared:
        reasons.append(f"decoded {decoded} of {declared} declared frames")
    if damaged:
        reasons.append(f"{damaged} frame{'s' if damaged != 1 else ''} damaged or undecodable")
    return {"status": "partial" if reasons else "complete", "reason": "; ".join(reasons)}


def constant_maps(raw: np.ndarray) -> List[int]:
    """Per prompt, how many of the explained frames' maps (raw (N, K, h, w)) are constant (no point to score)."""
    from ..eval.metrics import is_constant

    return [int(n) for n in np.asarray(is_constant(raw), bool).sum(axis=0)]


def mask_record(scored: dict, explained: int) -> dict:
    """The record's mask fields from ``eval.annotations.score_frames``'s result over ``explained`` frames:
    ``annotated_frames``, ``missing_frames`` (frame indices without a mask), ``masks_resized`` (None or
    ``{"from": [H, W], "to": [H, W]}``), ``chance`` (mean share of the frame the masks cover: the pointing game's
    chance level; NaN-free, None without annotated frames)."""
    missing = [int(i) for i in scored["missing"]]
    resized = scored.get("resized")
    shares = {row["frame"]: row["mask_share"] for row in scored["rows"]}
    return {"annotated_frames": explained - len(missing), "missing_frames": missing,
            "masks_resized": None if not resized else {"from": list(resized[0]), "to": list(resized[1])},
            "chance": float(np.mean(list(shares.values()))) if shares else None}
