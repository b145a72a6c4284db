"""Run several explanation methods on the same frames and prompts, and score their faithfulness side by side."""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..explain import Explanation, explain
from .metrics import clip_scorer, deletion_insertion, is_constant
from ..backbones.base import backbone_of
from ..backbones.pixels import FramesLike, as_frames, to_pixels
from ..methods.registry import get_method, method_names

# Slow methods (many forwards per map) are left out of the default comparison; name them to include them.
SLOW_METHODS = ("scorecam",)


def compare_methods(model, frames: FramesLike, prompts: Union[str, Sequence[str]], *,
                    methods: Optional[Sequence[str]] = None, steps: int = 20, replacement: str = "blur",
                    score: str = "cosine", options: Optional[Dict[str, dict]] = None, progress: bool = False,
                    tokenizer=None, input: Optional[str] = None, scale: float = 1.0):
    """Explain ``frames`` x ``prompts`` with each method and measure deletion/insertion AUC and time per map.

    ``methods``: names (default: every registered method except ``SLOW_METHODS``). ``options``: per-method keyword
    options, e.g. ``{"rise": {"n_masks": 500}}``. ``progress`` shows a bar over the methods. Returns ``(rows, explanations)``: one dict per method with
    ``method``, ``deletion_auc`` and ``insertion_auc`` (means over frames and prompts whose map is not constant:
    NaN when all are), ``constant_maps`` (how many maps were constant) and ``seconds_per_map``, and the
    ``Explanation`` of each method by name. ``model``, ``tokenizer``, ``input`` and ``scale`` as for ``explain``
    (the deletion and insertion curves perturb the same model input the maps were made on).
    """
    names = list(methods) if methods is not None else [m for m in method_names() if m not in SLOW_METHODS]
    for name in names:
        get_method(name)  # unknown names fail before any work
    options = options or {}
    model = backbone_of(model, tokenizer)
    frames = as_frames(frames)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    pixels = to_pixels(model, frames, input=input, scale=scale)
    scorer = clip_scorer(model, model.encode_prompts(prompts), score=score)
    rows: List[dict] = []
    explanations: Dict[str, Explanation] = {}
    for name in tqdm(names, desc="methods", unit="method", disable=not progress):
        start = time.perf_counter()
        result = explain(model, frames, prompts, method=name, input=input, scale=scale, progress=False,
                         **options.get(name, {}))
        seconds = (time.perf_counter() - start) / (len(frames) * len(prompts))
        curves = deletion_insertion(scorer, pixels, torch.from_numpy(result.raw), steps=steps,
                                    replacement=replacement)
        explanations[name] = result
        rows.append({"method": name, "deletion_auc": _mean(curves["deletion_auc"]),
                     "insertion_auc": _mean(curves["insertion_auc"]),
                     "constant_maps": int(is_constant(result.raw).sum()), "seconds_per_map": seconds})
    return rows, explanations


def _mean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def format_comparison(rows: Sequence[dict]) -> str:
    """The rows of ``compare_methods`` as a plain-text table; a missing AUC (every map constant) is "–"."""
    def auc(x, width):
        return f"{'–':>{width}}" if x != x else f"{x:{width}.4f}"

    width = max(6, *(len(r["method"]) for r in rows))
    lines = [f"{'method':<{width}}  deletion AUC ↓  insertion AUC ↑  constant maps  s / map",
             f"{'-' * width}  --------------  ---------------  -------------  -------"]
    lines += [f"{r['method']:<{width}}  {auc(r['deletion_auc'], 14)}  {auc(r['insertion_auc'], 15)}  "
              f"{r.get('constant_maps', 0):13d}  {r['seconds_per_map']:7.3f}" for r in rows]
    return "\n".join(lines)
