"""X-CLIP's video-level Grad-ECLIP against the model's own forward, xclip-base-patch32 sizes, random weights.

The transformers default ``XCLIPConfig`` (ViT-B/32 at 224, num_frames 8). Per clip length T = 8, 16, 32 frames
(1, 2, 4 windows) and K = 4 prompts: ``XCLIPModel.__call__`` without autograd on each window's pixels (the
library's own score, its image processor included), then ``explain_xclip`` on the same frames (preprocessing,
text features, maps, importance).
Timings are medians of --repeats rounds in one process; each T ends with a line
``T=.. windows=.. explain_vs_forward=R`` (target <= 1.3x, as issue 17's for the mean-pooled clip score).

    python benchmarks/xclip_level.py [--repeats 3] [--frames 8,16,32]
"""
import argparse
import statistics
import time

import numpy as np
import torch

from gradeclip.backbones.base import backbone_of  # first: gradeclip silences openai-clip's import warning
from gradeclip.xclip_level import explain_xclip


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", default="8,16,32")
    args = parser.parse_args()
    import clip
    from transformers import XCLIPConfig, XCLIPModel

    torch.manual_seed(0)
    model = XCLIPModel(XCLIPConfig()).eval()
    bb = backbone_of(model, tokenizer=lambda p: clip.tokenize(p, context_length=77))
    prompts = ["a person walking", "a person carrying a bag", "a dog", "a red car"]
    ids = clip.tokenize(prompts, context_length=77)
    n = bb.num_frames
    rng = np.random.RandomState(0)
    print(f"X-CLIP base/32 (random weights), num_frames {n}, K={len(prompts)}, torch threads "
          f"{torch.get_num_threads()}")
    for count in (int(t) for t in args.frames.split(",")):
        frames = rng.randint(0, 255, (count, 240, 320, 3)).astype(np.uint8)
        view = bb.view(240, 320, "library")
        starts = range(0, count - n + 1, n)
        forward, explain = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with torch.no_grad():
                for s in starts:  # the library's path: its processor, then its forward
                    model(input_ids=ids, pixel_values=bb.clip_pixels(frames[s:s + n], view)[None])
            forward.append(time.perf_counter() - start)
            start = time.perf_counter()
            explain_xclip(bb, frames, prompts, progress=False)
            explain.append(time.perf_counter() - start)
        f, e = statistics.median(forward), statistics.median(explain)
        print(f"T={count} windows={len(starts)} forward={f:.3f}s explain={e:.3f}s explain_vs_forward={e / f:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
