"""A video's explanation as files: the raw maps (``.npz``, float16) and a JSON sidecar that says what they are.

Written complete or not at all (``gradeclip.files.atomic_path``). The sidecar also holds the temporal stability of
the maps (``eval.stability``), computed here, by the exporter that asks for it, not by the pipeline (``video``).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from ..files import atomic_path, write_json


def save_video_maps(result, out_dir, name: Optional[str] = None) -> List[Path]:
    """For a ``video.VideoExplanation``: write ``name_maps.npz`` (raw maps float16, cosine, probs, indices, times)
    and a JSON sidecar ``name_maps.json`` (library and model, prompts, method and options, preprocessing,
    normalisation, frame indices, timestamps, and with two frames or more the maps' temporal stability) into
    ``out_dir``; ``name`` defaults to ``{video stem}_{method}``. Returns the two paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = name or f"{Path(result.video).stem}_{result.method}"
    npz, sidecar = out / f"{stem}_maps.npz", out / f"{stem}_maps.json"
    with atomic_path(npz) as temp:  # complete or absent under its final name (gradeclip.files)
        np.savez_compressed(temp, maps=result.raw.astype(np.float16), cosine=result.cosine, probs=result.probs,
                            indices=result.indices, times=result.times)
    record = {
        "video": result.video, "library": result.library, "model": result.model, "method": result.method, "options": result.options,
        "precision": result.precision,
        "prompts": result.prompts,
        "maps": {"file": npz.name, "key": "maps", "dtype": "float16", "shape": list(result.raw.shape),
                 "axes": "frame, prompt, grid row, grid column", "values": "raw, not normalised"},
        "preprocessing": {"frame_size_hw": list(result.frame_size), "input_size_hw": list(result.input_size),
                          "input_mode": result.view.mode if result.view is not None else "native",
                          "resize": (result.view.rule if result.view is not None else
                                     "bicubic to the nearest multiple of the patch size, no crop")
                          + " (frames above the decoding bound reduced by area interpolation first)",
                          "normalisation": "the model's own mean and std",
                          **({"input": result.view.as_json()} if result.view is not None else {})},
        "display_normalisation": "min-max per prompt over the video ('shared') unless the figure says 'per frame'",
        "fps": result.fps, "fps_note": "average rate; timestamps_s are the frames' presentation times",
        "frame_indices": result.indices.tolist(),
        "timestamps_s": [round(float(t), 6) for t in result.times],
        "failed_frames": [{"index": i, "reason": r} for i, r in result.failed],
    }
    if len(result.indices) > 1:
        from ..eval.stability import temporal_stability

        record["temporal_stability"] = temporal_stability(result).as_json()
    write_json(sidecar, record)
    return [npz, sidecar]
