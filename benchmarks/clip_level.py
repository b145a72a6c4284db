"""Clip-level Grad-ECLIP (``explain_clip``, mean pooling) against one batched ``encode_image`` over the same frames.

Measured in one run on ViT-B/32 shapes with random weights, T = 8, 16, 32 frames of 224x224 and K = 4 prompts:

- ``encode_image``: the library's forward of the T frames' pixels (already normalised), in batches of
  --batch-size: the physical floor of any clip score;
- ``explain_clip_encoded`` (the prompts encoded once beforehand, not timed, as in ``video_throughput.py``):
  everything else the call does from uint8 frames: resize and normalise, the scoring pass (tokens before the
  decomposed block kept), the explaining pass over the last block for all prompts, the maps upsampled to frame
  size on the clip's shared scale; and, once, the whole ``explain_clip`` with its prompt encoding.

Peak memory vs T: each T runs in a child process, which reports its peak (CUDA: ``max_memory_allocated``; CPU:
the resident set sampled every millisecond during the call, above what it was before). The last line reads
``ratio_T8=.. ratio_T16=.. ratio_T32=.. peak_mb_T8=.. peak_mb_T16=.. peak_mb_T32=..``. Target: ratios <= 1.3;
memory at most linear in T (frames go through the model in batches).

    python benchmarks/clip_level.py [--frames 8 16 32] [--prompts 4] [--batch-size 16] [--device cpu]
"""
import argparse
import json
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import torch

import gradeclip  # first: it imports openai-clip with its pkg_resources warning silenced
from clip.model import CLIP
from gradeclip.clip_level import explain_clip_encoded

PROMPTS = ["a person walking", "a tree", "a car", "the sky", "a dog", "a road", "grass", "a bicycle"]


def vit_b32(device):
    torch.manual_seed(0)
    return CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                transformer_layers=12).eval().to(device)


def timed(fns, sync, repeats):
    """Best time of each of ``fns`` over ``repeats`` rounds, the functions alternating within each round, so that a
    change of the machine's load during the run weighs on all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def frames_of(count, size=224):
    return np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def rss() -> int:
    """The process's resident set now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class PeakRss(threading.Thread):
    """Samples the resident set every millisecond until stopped; ``peak`` is the largest seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = rss(), True

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)


def peak_bytes(run, device: str) -> int:
    """Peak memory of ``run()`` above what was in use before it, in bytes: CUDA's allocator statistics on a GPU,
    else the resident set sampled every millisecond (``PeakRss``)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base, sampler = rss(), PeakRss()
    sampler.start()
    try:
        run()
    finally:
        sampler.running = False
        sampler.join()
    return sampler.peak - base


def child(args):
    """One T in a fresh process: peak memory of explain_clip above what was in use before it, printed as JSON."""
    model = vit_b32(args.device)
    prompts = (PROMPTS * 2)[: args.prompts]
    text = gradeclip.encode_prompts(model, prompts)
    frames = frames_of(args.child)
    explain_clip_encoded(model, frames_of(1), prompts, text, input="native", progress=False)  # warm-up
    peak = peak_bytes(lambda: explain_clip_encoded(model, frames, prompts, text, input="native",
                                                   batch_size=args.batch_size, progress=False), args.device)
    print(json.dumps({"frames": args.child, "peak_mb": peak / 2 ** 20}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    model = vit_b32(args.device)
    prompts = (PROMPTS * 2)[: args.prompts]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    text = gradeclip.encode_prompts(model, prompts)  # once, not timed (as in video_throughput.py)
    print(f"ViT-B/32 shapes, random weights; frames of 224x224, {args.prompts} prompts, batches of "
          f"{args.batch_size}; torch {torch.__version__} on {args.device}, {torch.get_num_threads()} threads")
    summary = []
    for count in args.frames:
        frames = frames_of(count)
        pixels = gradeclip.to_pixels(model, frames, input="native").to(args.device)

        def encode():
            with torch.no_grad():
                for batch in pixels.split(args.batch_size):
                    model.encode_image(batch)

        def explain():
            explain_clip_encoded(model, frames, prompts, text, input="native", batch_size=args.batch_size,
                                 progress=False)

        def explain_with_text():
            gradeclip.explain_clip(model, frames, prompts, input="native", batch_size=args.batch_size,
                                   progress=False)

        encode()
        explain()  # warm-up
        t_encode, t_explain, t_whole = timed([encode, explain, explain_with_text], sync, args.repeats)
        out = subprocess.run([sys.executable, __file__, "--child", str(count), "--prompts", str(args.prompts),
                              "--batch-size", str(args.batch_size), "--device", args.device],
                             capture_output=True, text=True, check=True)
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
        print(f"T={count:3d}  encode_image {t_encode:7.3f} s  explain_clip (prompts encoded) {t_explain:7.3f} s  "
              f"ratio {t_explain / t_encode:5.2f}  with prompt encoding {t_whole / t_encode:5.2f}  "
              f"peak memory {peak:8.1f} MB")
        summary += [f"ratio_T{count}={t_explain / t_encode:.2f}", f"peak_mb_T{count}={peak:.1f}"]
    print(" ".join(sorted(summary)))


if __name__ == "__main__":
    main()
