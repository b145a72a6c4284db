"""Videos per second of a dataset run, all engines measured in one run: the plain loop, `--engine local`, and Ray Data
at 1 and 2 workers, with Ray's start-up timed on its own.

The plain loop is what a user would write (one model, `explain_video` + `save_video_maps` on each video in turn);
the local engine (`batch.local.run_local`) does the same plus what `batch` records (scores, mean map, record):
target within 1.1x of the loop. Both use torch's default threads (all cores). Ray runs on a private local Ray
(`engine.private_ray`: `ray start --head` on 127.0.0.1, 2 CPUs) whose start-up is timed separately; each Ray time
includes starting the actors and loading a model replica in each (one CPU, one torch thread each). The model is a
random CLIP with a ViT-B/32-shaped vision tower (patch 32, width 768, 12 blocks) unless ``--small``; no download.

    PYTHONPATH=$PWD python benchmarks/batch_throughput.py [--videos 6] [--frames 12] [--small]
"""
import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_videos(root: Path, count: int, frames: int, size: int = 224):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = root / f"clip_{i:02d}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (size, size))
        for t in range(frames):
            frame = np.full((size, size, 3), 60 + 10 * i, np.uint8)
            cv2.circle(frame, (20 + 5 * t % size, size // 2), 25, tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
            writer.write(frame)
        writer.release()
        paths.append(path)
    return paths


def make_model(path: Path, small: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.model import CLIP
    torch.manual_seed(0)
    width, layers = (128, 2) if small else (768, 12)
    model = CLIP(embed_dim=512 if not small else 64, image_resolution=224, vision_layers=layers,
                 vision_width=width, vision_patch_size=32, context_length=77, vocab_size=49408,
                 transformer_width=256, transformer_heads=4, transformer_layers=2)
    torch.save(model.state_dict(), path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--small", action="store_true", help="a tiny vision tower instead of ViT-B/32's shape")
    args = parser.parse_args()

    from gradeclip.backbones.model import load_clip
    from gradeclip.batch.engine import private_ray, run_on_ray
    from gradeclip.batch.local import cpu_cores, run_local
    from gradeclip.batch.runner import find_videos
    from gradeclip.video import explain_video, save_video_maps

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "videos").mkdir()
        make_videos(root / "videos", args.videos, args.frames)
        checkpoint = root / "model.pt"
        make_model(checkpoint, args.small)
        prompts = ["a red circle", "a person walking"]
        settings = {"prompts": prompts, "method": "grad_eclip", "model": str(checkpoint), "every": None,
                    "frames": None, "input": None, "scale": 1.0, "masks_root": None, "masks_template": None}
        jobs = find_videos([root / "videos"])
        times = {}

        start = time.perf_counter()
        model, _ = load_clip(str(checkpoint), device="cpu")
        for path in sorted((root / "videos").iterdir()):
            result = explain_video(model, str(path), prompts, model_name=str(checkpoint), progress=False)
            save_video_maps(result, root / "loop")
        times["loop"] = time.perf_counter() - start

        start = time.perf_counter()
        run_local(jobs, settings, root / "local", progress=False)
        times["local"] = time.perf_counter() - start

        start = time.perf_counter()
        with private_ray(num_cpus=2, log_path=str(root / "ray.log")):
            times["startup"] = time.perf_counter() - start
            for workers in (1, 2):
                start = time.perf_counter()
                run_on_ray(jobs, settings, root / f"ray{workers}", num_workers=workers, progress=False)
                times[f"ray{workers}"] = time.perf_counter() - start

    n = args.videos
    shape = "tiny vision tower" if args.small else "ViT-B/32-shaped"
    print(f"{n} videos x {args.frames} frames (224x224), 2 prompts, grad_eclip, {shape} random weights, CPU, "
          f"{cpu_cores()} cores, torch {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    rows = [("plain loop over explain_video", "loop"), ("--engine local (run_local)", "local"),
            ("Ray Data, 1 worker", "ray1"), ("Ray Data, 2 workers", "ray2")]
    for label, key in rows:
        print(f"{label:32s} {times[key]:7.1f} s  {n / times[key]:.3f} videos/s")
    print(f"{'Ray start-up (private_ray)':32s} {times['startup']:7.1f} s")
    print(f"local / plain loop (time): {times['local'] / times['loop']:.2f}x (target <= 1.10x)")
    for w in (1, 2):
        print(f"Ray {w} worker(s) / local (time): {times[f'ray{w}'] / times['local']:.2f}x; "
              f"with start-up: {(times[f'ray{w}'] + times['startup']) / times['local']:.2f}x")


if __name__ == "__main__":
    main()
