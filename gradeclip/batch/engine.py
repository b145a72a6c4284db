"""The Ray side of a batch run: starting or joining Ray, and one model replica per actor on Ray Data.

``map_batches`` with a callable class, ``num_workers`` actors, one CPU each, one GPU each when the cluster has enough;
a local Ray with ``num_cpus`` CPUs on 127.0.0.1 is started unless ``address`` is given. A local Ray is private to
the run: every service bound to the loopback address (Ray's own local-only mode,
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), no dashboard, its processes tagged, watched and ended with the run
(``rayproc``), Ray's C++ and Python messages in ``OUT/ray.log`` rather than the terminal.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

from .local import load_worker_model
from .runner import process_video

START_TRIES = 5  # the raylet aborts when its agents start slower than 15 s; a later try often makes it
START_TIMEOUT_S = 240.0  # all tries together; one try takes 30-80 s on a 2-core machine at load 5-14
LOG_NAME = "ray.log"


def start_ray(address: Optional[str] = None, num_cpus: int = 2, *, temp_dir: Optional[str] = None,
              timeout_s: Optional[float] = None, log_path: Optional[str] = None):
    """Join the Ray cluster at ``address``, or start a private local Ray (``rayproc.start_head``: 127.0.0.1 only,
    no dashboard, ``num_cpus`` CPUs, its processes tagged with ``temp_dir``, a fresh one when None) and join it,
    trying up to ``START_TRIES`` times within ``timeout_s`` seconds (default ``START_TIMEOUT_S``) on a busy machine.
    Ray's own output goes to ``log_path`` (or the temp folder). Returns Ray's context; raises RuntimeError (one
    line naming ``--engine local`` and ``--address``) when Ray cannot be started or joined. The caller ends a
    local Ray with ``ray.shutdown()`` then ``rayproc.reap(temp_dir)`` (``private_ray`` does all of this)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from . import rayproc

    quiet = dict(log_to_driver=False, logging_level="ERROR")
    if address:
        try:
            return ray.init(address=address, **quiet)
        except Exception as err:
            raise RuntimeError(f"cannot join the Ray cluster at --address {address}: "
                               f"{' '.join(str(err).split())}") from None
    timeout_s = START_TIMEOUT_S if timeout_s is None else timeout_s
    made = temp_dir is None
    temp_dir = temp_dir or rayproc.make_temp_dir()
    os.environ.update(rayproc.private_env(temp_dir))  # this driver joins without a token, like its Ray's processes
    # Ray read RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when imported: without this it rewrites 127.0.0.1 in the head's
    # address to the machine's network address, where nothing listens, and waits forever
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    output = os.path.join(temp_dir, "ray_start.log")
    error, tries, begin = None, 0, time.monotonic()
    while tries < START_TRIES and (tries == 0 or time.monotonic() - begin < timeout_s):
        tries += 1
        try:
            head = rayproc.start_head(num_cpus, temp_dir, output, timeout_s - (time.monotonic() - begin))
            with _sigint_deferred():
                return ray.init(address=head, **quiet)
        except Exception as err:  # a node that failed or timed out under load: clean up and try again
            error = err
            ray.shutdown()
            rayproc.reap(temp_dir)
    spent = time.monotonic() - begin
    if made:
        shutil.rmtree(temp_dir, ignore_errors=True)
    raise RuntimeError(f"could not start a local Ray ({tries} tries in {spent:.0f} s: {' '.join(str(error).split())})"
                       + (f"; Ray's messages are in {log_path}" if log_path else "") +
                       "; run it without Ray (--engine local), or start one with `ray start --head "
                       "--node-ip-address 127.0.0.1` and pass its address with --address")


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, then raise KeyboardInterrupt: a `ray.init` interrupted halfway leaves
    Ray's core worker half made, and the process then crashed (SIGSEGV) on exit instead of exiting with 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


@contextlib.contextmanager
def private_ray(num_cpus: int = 2, *, timeout_s: Optional[float] = None, log_path: Optional[str] = None
                ) -> Iterator[str]:
    """A private local Ray for the duration of the block; yields its temp folder (the processes' tag). A watchdog
    ends its processes if this process dies; on leaving the block (Ctrl-C included) Ray is shut down, every
    process of it ended and the folder removed."""
    import ray

    from . import rayproc

    temp_dir = rayproc.make_temp_dir()
    watchdog = rayproc.start_watchdog(temp_dir)
    cluster_mode = ray._private.ray_constants.ENABLE_RAY_CLUSTER  # restored for later joins of real clusters
    try:
        start_ray(None, num_cpus, temp_dir=temp_dir, timeout_s=timeout_s, log_path=log_path)
        yield temp_dir
    finally:
        ray.shutdown()
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
        rayproc.reap(temp_dir)
        for key in rayproc.private_env(temp_dir):
            os.environ.pop(key, None)
        if log_path:
            _keep_log(temp_dir, log_path)
        shutil.rmtree(temp_dir, ignore_errors=True)
        rayproc.stop_watchdog(watchdog)


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
    (``private_ray``) and ends it and all its processes when done, failed or interrupted (start-up tries end after
    ``start_timeout_s``, default ``START_TIMEOUT_S``). What Ray writes to this process's stderr goes to
    ``out/ray.log`` (with a local Ray's own start-up output and error logs); the progress bar counts videos
    (failed and partial ones in its postfix)."""
    import warnings

    import ray

    from . import rayproc

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = str(out / LOG_NAME)
    with contextlib.ExitStack() as stack:
        stderr_log = stack.enter_context(_stderr_file(out))
        terminal = stack.enter_context(rayproc.quiet_stderr(stderr_log))
        if not ray.is_initialized():
            if address:
                start_ray(address)
                stack.callback(ray.shutdown)
            else:
                stack.enter_context(private_ray(num_cpus, timeout_s=start_timeout_s, log_path=log_path))
        with warnings.catch_warnings():  # Ray Data's deprecation notices about its own settings
            warnings.simplefilter("ignore")
            return _run(jobs, settings, out, num_workers, progress, log, terminal)


@contextlib.contextmanager
def _stderr_file(out: Path) -> Iterator[str]:
    """A temporary file in ``out`` collecting this process's stderr during a Ray run, appended to ``out/ray.log``
    (atomically, as a whole new file) when the run ends, however it ends."""
    from ..files import partial_name

    path = partial_name(out / "ray-stderr.log")
    try:
        yield str(path)
    finally:
        if path.is_file():
            _keep_log(None, str(out / LOG_NAME), extra=path.read_bytes())
            path.unlink()


def _keep_log(temp_dir: Optional[str], log_path: str, extra: bytes = b"") -> None:
    """Add to ``log_path`` (rewritten atomically) ``extra`` (what reached stderr) and, for a local Ray's
    ``temp_dir``, its start-up output and the non-empty error logs of its processes (``*.err``)."""
    from ..files import write_bytes

    parts = [b"== stderr of the driver ==\n" + extra] if extra.strip() else []
    if temp_dir:
        for path in [Path(temp_dir) / "ray_start.log", *sorted(Path(temp_dir).glob("session_*/logs/*.err"))]:
            if path.is_file() and path.read_bytes().strip():
                parts.append(f"== {path.name} ==\n".encode() + path.read_bytes())
    old = Path(log_path).read_bytes() if Path(log_path).is_file() else b""
    if parts or not old:
        write_bytes(log_path, old + b"\n".join(parts))


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
