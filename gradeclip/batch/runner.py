"""Explain a whole dataset of videos on Ray Data, with nothing lost when a run stops and nothing done twice.

Layout of ``out``: ``run.json`` (the arguments of the run), ``videos/<id>/`` per video (``maps.npz`` +
``maps.json`` as ``video`` writes them, ``scores.csv``, ``mean_map.npy`` (K, 64, 64) in normalised frame coordinates,
with masks ``frames.csv`` and ``annotations.csv``, and ``record.json`` last), then ``summary.csv``,
``summary_groups.csv`` and ``mean_maps_<group>.png``. Each video is written into ``videos/.<id>.partial-<random>``
and renamed to ``videos/<id>`` when complete, so a folder ``videos/<id>`` is always whole. A video that fails is
recorded in its ``record.json`` with ``status: failed`` and the reason, and the run goes on.

Ray: one model replica per actor (``map_batches`` with a callable class, ``num_workers`` actors, one CPU each, one
GPU each when the cluster has enough); a local Ray with ``num_cpus`` CPUs is started unless ``address`` is given.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..io.frames import VIDEO_SUFFIXES

MEAN_MAP_SIZE = 64  # side of the mean relevance map in normalised frame coordinates
RUN_KEYS = ("prompts", "method", "model", "every", "frames", "input", "scale", "masks_root")


def video_id(path: Path, root: Optional[Path]) -> str:
    """A file-system-safe id: the path relative to ``root`` without suffix, ``/`` replaced by ``__``."""
    rel = path.relative_to(root) if root is not None else Path(path.name)
    return "__".join(rel.with_suffix("").parts)


def find_videos(inputs: Sequence, masks_root=None) -> List[dict]:
    """Jobs from ``inputs``: folders (searched recursively for videos), video files, or CSV manifests with a
    ``path`` column and optional ``masks`` and group columns. Returns dicts ``id``, ``path``, ``masks``,
    ``columns`` (the manifest's other columns), sorted by id; paths are absolute. With ``masks_root``, a video ``a/b.avi`` found under a
    folder takes the masks folder ``masks_root/a/b`` when it exists."""
    jobs: Dict[str, dict] = {}

    def add(path: Path, root: Optional[Path], masks=None, columns=None):
        vid = video_id(path, root)
        if vid in jobs:
            raise ValueError(f"two inputs give the same video id {vid!r}: {jobs[vid]['path']} and {path}")
        if masks is None and masks_root is not None and root is not None:
            candidate = Path(masks_root).resolve() / path.relative_to(root).with_suffix("")
            masks = str(candidate) if candidate.exists() else None
        jobs[vid] = {"id": vid, "path": str(path), "masks": masks, "columns": dict(columns or {})}

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
    """Refuse arguments that differ from ``out``'s earlier run (unless ``overwrite``: then its videos are
    removed); write ``run.json``."""
    record = out / "run.json"
    if record.is_file():
        before = json.loads(record.read_text())
        changed = [k for k in RUN_KEYS if before.get(k) != settings.get(k)]
        if changed and not overwrite:
            detail = "; ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise ValueError(f"{out} holds a run with other arguments ({detail}); use another --out or --overwrite")
        if changed:
            shutil.rmtree(out / "videos", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({k: settings.get(k) for k in RUN_KEYS}, indent=2) + os.linesep)


def status_of(out: Path, vid: str) -> Optional[str]:
    """``"complete"`` or ``"failed"`` for a video whose folder is whole, else None (not done, or interrupted)."""
    record = Path(out) / "videos" / vid / "record.json"
    return json.loads(record.read_text())["status"] if record.is_file() else None


def process_video(model, job: dict, settings: dict, out: Path) -> dict:
    """Explain one video and write its folder (temporary name, renamed when complete). Returns its record."""
    from ..eval.annotations import open_masks, score_frames, summarize, write_csv
    from ..video import explain_video, save_video_maps

    final = out / "videos" / job["id"]
    partial = out / "videos" / f".{job['id']}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    record = {"id": job["id"], "path": job["path"], "masks": job["masks"], "columns": job["columns"]}
    try:
        result = explain_video(model, job["path"], settings["prompts"], method=settings["method"],
                               every=settings["every"], count=settings["frames"], scale=settings["scale"],
                               input=settings.get("input"),
                               model_name=settings["model"], progress=False)
        if len(result.indices) < settings.get("min_frames", 1):
            raise ValueError(f"too short: {len(result.indices)} frames explained")
        save_video_maps(result, partial)
        write_csv([{"frame": int(i), "time_s": float(t), **{f"cos[{p}]": float(c) for p, c in zip(result.prompts, row)}}
                   for i, t, row in zip(result.indices, result.times, result.cosine)], partial / "scores.csv")
        np.save(partial / "mean_map.npy", mean_map(result))
        record["input"] = result.view.as_json()  # the mode and the size in pixels fed to the model
        record.update(status="complete", frames=len(result.indices), failed_frames=len(result.failed),
                      mean_cos=result.cosine.mean(0).tolist(), max_cos=result.cosine.max(0).tolist())
        if len(result.indices) > 1:
            from ..eval.stability import temporal_stability

            record["stability"] = [None if not np.isfinite(v) else float(v) for v in temporal_stability(result).mean()]
        if job["masks"]:
            scored = score_frames(result, open_masks(job["masks"], frame_size=result.frame_size))
            record["annotated_frames"] = len(result.indices) - len(scored["missing"])
            if scored["rows"]:
                write_csv(scored["rows"], partial / "frames.csv")
                table = summarize(scored["rows"])
                write_csv(table, partial / "annotations.csv")
                record["metrics"] = {r["prompt"]: {k: r[k] for k in ("pointing", "energy", "rank_corr")} for r in table}
    except Exception as err:  # a failed video is recorded and the run goes on
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        record.update(status="failed", reason=f"{type(err).__name__}: {' '.join(str(err).split())}")
    (partial / "record.json").write_text(json.dumps(record, indent=2) + os.linesep)
    if status_of(out, job["id"]) == "failed":  # a retried failure replaces its old record
        shutil.rmtree(final, ignore_errors=True)
    try:
        partial.rename(final)
    except OSError:  # another (interrupted) attempt finished it meanwhile: keep that one
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


class VideoWorker:
    """A Ray Data callable class: one model replica per actor; each batch row is one video job. The run's settings
    and output folder are class attributes of a subclass made per run (in ``run_on_ray``), so that the actors need
    no constructor arguments in the object store."""

    settings: dict = {}
    out: str = ""

    def __init__(self):
        import torch

        from ..backbones.model import load_clip

        device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU when Ray gave this actor one
        self.model, _ = load_clip(self.settings["model"], device=device)
        self.out = Path(self.out)

    def __call__(self, batch: dict) -> dict:
        statuses, reasons, frames = [], [], []
        for i in range(len(batch["id"])):
            job = {"id": str(batch["id"][i]), "path": str(batch["path"][i]),
                   "masks": str(batch["masks"][i]) or None, "columns": json.loads(str(batch["columns"][i]))}
            record = process_video(self.model, job, self.settings, self.out)
            statuses.append(record["status"])
            reasons.append(record.get("reason", ""))
            frames.append(record.get("frames", 0))
        return {"id": batch["id"], "status": np.array(statuses), "reason": np.array(reasons),
                "frames": np.array(frames, dtype=np.int64)}


def run_on_ray(jobs: List[dict], settings: dict, out: Path, *, address: Optional[str] = None, num_workers: int = 2,
               num_cpus: int = 2, progress: bool = True, log=print) -> List[dict]:
    """Process ``jobs`` on Ray Data; returns ``[{"id", "status", "reason"}]`` in completion order. Joins the Ray
    instance already initialised in this process, else ``address``, else starts a local one with ``num_cpus``
    CPUs (and shuts down what it started)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from tqdm.auto import tqdm

    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        started = True
    try:
        import logging

        ctx = ray.data.DataContext.get_current()
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its INFO lines would break our progress bar
        ctx.enable_progress_bars = False
        ctx.verbose_progress = False
        gpus = ray.cluster_resources().get("GPU", 0)
        rows = [{"id": j["id"], "path": j["path"], "masks": j["masks"] or "", "columns": json.dumps(j["columns"])}
                for j in jobs]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
        worker = type("VideoWorker", (VideoWorker,), {"settings": dict(settings), "out": str(out)})
        ds = ds.map_batches(worker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(num_workers, len(rows))),
                            num_cpus=1, num_gpus=1 if gpus >= num_workers else 0)
        done, frames = [], 0
        with tqdm(total=len(rows), desc="videos", unit="video", disable=not progress) as bar:
            for row in ds.iter_rows():
                done.append({"id": row["id"], "status": row["status"], "reason": row["reason"]})
                if row["status"] == "failed":
                    log(f"gradeclip: failed: {row['id']}: {row['reason']}")
                frames += int(row["frames"])
                bar.set_postfix(frames=frames, failed=sum(d["status"] == "failed" for d in done))
                bar.update(1)
        return done
    finally:
        if started:
            ray.shutdown()
