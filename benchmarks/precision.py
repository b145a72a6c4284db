"""bf16 (and on a GPU fp16) against fp32 for Grad-ECLIP on a ViT-B/32-shaped CLIP with random weights.

Times ``gradeclip.explain(..., precision=P)`` on a batch of frames (the sample video's native 320x240, a 10x8
token grid) and prints, from one run, the ratio of each reduced precision's time to fp32's, with the agreement
that the tests require (Spearman rank correlation of each frame-size map with fp32's, the largest cosine difference).
On CPU expect little gain: bf16 matrix products are fast only on CPUs with AMX/AVX512-BF16. The same run also
times bf16 with the extra forward that Grad-ECLIP's own float32 readout makes redundant (the ratio it saves). Where CUDA is available the same is measured on the GPU, fp16 included.
Random weights say nothing about map quality; this is a cost and agreement check.

    python benchmarks/precision.py [--frames 4] [--prompts 4] [--repeats 3]
"""
import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

import gradeclip  # first: it imports openai-clip with its pkg_resources warning silenced
import gradeclip.precision as precision_module
from clip.model import CLIP


def vit_b32() -> CLIP:
    torch.manual_seed(0)
    return CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                transformer_layers=12).eval()


def run_once(model, frames, prompts, precision: str, extra_readout: bool):
    """(seconds, Explanation) of one ``explain`` call; ``extra_readout``: with the float32-readout forward that
    Grad-ECLIP's own readout makes redundant (``precision.own_readout_is_exact`` switched off for the call)."""
    own = precision_module.own_readout_is_exact
    if extra_readout:
        precision_module.own_readout_is_exact = lambda *_: False
    try:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = gradeclip.explain(model, frames, prompts, progress=False, precision=precision, input="native")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start, result
    finally:
        precision_module.own_readout_is_exact = own


def measure(device: str, precisions, frames, prompts, repeats: int) -> None:
    """Each configuration's best of ``repeats`` rounds; every round runs all configurations in turn, so that a load
    that changes during the run (a shared machine) weighs on all of them alike."""
    model = vit_b32().to(device)
    configs = [("fp32", False)] + [(p, extra) for p in precisions for extra in (False, True)]
    for precision, extra in configs:  # warm-up (allocations, kernels)
        run_once(model, frames[:1], prompts, precision, extra)
    best, results = {c: float("inf") for c in configs}, {}
    for _ in range(repeats):
        for config in configs:
            seconds, results[config] = run_once(model, frames, prompts, *config)
            best[config] = min(best[config], seconds)
    base, full = best[("fp32", False)], results[("fp32", False)]
    print(f"{device}: fp32 {base:.3f} s for {len(frames)} frames x {len(prompts)} prompts (best of {repeats})")
    for precision in precisions:
        seconds, reduced = best[(precision, False)], results[(precision, False)]
        extra, again = best[(precision, True)], results[(precision, True)]
        rho = min(spearmanr(full.maps[i, j].ravel(), reduced.maps[i, j].ravel())[0]  # frame-size maps, as tested
                  for i in range(full.raw.shape[0]) for j in range(full.raw.shape[1]))
        print(f"{device}: {precision} {seconds:.3f} s; time {precision}/fp32 = {seconds / base:.2f}; "
              f"min rank correlation {rho:.4f}; max |cosine difference| {np.abs(full.cosine - reduced.cosine).max():.2e}")
        print(f"{device}: {precision} with the extra readout forward {extra:.3f} s ({extra / base:.2f} of fp32); "
              f"without it / with it = {seconds / extra:.2f}; max |cosine difference| between the two "
              f"{np.abs(again.cosine - reduced.cosine).max():.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    frame = gradeclip.read_frames(gradeclip.sample_video(), "middle")
    frames = np.repeat(frame, args.frames, axis=0)
    frames = np.clip(frames.astype(int) + np.arange(args.frames)[:, None, None, None] * 7, 0, 255).astype(np.uint8)
    prompts = ["a person walking", "a tree", "the sun in the sky", "a road", "a car", "a dog", "grass", "a house",
               ][: args.prompts]
    print(f"ViT-B/32 shapes, random weights; frames {frames.shape[1:3]}; {torch.get_num_threads()} CPU threads")
    measure("cpu", ["bf16"], frames, prompts, args.repeats)
    if torch.cuda.is_available():
        measure("cuda", ["bf16", "fp16"], frames, prompts, args.repeats)
    else:
        print("cuda: not available here; GPU bf16/fp16 unmeasured")


if __name__ == "__main__":
    main()
