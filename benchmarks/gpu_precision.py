"""fp32 against bf16 and fp16 on a GPU: time and agreement of the maps and scores, ViT-B/16-shaped random models.

One short script for a lent GPU (a few minutes at most on an H200): for an openai-clip ViT-B/16 (12 blocks of
width 768, 12 heads, patch 16) and a SigLIP ViT-B/16 (transformers ``SiglipModel``, its attention-pooling head),
both with random weights, it explains a batch of 16 frames (320x240, the sample video's native size: a 20x15
token grid) against 4 prompts with each method, in each precision, through ``gradeclip.explain.explain_encoded``
(random text features: no tokenizer needed). It prints one table, measured in one run:

    model | method | precision | seconds (best of --repeats) | ÷ fp32 | min and median Spearman of the maps with
    fp32's (frame-size maps, as tests/test_precision.py ranks them) | max |cosine - fp32's| | max |prob - fp32's|

Random weights say nothing about map quality; this is a cost and agreement check. ``--dry-run``: tiny models (2
blocks of width 128, patch 8), 2 frames of 40x56, 2 prompts, one repeat, on CUDA where there is one, else on the
CPU (fp16 is refused there: its row says so); it checks that the script runs, in seconds.

    python benchmarks/gpu_precision.py [--dry-run] [--batch 16] [--prompts 4] [--repeats 5] [--methods grad_eclip gem]
"""
import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

import gradeclip  # first: it imports openai-clip with its pkg_resources warning silenced
from clip.model import CLIP
from gradeclip.backbones.base import backbone_of
from gradeclip.explain import explain_encoded

PRECISIONS = ("fp32", "bf16", "fp16")
CLASS_TOKEN_METHODS = ("grad_eclip", "legrad", "clip_surgery", "gem", "grad_cam")
POOLING_HEAD_METHODS = ("grad_eclip", "legrad", "grad_cam")  # the others need a class token


def openai_vit(tiny: bool) -> CLIP:
    torch.manual_seed(0)
    if tiny:
        return CLIP(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=128, vision_patch_size=8,
                    context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                    transformer_layers=1).eval()
    return CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                transformer_layers=12).eval()


def siglip_vit(tiny: bool):
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    width, layers, heads, patch, size = (128, 2, 2, 8, 32) if tiny else (768, 12, 12, 16, 224)
    config = SiglipConfig(
        text_config=dict(vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1,
                         num_attention_heads=heads, max_position_embeddings=16),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=size, patch_size=patch))
    return SiglipModel(config).eval()


def frames_for(count: int, height: int, width: int) -> np.ndarray:
    """(count, height, width, 3) uint8 RGB: the sample video's middle frame resized, shifted in brightness per frame."""
    frame = gradeclip.read_frames(gradeclip.sample_video(), "middle")[0]
    ys = np.linspace(0, frame.shape[0] - 1, height).astype(int)
    xs = np.linspace(0, frame.shape[1] - 1, width).astype(int)
    frame = frame[ys][:, xs].astype(int)
    return np.stack([np.clip(frame + 9 * i, 0, 255) for i in range(count)]).astype(np.uint8)


def timed(model, frames, prompts, text, method, precision, repeats, device):
    """(best seconds of ``repeats`` runs, the last Explanation)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = explain_encoded(model, frames, prompts, text, method=method, input="native", progress=False,
                                 batch_size=len(frames), precision=precision)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def rows_for(name, model, methods, frames, prompts, repeats, device, refusals):
    """Table rows (tuples of strings) of one model: every method in every precision; ``refusals`` (a set) gets the
    one-line reason of each refused cell."""
    model = model.to(device)
    dim = backbone_of(model).output_dim
    text = torch.randn(len(prompts), dim, generator=torch.Generator().manual_seed(1)).to(device)
    rows = []
    for method in methods:
        base, full = None, None
        for precision in PRECISIONS:
            try:
                timed(model, frames[:1], prompts, text, method, precision, 1, device)  # warm-up: kernels, caches
            except ValueError as error:  # fp16 on CPU, a method the precision refuses
                rows.append((name, method, precision, "refused", "", "", "", ""))
                refusals.add(f"{precision} {method}: {error}")
                continue
            seconds, result = timed(model, frames, prompts, text, method, precision, repeats, device)
            if precision == "fp32":
                base, full = seconds, result
                rows.append((name, method, precision, f"{seconds:.4f}", "1.00", "", "", ""))
                continue
            rhos = [spearmanr(full.maps[i, j].ravel(), result.maps[i, j].ravel())[0]
                    for i in range(full.maps.shape[0]) for j in range(full.maps.shape[1])]
            rows.append((name, method, precision, f"{seconds:.4f}", f"{seconds / base:.2f}",
                         f"{np.nanmin(rhos):.4f} / {np.nanmedian(rhos):.4f}",
                         f"{np.abs(full.cosine - result.cosine).max():.2e}",
                         f"{np.abs(full.probs - result.probs).max():.2e}"))
    model.cpu()
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def print_table(rows):
    header = ("model", "method", "precision", "seconds", "÷ fp32", "Spearman min / median", "max |Δcos|",
              "max |Δprob|")
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]

    def line(row):
        return "| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models and frames: checks that the script runs")
    parser.add_argument("--batch", type=int, default=16, help="frames explained in one batch")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell; the fastest counts")
    parser.add_argument("--methods", nargs="*", default=None, help="methods to time (default: all that apply)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.dry_run:
        parser.error("no CUDA device here: this benchmark is for a GPU (benchmarks/precision.py measures the CPU); "
                     "--dry-run checks the script on the CPU")
    batch, size, repeats = (2, (40, 56), 1) if args.dry_run else (args.batch, (240, 320), args.repeats)
    frames = frames_for(batch, *size)
    prompts = ["a person walking", "a tree", "the sun in the sky", "a road", "a car", "a dog", "grass",
               "a house"][: args.prompts if not args.dry_run else 2]
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none"
    print(f"device {device} ({gpu}); torch {torch.__version__}; TF32 matmul "
          f"{torch.backends.cuda.matmul.allow_tf32}; frames {batch} x {size[1]}x{size[0]}; {len(prompts)} prompts; "
          f"best of {repeats}; {'tiny models (dry run)' if args.dry_run else 'ViT-B/16 shapes, random weights'}")
    rows, refusals = [], set()
    for name, build, methods in (("openai ViT-B/16", openai_vit, CLASS_TOKEN_METHODS),
                                 ("SigLIP ViT-B/16", siglip_vit, POOLING_HEAD_METHODS)):
        chosen = [m for m in methods if args.methods is None or m in args.methods]
        rows += rows_for(name + (" (tiny)" if args.dry_run else ""), build(args.dry_run), chosen, frames, prompts,
                         repeats, device, refusals)
    print_table(rows)
    for reason in sorted(refusals):
        print("refused:", reason)


if __name__ == "__main__":
    main()
