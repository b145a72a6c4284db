"""The local engine of a batch run: the same per-video work as the Ray engine, in this process, without Ray.

``run_local`` loads one model and calls ``runner.process_video`` on each job in turn, so the outputs, records and
resume are those of the Ray engine (``engine.run_on_ray``). ``choose_engine`` picks the engine for ``--engine``:
``auto`` is local unless an ``--address`` is given or the machine has enough cores or GPUs for Ray's extra model
replicas to pay for its start-up (see ``RAY_MIN_CORES``, ``RAY_MIN_GPUS``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from .runner import process_video

ENGINES = ("auto", "local", "ray")
# On 2 cores the local path beats Ray (benchmarks/batch_throughput.py: Ray's start-up alone is 30-80 s there, and
# torch already uses both cores in one process). Ray pays with one model replica per GPU on several GPUs; on CPUs
# from about 8 cores (untested: no such machine here), where one process's torch threads scale poorly.
RAY_MIN_CORES = 8
RAY_MIN_GPUS = 2


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    """CUDA devices visible to torch (0 without torch's CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_engine(engine: str, address: Optional[str], cores: Optional[int] = None, gpus: Optional[int] = None
                  ) -> str:
    """``"local"`` or ``"ray"`` for ``--engine`` (auto, local or ray) and ``--address``: an address means Ray;
    ``auto`` picks Ray only with at least ``RAY_MIN_GPUS`` GPUs or ``RAY_MIN_CORES`` cores (``cores`` and ``gpus``
    default to this machine's). ValueError (one line) for an unknown engine or ``local`` with an address."""
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    if engine == "local":
        if address:
            raise ValueError(f"--engine local runs in this process and cannot use --address {address}; "
                             "drop --address or use --engine ray")
        return "local"
    if engine == "ray" or address:
        return "ray"
    cores = cpu_cores() if cores is None else cores
    if cores >= RAY_MIN_CORES:
        return "ray"
    gpus = gpu_count() if gpus is None else gpus
    return "ray" if gpus >= RAY_MIN_GPUS else "local"


def load_worker_model(settings: dict):
    """The run's model (``settings["model"]``, truncating prompts when ``settings["truncate"]``) on the GPU when
    this process has one, else the CPU: what each engine's worker explains with."""
    import torch

    from ..backbones.model import load_clip

    device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU when Ray gave this actor one
    model, _ = load_clip(settings["model"], device=device)
    if settings.get("truncate"):
        from ..backbones.base import with_truncation
        model = with_truncation(model)
    return model


def run_local(jobs: List[dict], settings: dict, out: Path, *, progress: bool = True, log=print) -> List[dict]:
    """Process ``jobs`` one after another in this process with one model; returns ``[{"id", "status",
    "reason"}]`` in order. The progress bar counts videos (frames, partial and failed ones in its postfix); a
    video that is not complete is logged in one line. Ctrl-C propagates (the command tidies and reports)."""
    from tqdm.auto import tqdm

    model = load_worker_model(settings)
    done, frames = [], 0
    with tqdm(total=len(jobs), desc="videos", unit="video", disable=not progress) as bar:
        for job in jobs:
            record = process_video(model, job, settings, Path(out))
            done.append({"id": record["id"], "status": record["status"], "reason": record.get("reason", "")})
            if record["status"] != "complete":
                log(f"gradeclip: {record['status']}: {record['id']}: {record.get('reason', '')}")
            frames += int(record.get("frames", 0))
            bar.set_postfix(frames=frames, partial=sum(d["status"] == "partial" for d in done),
                            failed=sum(d["status"] == "failed" for d in done))
            bar.update(1)
    return done
