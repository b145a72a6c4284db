"""Grad-ECLIP over many frames and prompts: batched, against plain encode_image and the official procedure.

Measured in one run on ViT-B/32 shapes with random weights (default 64 frames of 224x224, 4 prompts; the text
features are computed once beforehand and not timed):

- ``encode_image``: the plain forward of the frames (batches of --batch-size), the physical floor;
- batched Grad-ECLIP: ``grad_eclip_image`` on the same batches, all prompts at once;
- the official code's procedure: per frame, one dense forward that keeps the autograd graph of every block (the
  last block decomposed as one head), then one backward per prompt.

The last line reads ``encode_image_ratio=X naive_loop_speedup=Y``: X = batched Grad-ECLIP / encode_image time,
Y = official procedure / batched Grad-ECLIP time. Targets on CPU: X <= 1.3, Y >= 1.5.

    python benchmarks/video_throughput.py [--frames 64] [--prompts 4] [--batch-size 16] [--device cpu]
"""
import argparse
import time

import torch
import torch.nn.functional as F

import gradeclip  # first: it imports openai-clip with its pkg_resources warning silenced
from clip.model import CLIP
from gradeclip.backbones.vit import attend, embed_image, finish_block, image_features, qkv, run_blocks


def official_procedure(model, frame, text):
    """One frame (1, 3, H, W), the way the official notebook does it: graph through every block, a backward per
    prompt with retain_graph, then the Grad-ECLIP map from the last block's q, k, v."""
    visual = model.visual
    blocks = visual.transformer.resblocks
    x = run_blocks(blocks[:-1], embed_image(visual, frame))  # graph kept: the weights require grad
    q, k, v = qkv(blocks[-1], x)
    o, _ = attend(q, k, v, 1)
    x = finish_block(blocks[-1], x, o)
    cosine = F.normalize(image_features(visual, x[:, 0]), dim=-1) @ text.T
    q_cls = F.normalize(q[:, 0], dim=-1)
    lam = torch.einsum("bc,bpc->bp", q_cls, F.normalize(k[:, 1:], dim=-1))
    lam = (lam - lam.amin(-1, keepdim=True)) / (lam.amax(-1, keepdim=True) - lam.amin(-1, keepdim=True))
    maps = []
    for j in range(text.shape[0]):
        (grad,) = torch.autograd.grad(cosine[0, j], o, retain_graph=True)
        maps.append((grad[:, 0, None] * v[:, 1:] * lam[..., None]).sum(-1).relu())
    return torch.stack(maps, 1)


def timed(fn, sync):
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels (a multiple of 32)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per measurement")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                 context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                 transformer_layers=12).eval().to(args.device)
    prompts = ["a person walking", "a tree", "a car", "the sky", "a dog", "a road", "grass", "a bicycle"]
    prompts = (prompts * (args.prompts // len(prompts) + 1))[: args.prompts]
    text = gradeclip.encode_prompts(model, prompts)  # once, not timed
    frames = torch.randn(args.frames, 3, args.size, args.size, device=args.device)
    batches = frames.split(args.batch_size)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"ViT-B/32 shapes, random weights; {args.frames} frames of {args.size}x{args.size}, {args.prompts} "
          f"prompts, batches of {args.batch_size}; torch {torch.__version__} on {args.device}, "
          f"{torch.get_num_threads()} threads")

    def encode():
        with torch.no_grad():
            for b in batches:
                model.encode_image(b)

    def batched():
        for b in batches:
            gradeclip.grad_eclip_image(model, b, text)

    def official():
        normed = F.normalize(text, dim=-1)
        for i in range(args.frames):
            official_procedure(model, frames[i:i + 1], normed)

    encode()  # warm-up
    t_encode = min(timed(encode, sync) for _ in range(args.repeats))
    t_batched = min(timed(batched, sync) for _ in range(args.repeats))
    t_official = min(timed(official, sync) for _ in range(max(1, args.repeats - 1)))
    for name, t in (("encode_image", t_encode), ("batched Grad-ECLIP", t_batched),
                    ("official procedure", t_official)):
        print(f"{name:20s} {t:8.2f} s  {args.frames / t:8.1f} frames/s")
    print(f"encode_image_ratio={t_batched / t_encode:.2f} naive_loop_speedup={t_official / t_batched:.2f}")


if __name__ == "__main__":
    main()
