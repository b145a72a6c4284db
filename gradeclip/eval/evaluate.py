"""Explanation quality against ground truth, with the small CLIP trained on synthetic shape scenes.

For held-out scenes of one to three objects, each object's name ("a red circle") is a prompt; every method's map is
scored by the pointing game (its maximum inside the object's mask), the energy pointing game (share of the map
inside the mask), deletion and insertion AUC (``metrics.deletion_insertion``, CLIP's cosine to the prompt, blur),
and the time per map.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checks import positive_int
from ..explain import explain
from ..io.frames import data_dir
from .metrics import clip_scorer, deletion_insertion, energy_pointing_game, pointing_game
from ..backbones.base import backbone_of
from ..backbones.pixels import to_pixels
from ..methods.registry import get_method, method_names
from .shapes import random_scene

EVAL_SEEDS = 10_100_000  # held out from training (seeds below 10,000,000) and from the zero-shot check
# Cheaper settings for methods that take many forwards per map, so that the whole table runs in minutes on a CPU
EVAL_OPTIONS = {"rise": {"n_masks": 300}}


def _data_file(name: str, how: str) -> str:
    path = data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {how}, or set GRADECLIP_DATA to the repository's data/ folder")
    return str(path)


def shapes_model() -> str:
    """Path of the shipped shapes CLIP checkpoint (``data/shapes_clip.pt``)."""
    return _data_file("shapes_clip.pt", "run scripts/train_shapes_clip.py")


def shapes_video() -> str:
    """Path of the moving-shapes demo video (``data/shapes_demo.avi``)."""
    return _data_file("shapes_demo.avi", "run data/make_shapes_video.py")


def evaluate_shapes(model, *, n: int = 50, methods: Optional[Sequence[str]] = None, steps: int = 10,
                    options: Optional[Dict[str, dict]] = None, seed: int = EVAL_SEEDS, progress: bool = True
                    ) -> List[dict]:
    """One row per method: mean ``pointing``, ``energy``, ``deletion_auc``, ``insertion_auc`` over every object
    of ``n`` held-out scenes, and ``seconds_per_map``. ``methods``: default every registered method."""
    positive_int(n, "n", " (number of scenes)")
    names = list(methods) if methods is not None else method_names()
    for name in names:
        get_method(name)
    options = {**EVAL_OPTIONS, **(options or {})}
    model = backbone_of(model)
    held = [random_scene(seed + i, size=model.resolution) for i in range(n)]
    rows = []
    bar = tqdm(total=len(names) * n, desc=f"evaluate {n} shape scenes", unit="scene", disable=not progress)
    for name in names:
        bar.set_postfix_str(name)
        hits, energy, deletion, insertion, seconds, maps = [], [], [], [], 0.0, 0
        for scene in held:
            prompts = [f"a {o.name}" for o in scene.objects]
            start = time.perf_counter()
            result = explain(model, scene.image, prompts, method=name, progress=False, **options.get(name, {}))
            seconds += time.perf_counter() - start
            maps += len(prompts)
            hits += pointing_game(result.raw[0], scene.masks).tolist()  # the token grid: see pointing_point
            energy += energy_pointing_game(result.maps[0], scene.masks).tolist()
            curves = deletion_insertion(clip_scorer(model, model.encode_prompts(prompts)),
                                        to_pixels(model, scene.image), torch.from_numpy(result.raw), steps=steps)
            deletion += curves["deletion_auc"][0].tolist()
            insertion += curves["insertion_auc"][0].tolist()
            bar.update(1)
        rows.append({"method": name, "pointing": float(np.mean(hits)), "energy": float(np.mean(energy)),
                     "deletion_auc": float(np.mean(deletion)), "insertion_auc": float(np.mean(insertion)),
                     "seconds_per_map": seconds / maps, "maps": maps})
    bar.close()
    return rows


def pointing_chance(n: int = 50, *, size: int = 48, seed: int = EVAL_SEEDS) -> float:
    """The pointing game's chance level on the same scenes: the mean share of the image an object's mask covers
    (what a uniformly random point, or a constant map's energy, scores)."""
    return float(np.mean([m.mean() for i in range(n) for m in random_scene(seed + i, size=size).masks]))


def format_evaluation(rows: Sequence[dict]) -> str:
    """The rows of ``evaluate_shapes`` as a plain-text (and Markdown) table."""
    lines = ["| method | pointing ↑ | energy ↑ | deletion AUC ↓ | insertion AUC ↑ | ms / map |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['pointing']:.3f} | {r['energy']:.3f} | {r['deletion_auc']:.4f} | "
              f"{r['insertion_auc']:.4f} | {1000 * r['seconds_per_map']:.1f} |" for r in rows]
    return "\n".join(lines)
