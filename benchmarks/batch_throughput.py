"""Videos per second of a dataset run: Ray Data with 2 workers vs a plain loop on 1 worker, in one run.

The plain loop is what the `video` command does for a folder (one model, the videos one after another), writing
what `batch` writes (maps .npz + JSON sidecar); torch uses 1 thread there, as each Ray worker does (one CPU each).
Ray's start-up (``engine.start_ray``: a local 2-CPU instance on 127.0.0.1, as `batch` starts it) is timed on its
own; the Ray time includes starting the actors and loading a model replica in each. The model is a random CLIP with ViT-B/32-shaped vision tower
(patch 32, width 768, 12 blocks) unless ``--small``; no download.

    PYTHONPATH=$PWD python benchmarks/batch_throughput.py [--videos 8] [--frames 24] [--small]
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
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--small", action="store_true", help="a tiny vision tower instead of ViT-B/32's shape")
    args = parser.parse_args()

    from gradeclip.backbones.model import load_clip
    from gradeclip.batch.engine import run_on_ray, start_ray
    from gradeclip.batch.runner import find_videos
    from gradeclip.video import explain_video, save_video_maps

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "videos").mkdir()
        make_videos(root / "videos", args.videos, args.frames)
        checkpoint = root / "model.pt"
        make_model(checkpoint, args.small)
        prompts = ["a red circle", "a person walking"]

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        start = time.perf_counter()
        model, _ = load_clip(str(checkpoint), device="cpu")
        for path in sorted((root / "videos").iterdir()):
            result = explain_video(model, str(path), prompts, model_name=str(checkpoint), progress=False)
            save_video_maps(result, root / "loop")
        loop = time.perf_counter() - start
        torch.set_num_threads(threads)

        import ray

        start = time.perf_counter()
        start_ray(num_cpus=2)
        startup = time.perf_counter() - start
        settings = {"prompts": prompts, "method": "grad_eclip", "model": str(checkpoint), "every": None,
                    "frames": None, "scale": 1.0, "masks_root": None, "masks_template": None}
        jobs = find_videos([root / "videos"])
        start = time.perf_counter()
        run_on_ray(jobs, settings, root / "ray", num_workers=2, progress=False)
        on_ray = time.perf_counter() - start
        ray.shutdown()

    n = args.videos
    shape = "tiny vision tower" if args.small else "ViT-B/32-shaped"
    print(f"{n} videos x {args.frames} frames (224x224), 2 prompts, grad_eclip, {shape} random weights, CPU")
    print(f"plain loop, 1 worker (1 thread):  {loop:7.1f} s  {n / loop:.3f} videos/s")
    print(f"Ray Data, 2 workers (1 CPU each): {on_ray:7.1f} s  {n / on_ray:.3f} videos/s  (actors + models incl.)")
    print(f"Ray start-up (start_ray, local):  {startup:7.1f} s")
    print(f"ratio Ray / loop (videos/s): {loop / on_ray:.2f}x; with start-up: {loop / (on_ray + startup):.2f}x")


if __name__ == "__main__":
    main()
