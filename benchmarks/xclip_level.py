"""X-CLIP's video-level Grad-ECLIP against the model's own forward, xclip-base-patch32 sizes, random weights.

The transformers default ``XCLIPConfig`` (ViT-B/32 at 224, num_frames 8). Per clip length T = 8, 16, 32 frames
(1, 2, 4 windows) and K = 4 prompts: ``XCLIPModel.__call__`` without autograd on each window's pixels (the
library's own score, its image processor included), then ``explain_xclip`` on the same frames (preprocessing,
text features, maps, importance).
Timings are medians of --repeats rounds in one process; each T ends with a line
``T=.. windows=.. explain_vs_forward=R`` (target <= 1.3x, as issue 17's for the mean-pooled clip score).

Peak memory vs T: each T runs ``explain_xclip`` once more in a child process, which reports the peak resident set
(sampled every millisecond, as ``clip_level.py`` measures it; CUDA: ``max_memory_allocated``) above what was in
use before the call (after one window of the library's forward as a warm-up; glibc told to map buffers over
128 KiB on their own, so that freed ones leave the resident set). Windows run one at a time, so only the (T, K, H, W) maps and the (T, K, h, w) raw maps grow
with T; the last line reads ``peak_mb_T8=.. peak_mb_T16=.. peak_mb_T32=.. growth_T16=.. growth_T32=..`` with
growth = peak(T) / peak(T0) beside T / T0 (T0 the first T): at most linear when growth <= T / T0.

    python benchmarks/xclip_level.py [--repeats 3] [--frames 8,16,32] [--device cpu]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from gradeclip.backbones.base import backbone_of  # first: gradeclip silences openai-clip's import warning
from gradeclip.xclip_level import explain_xclip
from clip_level import peak_bytes  # benchmarks/clip_level.py: peak memory of one call

PROMPTS = ["a person walking", "a person carrying a bag", "a dog", "a red car"]


def xclip_base(device):
    """A random xclip-base-patch32-shaped XCLIPModel and its Backbone (openai-clip's tokenizer)."""
    import clip
    from transformers import XCLIPConfig, XCLIPModel

    torch.manual_seed(0)
    model = XCLIPModel(XCLIPConfig()).eval().to(device)
    return model, backbone_of(model, tokenizer=lambda p: clip.tokenize(p, context_length=77))


def child(count, device):
    """One T in a fresh process: peak memory of explain_xclip above what was in use before it, printed as JSON."""
    _, bb = xclip_base(device)
    frames = np.random.RandomState(0).randint(0, 255, (count, 240, 320, 3)).astype(np.uint8)
    # warm-up: one window through the library's forward (thread pools, allocator), not explain_xclip itself,
    # which would leave exactly the T = num_frames call's buffers free for reuse and hide its own peak
    with torch.no_grad():
        bb.model(input_ids=bb.tokenize(PROMPTS).to(device),
                 pixel_values=bb.clip_pixels(frames[:bb.num_frames], bb.view(240, 320, "library"))[None].to(device))
    peak = peak_bytes(lambda: explain_xclip(bb, frames, PROMPTS, progress=False), device)
    print(json.dumps({"frames": count, "peak_mb": peak / 2 ** 20}))


def peak_mb(count, device) -> float:
    # glibc keeps freed buffers in the resident set and hands them out again, so a peak above a warmed-up base
    # hides whatever reuses them; buffers over 128 KiB mapped and unmapped on their own make it track live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, __file__, "--child", str(count), "--device", device],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", default="8,16,32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.device)
    import clip

    model, bb = xclip_base(args.device)
    prompts = PROMPTS
    ids = clip.tokenize(prompts, context_length=77).to(args.device)
    n = bb.num_frames
    rng = np.random.RandomState(0)
    print(f"X-CLIP base/32 (random weights), num_frames {n}, K={len(prompts)}, torch threads "
          f"{torch.get_num_threads()}")
    peaks = {}
    for count in (int(t) for t in args.frames.split(",")):
        frames = rng.randint(0, 255, (count, 240, 320, 3)).astype(np.uint8)
        view = bb.view(240, 320, "library")
        starts = range(0, count - n + 1, n)
        forward, explain = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with torch.no_grad():
                for s in starts:  # the library's path: its processor, then its forward
                    pixels = bb.clip_pixels(frames[s:s + n], view)[None].to(args.device)
                    model(input_ids=ids, pixel_values=pixels)
            forward.append(time.perf_counter() - start)
            start = time.perf_counter()
            explain_xclip(bb, frames, prompts, progress=False)
            explain.append(time.perf_counter() - start)
        f, e = statistics.median(forward), statistics.median(explain)
        peaks[count] = peak_mb(count, args.device)
        print(f"T={count} windows={len(starts)} forward={f:.3f}s explain={e:.3f}s explain_vs_forward={e / f:.2f} "
              f"peak_memory={peaks[count]:.1f}MB", flush=True)
    first = min(peaks)
    print(" ".join([f"peak_mb_T{t}={p:.1f}" for t, p in peaks.items()]
                   + [f"growth_T{t}={p / peaks[first]:.2f}(T/T0={t / first:.0f})" for t, p in peaks.items()
                      if t != first]))


if __name__ == "__main__":
    main()
