"""The Ray side of a batch run: starting or joining Ray, and one model replica per actor on Ray Data.

``map_batches`` with a callable class, ``num_workers`` actors, one CPU each, one GPU each when the cluster has enough;
a local Ray with ``num_cpus`` CPUs on 127.0.0.1 is started unless ``address`` is given. A local Ray is private to
the run: every service bound to the loopback address (Ray's own local-only mode,
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), no dashboard, its processes tagged, watched and ended with the run
(``rayproc``), Ray's C++ and Python messages in ``OUT/ray.log`` rather than the terminal.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from .local import load_worker_model
from .runner import process_video

START_TRIES = 3
START_TIMEOUT_S = 240.0  # all tries together; one try takes 30-80 s on a 2-core machine at load 5-14
LOG_NAME = "ray.log"


def _local_only(ray) -> None:
    """Make this process's Ray treat the node as local-only: node address 127.0.0.1 and every gRPC server bound to
    it (what Ray does by default on macOS and Windows). The variable reaches the processes Ray starts."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False  # read when the node's address is chosen


def start_ray(address: Optional[str] = None, num_cpus: int = 2, *, temp_dir: Optional[str] = None,
              timeout_s: float = START_TIMEOUT_S, log_path: Optional[str] = None):
    """Join the Ray cluster at ``address``, or start a local Ray with ``num_cpus`` CPUs bound to 127.0.0.1 (no
    dashboard, workers' logs kept in Ray's log folder, not the terminal), in ``temp_dir`` when given, trying up to
    ``START_TRIES`` times within ``timeout_s`` seconds on a busy machine. Returns Ray's context; raises
    RuntimeError (one line naming ``--address`` and ``--engine local``, and ``log_path`` if given) when Ray cannot
    be started."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    quiet = dict(log_to_driver=False, logging_level="ERROR")
    if address:
        try:
            return ray.init(address=address, **quiet)
        except Exception as err:
            raise RuntimeError(f"cannot join the Ray cluster at --address {address}: "
                               f"{' '.join(str(err).split())}") from None
    _local_only(ray)
    local = dict(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
    if temp_dir:
        local["_temp_dir"] = temp_dir
    error, tries, begin = None, 0, time.monotonic()
    while tries < START_TRIES and (tries == 0 or time.monotonic() - begin < timeout_s):
        tries += 1
        try:
            return ray.init(**local)
        except Exception as err:  # a node that timed out under load: clean up and try again
            error = err
            ray.shutdown()
    spent = time.monotonic() - begin
    raise RuntimeError(f"could not start a local Ray ({tries} tries in {spent:.0f} s: {' '.join(str(error).split())})"
                       + (f"; Ray's messages are in {log_path}" if log_path else "") +
                       "; run it without Ray (--engine local), or start one with `ray start --head "
                       "--node-ip-address 127.0.0.1` and pass its address with --address")


class VideoWorker:
    """A Ray Data callable class: one model replica per actor; each batch row is one video job. The run's settings
    and output folder are class attributes of a subclass made per run (in ``run_on_ray``), so that the actors need
    no constructor arguments in the object store."""

    settings: dict = {}
    out: str = ""

    def __init__(self):
        self.model = load_worker_model(self.settings)
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
               num_cpus: int = 2, progress: bool = True, log=print, start_timeout_s: Optional[float] = None
               ) -> List[dict]:
    """Process ``jobs`` on Ray Data; returns ``[{"id", "status", "reason"}]`` in completion order. Joins the Ray
    instance already initialised in this process, else ``address``, else starts a private local one
    (``start_ray`` in a fresh temp folder, watched by ``rayproc``'s watchdog) and ends it and all its processes
    when done, failed or interrupted (start-up tries end after ``start_timeout_s``, default ``START_TIMEOUT_S``).
    Ray's messages go to ``out/ray.log``; the progress bar counts videos (failed
    and partial ones in its postfix)."""
    import warnings

    import ray

    from . import rayproc

    out = Path(out)
    started = not ray.is_initialized()
    private = started and not address
    temp_dir = rayproc.make_temp_dir() if private else None
    log_file = os.path.join(temp_dir, "driver.log") if private else str(out / f".{LOG_NAME}.driver")
    watchdog = None
    if private:
        os.environ[rayproc.MARK] = temp_dir  # inherited by every process Ray starts
        watchdog = rayproc.start_watchdog(temp_dir)
    try:
        with rayproc.quiet_stderr(log_file) as terminal:
            if started:
                start_ray(address, num_cpus, temp_dir=temp_dir,
                          timeout_s=START_TIMEOUT_S if start_timeout_s is None else start_timeout_s,
                          log_path=str(out / LOG_NAME))
            try:
                with warnings.catch_warnings():  # Ray Data's deprecation notices about its own settings
                    warnings.simplefilter("ignore")
                    return _run(jobs, settings, out, num_workers, progress, log, terminal)
            finally:
                if started:
                    ray.shutdown()
    finally:
        if private:
            os.environ.pop(rayproc.MARK, None)
            rayproc.reap(temp_dir)
            _keep_log(log_file, temp_dir, out)
            shutil.rmtree(temp_dir, ignore_errors=True)
            rayproc.stop_watchdog(watchdog)
        else:
            _keep_log(log_file, None, out)


def _keep_log(driver_log: str, temp_dir: Optional[str], out: Path) -> None:
    """Write ``out/ray.log``: what reached stderr during the run (Ray's C++ and Python messages), then the error
    files of the local Ray's own processes (``*.err`` in its session's log folder)."""
    from ..files import write_bytes

    parts = []
    if os.path.isfile(driver_log):
        parts.append(b"== driver stderr ==\n" + Path(driver_log).read_bytes())
        if temp_dir is None:
            os.remove(driver_log)
    for err in sorted(Path(temp_dir).glob("session_*/logs/*.err")) if temp_dir else []:
        data = err.read_bytes()
        if data.strip():
            parts.append(f"== {err.name} ==\n".encode() + data)
    if parts and out.is_dir():
        write_bytes(out / LOG_NAME, b"\n".join(parts))


def _run(jobs: List[dict], settings: dict, out: Path, num_workers: int, progress: bool, log, terminal) -> List[dict]:
    """The Ray Data pipeline of ``run_on_ray`` on an initialised Ray; the progress bar on ``terminal``."""
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
    with tqdm(total=len(rows), desc="videos", unit="video", disable=not progress, file=terminal) as bar:
        for row in ds.iter_rows():
            done.append({"id": row["id"], "status": row["status"], "reason": row["reason"]})
            if row["status"] != "complete":
                log(f"gradeclip: {row['status']}: {row['id']}: {row['reason']}")
            frames += int(row["frames"])
            bar.set_postfix(frames=frames, partial=sum(d["status"] == "partial" for d in done),
                            failed=sum(d["status"] == "failed" for d in done))
            bar.update(1)
    return done
