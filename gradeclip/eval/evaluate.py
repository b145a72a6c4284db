"""Explanation quality against ground truth, with the small CLIP trained on synthetic shape scenes.

For held-out scenes of one to three objects, each object's name ("a red circle") is a prompt; every method's map is
scored by the pointing game (its maximum inside the object's mask), the energy pointing game (share of the map
inside the mask; a constant map is a miss with energy 0, and such maps are counted), deletion and insertion AUC (``metrics.deletion_insertion``, CLIP's cosine to the prompt, blur),
and the time per map.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checks import positive_int
from ..explain import explain
from ..io.frames import data_dir
from .metrics import clip_scorer, deletion_insertion, energy_pointing_game, is_constant, pointing_game
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


def held_out_scenes(n: int, *, size: int = 48, seed: int = EVAL_SEEDS) -> List:
    """The ``n`` held-out scenes of the benchmark (seeds ``seed``, ``seed + 1``, ...), each ``size`` pixels square."""
    return [random_scene(seed + i, size=size) for i in range(n)]


def score_scene(model, scene, names: Sequence[str], *, steps: int = 10, options: Optional[Dict[str, dict]] = None
                ) -> Dict[str, dict]:
    """Every method's scores on one scene, one value per object (prompt "a {colour} {shape}"): by method name,
    lists ``pointing`` (0/1), ``energy`` in [0, 1], ``deletion_auc``, ``insertion_auc``, ``constant`` (0/1: the
    raw map is constant, ``metrics.is_constant``), and ``seconds`` (float, the method's explain time)."""
    options = {**EVAL_OPTIONS, **(options or {})}
    model = backbone_of(model)
    prompts = [f"a {o.name}" for o in scene.objects]
    scorer = clip_scorer(model, model.encode_prompts(prompts))
    pixels = to_pixels(model, scene.image)
    record = {}
    for name in names:
        start = time.perf_counter()
        result = explain(model, scene.image, prompts, method=name, progress=False, **options.get(name, {}))
        seconds = time.perf_counter() - start
        curves = deletion_insertion(scorer, pixels, torch.from_numpy(result.raw), steps=steps)
        record[name] = {
            "pointing": pointing_game(result.raw[0], scene.masks).astype(int).tolist(),  # token grid: pointing_point
            "energy": energy_pointing_game(result.maps[0], scene.masks).tolist(),
            "deletion_auc": _missing_as_none(curves["deletion_auc"][0]),
            "insertion_auc": _missing_as_none(curves["insertion_auc"][0]),
            "constant": is_constant(result.raw[0]).astype(int).tolist(), "seconds": seconds}
    return record


def _missing_as_none(values) -> list:
    return [None if not np.isfinite(v) else float(v) for v in values]


def _mean(values) -> float:
    """Mean over the values that are defined (None/NaN are missing); NaN when none is."""
    defined = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(defined)) if defined else float("nan")


def summarize_scenes(records: Sequence[Dict[str, dict]], names: Sequence[str]) -> List[dict]:
    """One row per method from ``score_scene`` records: means of ``pointing``, ``energy``, ``deletion_auc``,
    ``insertion_auc`` over every object of every scene (the AUCs over the maps where they are defined: not over
    constant maps, NaN when every map is constant), ``constant_maps`` (how many maps were constant: each is a
    miss with energy 0), ``maps`` and ``seconds_per_map``."""
    rows = []
    for name in names:
        values = {key: [v for r in records for v in r[name][key]]
                  for key in ("pointing", "energy", "deletion_auc", "insertion_auc", "constant")}
        maps = len(values["pointing"])
        rows.append({"method": name, "pointing": float(np.mean(values["pointing"])),
                     "energy": float(np.mean(values["energy"])), "deletion_auc": _mean(values["deletion_auc"]),
                     "insertion_auc": _mean(values["insertion_auc"]),
                     "constant_maps": int(sum(values["constant"])), "maps": maps,
                     "seconds_per_map": sum(r[name]["seconds"] for r in records) / maps})
    return rows


def evaluate_shapes(model, *, n: int = 50, methods: Optional[Sequence[str]] = None, steps: int = 10,
                    options: Optional[Dict[str, dict]] = None, seed: int = EVAL_SEEDS, progress: bool = True,
                    done: Sequence[Dict[str, dict]] = (), on_scene: Optional[Callable[[int, dict], None]] = None
                    ) -> List[dict]:
    """One row per method (``summarize_scenes``) over ``n`` held-out scenes. ``methods``: default every registered
    method. ``done``: ``score_scene`` records of the first scenes, from an earlier run with the same arguments
    (those scenes are not recomputed); ``on_scene(i, record)`` is called after each new scene i (0-based), e.g.
    to save it. The progress bar counts scenes."""
    positive_int(n, "n", " (number of scenes)")
    names = list(methods) if methods is not None else method_names()
    for name in names:
        get_method(name)
    if len(done) > n:
        raise ValueError(f"{len(done)} scenes already done, more than n = {n}")
    model = backbone_of(model)
    records = list(done)
    held = held_out_scenes(n, size=model.resolution, seed=seed)
    with tqdm(total=n, initial=len(records), desc=f"evaluate {n} shape scenes", unit="scene",
              disable=not progress) as bar:
        for i in range(len(records), n):
            records.append(score_scene(model, held[i], names, steps=steps, options=options))
            if on_scene is not None:
                on_scene(i, records[-1])
            bar.update(1)
    return summarize_scenes(records, names)


def pointing_chance(n: int = 50, *, size: int = 48, seed: int = EVAL_SEEDS) -> float:
    """The pointing game's chance level on the same scenes: the mean share of the image an object's mask covers
    (what a uniformly random point, or a constant map's energy, scores)."""
    return float(np.mean([m.mean() for scene in held_out_scenes(n, size=size, seed=seed) for m in scene.masks]))


def format_evaluation(rows: Sequence[dict]) -> str:
    """The rows of ``evaluate_shapes`` as a plain-text (and Markdown) table; a missing AUC (every map constant) is
    "–"."""
    def auc(x):
        return "–" if x != x else f"{x:.4f}"

    lines = ["| method | pointing ↑ | energy ↑ | constant maps | deletion AUC ↓ | insertion AUC ↑ | ms / map |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['pointing']:.3f} | {r['energy']:.3f} | {r['constant_maps']} of {r['maps']} | "
              f"{auc(r['deletion_auc'])} | {auc(r['insertion_auc'])} | {1000 * r['seconds_per_map']:.1f} |"
              for r in rows]
    return "\n".join(lines)
