"""Explain a whole dataset of videos, with nothing lost when a run stops and nothing done twice.

Layout of ``out``: ``run.json`` (the arguments of the run), ``videos/<id>/`` per video (``maps.npz`` +
``maps.json`` as ``video`` writes them, ``scores.csv``, ``mean_map.npy`` (K, 64, 64) in normalised frame coordinates,
with masks ``frames.csv`` and ``annotations.csv``, and ``record.json`` last), then ``summary.csv``,
``summary_groups.csv``, ``summary.json`` and ``mean_maps_<group>.png``. Each video is written into
``videos/.<id>.partial-<random>`` and renamed to ``videos/<id>`` when complete, so a folder ``videos/<id>`` with a
``record.json`` is always whole; ``tidy`` removes what a killed run left (temporary folders, folders without a
record). A video that fails is recorded with ``status: failed`` and the reason, and the run goes on. The Ray side
is in ``engine``.
"""
from __future__ import annotations

import csv
import json
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..files import PARTIAL_MARK, atomic_path, write_json
from ..io.frames import VIDEO_SUFFIXES
from .masks import locate_masks

MEAN_MAP_SIZE = 64  # side of the mean relevance map in normalised frame coordinates
RUN_KEYS = ("prompts", "method", "model", "every", "frames", "input", "scale", "masks_root", "masks_template",
            "precision")
RUN_DEFAULTS = {"precision": "fp32"}  # what a folder written before the key existed ran with


def video_id(path: Path, root: Optional[Path]) -> str:
    """A file-system-safe id: the path relative to ``root`` without suffix, ``/`` replaced by ``__``."""
    rel = path.relative_to(root) if root is not None else Path(path.name)
    return "__".join(rel.with_suffix("").parts)


def find_videos(inputs: Sequence, masks_root=None, fields_of=None, masks_template: Optional[str] = None
                ) -> List[dict]:
    """Jobs from ``inputs``: folders (searched recursively for videos, any case of suffix), video files, or CSV
    manifests with a ``path`` column and optional ``masks`` and group columns. Returns dicts ``id``, ``path``,
    ``masks`` (a path or None), ``masks_looked`` (where masks were looked for and not found), ``columns`` (the
    manifest's other columns), sorted by id; paths are absolute. With ``masks_root``, masks are located by
    ``masks.locate_masks`` (mirror, CASIA-B or ``masks_template``); ``fields_of(path) -> dict`` gives the values
    a template may name (the ``--group-by`` groups)."""
    jobs: Dict[str, dict] = {}

    def add(path: Path, root: Optional[Path], masks=None, columns=None):
        vid = video_id(path, root)
        if vid in jobs:
            raise ValueError(f"two inputs give the same video id {vid!r}: {jobs[vid]['path']} and {path}")
        looked = []
        if masks is None and masks_root is not None:
            rel = path.relative_to(root) if root is not None else Path(path.name)
            fields = {**(fields_of(str(path)) if fields_of else {}), **dict(columns or {})}
            masks, looked = locate_masks(rel, masks_root, fields, masks_template)
        jobs[vid] = {"id": vid, "path": str(path), "masks": masks, "masks_looked": looked,
                     "columns": dict(columns or {})}

    for item in inputs:
        item = Path(item).resolve()  # absolute: Ray workers may run elsewhere than the driver's folder
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not found:
                raise ValueError(f"no video files under {item} (looked for {', '.join(VIDEO_SUFFIXES)})")
            for path in found:
                add(path, item)
        elif item.suffix.lower() == ".csv" and item.is_file():
            with open(item, newline="") as f:
                rows = list(csv.DictReader(f))
            if not rows or "path" not in rows[0]:
                raise ValueError(f"manifest {item} needs a header with a 'path' column (and optional 'masks')")
            for row in rows:
                path = Path(row.pop("path"))
                path = path if path.is_absolute() else item.parent / path
                masks = row.pop("masks", None) or None
                if masks and not Path(masks).is_absolute():
                    masks = str(item.parent / masks)
                add(path, item.parent if path.is_relative_to(item.parent) else None, masks, row)
        elif item.is_file():
            add(item, item.parent)
        else:
            raise FileNotFoundError(f"input not found: {item} (give video files, folders or a CSV manifest)")
    return [jobs[k] for k in sorted(jobs)]


def check_run(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse arguments that differ from ``out``'s earlier run (unless ``overwrite``: then its earlier videos are
    removed); write ``run.json``."""
    record = out / "run.json"
    if record.is_file():
        before = json.loads(record.read_text())
        before = {k: before.get(k, RUN_DEFAULTS.get(k)) for k in RUN_KEYS}
        changed = [k for k in RUN_KEYS if before[k] != settings.get(k, RUN_DEFAULTS.get(k))]
        if changed and not overwrite:
            detail = "; ".join(f"{k}: {before[k]!r} -> {settings.get(k)!r}" for k in changed)
            raise ValueError(f"{out} holds a run with other arguments ({detail}); use another --out or --overwrite")
        if changed:
            shutil.rmtree(out / "videos", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(record, {k: settings.get(k) for k in RUN_KEYS})


def tidy(out: Path) -> dict:
    """Remove what a killed or interrupted run left in ``out/videos``: temporary ``.partial-`` folders, and video
    folders without a ``record.json`` (they are recomputed). Returns ``{"partial": n, "repaired": [ids]}``."""
    videos = Path(out) / "videos"
    counts = {"partial": 0, "repaired": []}
    if not videos.is_dir():
        return counts
    for folder in sorted(videos.iterdir()):
        if not folder.is_dir():
            continue
        if folder.name.startswith(".") and PARTIAL_MARK in folder.name:
            shutil.rmtree(folder, ignore_errors=True)
            counts["partial"] += 1
        elif not (folder / "record.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            counts["repaired"].append(folder.name)
    return counts


def settle(out: Path, quiet_s: float = 1.0, limit_s: float = 15.0) -> int:
    """After an interrupt: remove ``.partial-`` folders until none has appeared for ``quiet_s`` seconds (workers
    still stopping may make one), at most ``limit_s``. Returns how many were removed."""
    removed, quiet_since, end = 0, time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < end:
        found = tidy_partials(out)
        removed += found
        now = time.monotonic()
        if found:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            break
        time.sleep(0.2)
    return removed


def tidy_partials(out: Path) -> int:
    """Remove the temporary ``.partial-`` folders in ``out/videos``; returns how many."""
    videos = Path(out) / "videos"
    found = [f for f in videos.glob(f".*{PARTIAL_MARK}*") if f.is_dir()] if videos.is_dir() else []
    for folder in found:
        shutil.rmtree(folder, ignore_errors=True)
    return len(found)


def status_of(out: Path, vid: str) -> Optional[str]:
    """``complete``, ``partial`` or ``failed`` for a video whose folder is whole, else None (not done)."""
    record = Path(out) / "videos" / vid / "record.json"
    return json.loads(record.read_text())["status"] if record.is_file() else None


def _csv(rows, path) -> None:
    from ..eval.annotations import write_csv

    with atomic_path(path) as temp:
        write_csv(rows, temp)


def process_video(model, job: dict, settings: dict, out: Path) -> dict:
    """Explain one video and write its folder (temporary name, renamed when complete). Returns its record."""
    from ..eval.annotations import open_masks, score_frames, summarize
    from ..io.frames import video_info
    from ..video import explain_video
    from ..viz.maps_file import save_video_maps
    from .record import constant_maps, declared_frames, frame_status, mask_record

    final = out / "videos" / job["id"]
    partial = out / "videos" / f".{job['id']}{PARTIAL_MARK}{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    record = {"id": job["id"], "path": job["path"], "masks": job["masks"], "columns": job["columns"]}
    if settings.get("masks_root") and not job["masks"]:
        record["masks_note"] = "no masks found; looked for " + ", ".join(job.get("masks_looked") or ["-"])
    try:
        info = video_info(job["path"])
        declared = declared_frames(job["path"], info)
        record.update(declared_frames=declared, decoded_frames=info.num_frames)  # kept if the video then fails
        result = explain_video(model, job["path"], settings["prompts"], method=settings["method"],
                               every=settings["every"], count=settings["frames"], scale=settings["scale"],
                               input=settings.get("input"), precision=settings.get("precision", "fp32"),
                               model_name=settings["model"], progress=False)
        if len(result.indices) < settings.get("min_frames", 1):
            raise ValueError(f"too short: {len(result.indices)} frames explained")
        save_video_maps(result, partial)
        _csv([{"frame": int(i), "time_s": float(t), **{f"cos[{p}]": float(c) for p, c in zip(result.prompts, row)}}
              for i, t, row in zip(result.indices, result.times, result.cosine)], partial / "scores.csv")
        with atomic_path(partial / "mean_map.npy") as temp:
            np.save(temp, mean_map(result))
        record["input"] = result.view.as_json()  # the mode and the size in pixels fed to the model
        record["precision"] = result.precision
        record.update(frame_status(declared, info.num_frames, len(result.failed)))
        record.update(damaged_frames=len(result.failed), damaged_indices=[int(i) for i, _ in result.failed],
                      frames=len(result.indices), mean_cos=result.cosine.mean(0).tolist(), max_cos=result.cosine.max(0).tolist(),
                      constant_maps=constant_maps(result.raw))
        if len(result.indices) > 1:
            from ..eval.stability import temporal_stability

            record["stability"] = [None if not np.isfinite(v) else float(v) for v in temporal_stability(result).mean()]
        if job["masks"]:
            with warnings.catch_warnings():  # the resize is recorded in masks_resized
                warnings.simplefilter("ignore")
                scored = score_frames(result, open_masks(job["masks"], frame_size=result.frame_size))
            record.update(mask_record(scored, len(result.indices)))
            if scored["rows"]:
                _csv(scored["rows"], partial / "frames.csv")
                table = summarize(scored["rows"])
                _csv(table, partial / "annotations.csv")
                record["metrics"] = {r["prompt"]: {k: r[k] for k in ("pointing", "energy", "rank_corr")} for r in table}
    except Exception as err:  # a failed video is recorded and the run goes on
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        counts = frame_status(record.get("declared_frames"), record.get("decoded_frames", 0), 0)["reason"]
        record.update(status="failed", reason=f"{type(err).__name__}: {' '.join(str(err).split())}" +
                      (f" ({counts})" if counts else ""))
    write_json(partial / "record.json", record)
    if status_of(out, job["id"]) != "complete":  # a retried or record-less folder is replaced
        shutil.rmtree(final, ignore_errors=True)
    try:
        partial.rename(final)
    except OSError:  # another (interrupted) attempt completed it meanwhile: keep that one
        shutil.rmtree(partial, ignore_errors=True)
    return record


def mean_map(result) -> np.ndarray:
    """(K, 64, 64) float32: each prompt's map, min-max normalised per frame, averaged over the explained frames and
    resized to a 64x64 grid over the frame ([0, 1] x [0, 1]), whatever the frame's size."""
    import torch
    import torch.nn.functional as F

    from ..explain import normalize_maps

    maps = normalize_maps(torch.from_numpy(result.raw).float()).mean(0, keepdim=True)  # (1, K, h, w)
    if result.view is not None and result.view.mode == "library":  # the maps cover the crop only: place them
        grid = result.view.at((MEAN_MAP_SIZE, MEAN_MAP_SIZE))
        return grid.place(grid.fit(maps))[0].numpy()
    return F.interpolate(maps, size=(MEAN_MAP_SIZE,) * 2, mode="bilinear", align_corners=False)[0].numpy()
