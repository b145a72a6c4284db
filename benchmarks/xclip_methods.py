"""What each method costs through X-CLIP's video score, and what bf16 costs against fp32, in one run.

The transformers default ``XCLIPConfig`` (ViT-B/32 at 224, num_frames 8), random weights, one window of 8 frames
(240x320, library input) and K = 4 prompts. For each method of ``xclip_methods.XCLIP_METHODS``: ``explain_xclip``
at fp32 against the library's own forward of the window (``XCLIPModel.__call__`` without autograd, its processor
included), and with ``--precision`` also at bf16 against the same method at fp32. Medians of --repeats rounds,
alternating, in one process; each method ends with a line ``method=.. vs_forward=R [bf16_vs_fp32=R]``.

    python benchmarks/xclip_methods.py [--repeats 3] [--precision]
"""
import argparse
import statistics
import time

import numpy as np
import torch

from gradeclip.backbones.base import backbone_of  # first: gradeclip silences openai-clip's import warning
from gradeclip.xclip_level import explain_xclip
from gradeclip.xclip_methods import XCLIP_METHODS


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", action="store_true", help="also time bf16 against fp32")
    parser.add_argument("--methods", default=",".join(XCLIP_METHODS))
    args = parser.parse_args()
    import clip
    from transformers import XCLIPConfig, XCLIPModel

    torch.manual_seed(0)
    model = XCLIPModel(XCLIPConfig()).eval()
    bb = backbone_of(model, tokenizer=lambda p: clip.tokenize(p, context_length=77))
    prompts = ["a person walking", "a person carrying a bag", "a dog", "a red car"]
    ids = clip.tokenize(prompts, context_length=77)
    n = bb.num_frames
    frames = np.random.RandomState(0).randint(0, 255, (n, 240, 320, 3)).astype(np.uint8)
    view = bb.view(240, 320, "library")
    print(f"X-CLIP base/32 (random weights), one window of {n} frames, K={len(prompts)}, torch threads "
          f"{torch.get_num_threads()}")

    def forward():
        with torch.no_grad():
            model(input_ids=ids, pixel_values=bb.clip_pixels(frames, view)[None])

    def timed(call):
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    for method in args.methods.split(","):
        runs = {"forward": [], "fp32": [], "bf16": []}
        for _ in range(args.repeats):
            runs["forward"].append(timed(forward))
            runs["fp32"].append(timed(lambda: explain_xclip(bb, frames, prompts, method=method, progress=False)))
            if args.precision:
                runs["bf16"].append(timed(lambda: explain_xclip(bb, frames, prompts, method=method, progress=False,
                                                                precision="bf16")))
        f, e = statistics.median(runs["forward"]), statistics.median(runs["fp32"])
        line = f"method={method} forward={f:.3f}s explain={e:.3f}s vs_forward={e / f:.2f}"
        if args.precision:
            line += f" bf16_vs_fp32={statistics.median(runs['bf16']) / e:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
