"""Every registered method through ``gradeclip.explain`` on a ViT-B/32-shaped CLIP with random weights.

Checks that each method runs at ViT-B/32 size on the sample video's native 320x240 frame (a 10x8 token grid, not
the 7x7 the model was built for), returns finite maps in [0, 1], and prints the time per map (the best of
``--repeat`` calls) and its ratio to Grad-ECLIP's, measured in the same run. Random weights say nothing about map
quality; this is a shape, stability and cost check.

    python benchmarks/methods_vitb32.py [--prompts 2] [--skip scorecam] [--only legrad clip_surgery gem]
"""
import argparse
import time

import numpy as np
import torch

import gradeclip  # first: it imports openai-clip with its pkg_resources warning silenced
from clip.model import CLIP


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out")
    parser.add_argument("--only", nargs="*", default=None, help="only these methods (Grad-ECLIP is always timed)")
    parser.add_argument("--repeat", type=int, default=1, help="calls per method; the fastest counts")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                 context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                 transformer_layers=12).eval()
    frame = gradeclip.read_frames(gradeclip.sample_video(), "middle")
    prompts = ["a person walking", "a tree", "the sun in the sky", "a road"][: args.prompts]
    print(f"ViT-B/32 shapes, random weights; frame {frame.shape[1:3]}, {len(prompts)} prompts; "
          f"{torch.get_num_threads()} threads")
    gradeclip.explain(model, frame, prompts, method="grad_eclip", progress=False)  # warm-up: first-call costs
    names = [n for n in gradeclip.method_names() if n not in args.skip and (args.only is None or n in args.only)]
    names = ["grad_eclip"] + [n for n in names if n != "grad_eclip"]
    failures, reference = 0, None
    for name in names:
        times = []
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            result = gradeclip.explain(model, frame, prompts, method=name, progress=False)
            times.append((time.perf_counter() - start) / len(prompts))
        seconds = min(times)
        reference = reference or seconds
        ok = (result.raw.shape == (1, len(prompts), 8, 10) and np.isfinite(result.maps).all()
              and result.maps.min() >= 0 and result.maps.max() <= 1 and (result.raw >= 0).all())
        failures += not ok
        print(f"{name:22s} raw {result.raw.shape}  {'ok' if ok else 'FAILED'}  {seconds:7.3f} s / map  "
              f"{seconds / reference:5.2f} x Grad-ECLIP")
    print(f"methods_failed={failures}")


if __name__ == "__main__":
    main()
