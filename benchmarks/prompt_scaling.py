"""How the cost of Grad-ECLIP grows with the number of prompts, on ViT-B/32 shapes with random weights.

One forward serves every prompt and the prompts share one batched backward through the class-token path of the
last block, so 16 prompts should cost little more than 1 (target: at most 1.5x). Plain ``encode_image`` on the
same frames is printed as the floor. Timings are medians of --repeats runs in one process; the last line reads
``prompts_16_vs_1=R encode_image_ratio=X``.

    python benchmarks/prompt_scaling.py [--frames 8] [--height 240] [--width 320] [--repeats 5]
"""
import argparse
import statistics
import time

import torch

from gradeclip import grad_eclip_image  # first: it imports openai-clip with its pkg_resources warning silenced
from gradeclip.backbones.pixels import native_size
from gradeclip.backbones.vit import encode_pixels
from clip.model import CLIP


def vit_b32():
    torch.manual_seed(0)
    return CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                transformer_layers=12).eval()


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=240, help="frame height before rounding to the patch grid")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = vit_b32()
    h, w = native_size(args.height, args.width, 32)
    pixels = torch.randn(args.frames, 3, h, w)
    text = torch.randn(16, 512)  # text features are given, as from encode_text once beforehand
    print(f"ViT-B/32 shapes, random weights; {args.frames} frames at {h}x{w}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    t_encode = median_time(lambda: encode_pixels(model, pixels), args.repeats)
    results = {}
    for k in (1, 4, 16):
        results[k] = median_time(lambda: grad_eclip_image(model, pixels, text[:k]), args.repeats)
        print(f"grad_eclip_image, {k:2d} prompt(s): {results[k] * 1000:8.1f} ms")
    print(f"encode_pixels (no explanation): {t_encode * 1000:8.1f} ms")
    print(f"prompts_16_vs_1={results[16] / results[1]:.2f} encode_image_ratio={results[1] / t_encode:.2f}")


if __name__ == "__main__":
    main()
