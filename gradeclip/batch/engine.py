"""The Ray side of a batch run: starting or joining Ray, and one model replica per actor on Ray Data.

``map_batches`` with a callable class, ``num_workers`` actors, one CPU each, one GPU each when the cluster has enough;
a local Ray with ``num_cpus`` CPUs bound to 127.0.0.1 is started unless ``address`` is given.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import numpy as np

from .runner import process_video

START_TRIES = 3
START_WAIT_S = 120  # the GCS's wait for its port; Ray's default 30 s is too short on a loaded 2-core machine


def start_ray(address: Optional[str] = None, num_cpus: int = 2):
    """Join the Ray cluster at ``address``, or start a local Ray with ``num_cpus`` CPUs on 127.0.0.1 (no dashboard,
    workers' logs kept in Ray's log folder, not the terminal), trying up to ``START_TRIES`` times on a busy machine.
    Returns Ray's context; raises RuntimeError (one line naming ``--address``) when Ray cannot be started."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(START_WAIT_S))
    import ray

    quiet = dict(log_to_driver=False, logging_level="ERROR")
    if address:
        try:
            return ray.init(address=address, **quiet)
        except Exception as err:
            raise RuntimeError(f"cannot join the Ray cluster at --address {address}: "
                               f"{' '.join(str(err).split())}") from None
    error = None
    for _ in range(START_TRIES):
        try:
            return ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
        except Exception as err:  # a node that timed out under load: clean up and try again
            error = err
            ray.shutdown()
    raise RuntimeError(f"could not start a local Ray ({START_TRIES} tries: {' '.join(str(error).split())}); "
                       "start one with `ray start --head` and pass its address with --address")


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
        if self.settings.get("truncate"):
            from ..backbones.base import with_truncation
            self.model = with_truncation(self.model)
        self.out = Path(self.out)

    def __call__(self, batch: dict) -> dict:
        statuses, reasons, frames = [], [], []
        for i in range(len(batch["id"])):
            job = {"id": str(batch["id"][i]), "path": str(batch["path"][i]), "masks": str(batch["masks"][i]) or None,
                   "masks_looked": json.loads(str(batch["looked"][i])), "columns": json.loads(str(batch["columns"][i]))}
            record = process_video(self.model, job, self.settings, self.out)
            statuses.append(record["status"])
            reasons.append(record.get("reason", ""))
            frames.append(record.get("frames", 0))
        return {"id": batch["id"], "status": np.array(statuses), "reason": np.array(reasons),
                "frames": np.array(frames, dtype=np.int64)}


def run_on_ray(jobs: List[dict], settings: dict, out: Path, *, address: Optional[str] = None, num_workers: int = 2,
               num_cpus: int = 2, progress: bool = True, log=print) -> List[dict]:
    """Process ``jobs`` on Ray Data; returns ``[{"id", "status", "reason"}]`` in completion order. Joins the Ray
    instance already initialised in this process, else ``address``, else starts a local one (``start_ray``) and
    shuts down what it started. The progress bar counts videos (failed and partial ones in its postfix)."""
    import warnings

    import ray

    started = not ray.is_initialized()
    if started:
        start_ray(address, num_cpus)
    try:
        with warnings.catch_warnings():  # Ray Data's deprecation notices about its own settings
            warnings.simplefilter("ignore")
            return _run(jobs, settings, out, num_workers, progress, log)
    finally:
        if started:
            ray.shutdown()


def _run(jobs: List[dict], settings: dict, out: Path, num_workers: int, progress: bool, log) -> List[dict]:
    """The Ray Data pipeline of ``run_on_ray`` on an initialised Ray."""
    import logging

    import ray
    from tqdm.auto import tqdm

    ctx = ray.data.DataContext.get_current()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its INFO lines would break our progress bar
    ctx.enable_progress_bars = False
    ctx.verbose_progress = False
    gpus = ray.cluster_resources().get("GPU", 0)
    rows = [{"id": j["id"], "path": j["path"], "masks": j["masks"] or "",
             "looked": json.dumps(j.get("masks_looked") or []), "columns": json.dumps(j["columns"])} for j in jobs]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    worker = type("VideoWorker", (VideoWorker,), {"settings": dict(settings), "out": str(out)})
    ds = ds.map_batches(worker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(num_workers, len(rows))),
                        num_cpus=1, num_gpus=1 if gpus >= num_workers else 0,
                        max_restarts=0)  # a crashed actor stops the run (a rerun resumes) rather than retrying forever
    done, frames = [], 0
    with tqdm(total=len(rows), desc="videos", unit="video", disable=not progress) as bar:
        for row in ds.iter_rows():
            done.append({"id": row["id"], "status": row["status"], "reason": row["reason"]})
            if row["status"] != "complete":
                log(f"gradeclip: {row['status']}: {row['id']}: {row['reason']}")
            frames += int(row["frames"])
            bar.set_postfix(frames=frames, partial=sum(d["status"] == "partial" for d in done),
                            failed=sum(d["status"] == "failed" for d in done))
            bar.update(1)
    return done
