"""Train a small CLIP on synthetic shape scenes, for offline demos and for measuring explanations against masks.

The model has the openai-clip architecture (ViT image encoder, the real `clip.tokenize` vocabulary), so
`gradeclip.load_clip(path)` loads it like any OpenAI checkpoint. Contrastive loss over image/caption pairs; a caption
names all or some of a scene's objects, and counts as a positive for every scene in the batch holding them all. Deterministic for a given seed, machine and
thread count. On 2 CPU cores the default run takes about 15 minutes.

    python scripts/train_shapes_clip.py [--steps 1800] [--out data/shapes_clip.pt]

Writes the checkpoint (float16 state dict, OpenAI format) and a JSON beside it with the settings and the zero-shot
accuracy on held-out single-object scenes for the prompts "a {colour} {shape}".
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import gradeclip  # first: it imports openai-clip with its pkg_resources warning silenced
from clip.model import CLIP
from gradeclip.eval.shapes import class_prompts, random_scene, scenes

CONFIG = dict(embed_dim=64, image_resolution=48, vision_layers=4, vision_width=128, vision_patch_size=8,
              context_length=16, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=3)
HELD_OUT = 10_000_000  # seeds from here on are never trained on
MEAN = torch.tensor(gradeclip.backbones.pixels.CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(gradeclip.backbones.pixels.CLIP_STD).view(1, 3, 1, 1)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD


def zero_shot_accuracy(model, n: int = 600, seed: int = HELD_OUT) -> float:
    """Accuracy over the 12 prompts "a {colour} {shape}" on n held-out single-object scenes."""
    prompts = class_prompts()
    held = [random_scene(seed + i, size=CONFIG["image_resolution"], max_objects=1) for i in range(n)]
    labels = torch.tensor([prompts.index(f"a {s.objects[0].name}") for s in held])
    with torch.no_grad():
        text = F.normalize(gradeclip.encode_prompts(model, prompts), dim=-1)
        image = F.normalize(model.encode_image(to_tensor(np.stack([s.image for s in held]))), dim=-1)
    return float(((image @ text.T).argmax(1) == labels).float().mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch-size", type=int, default=192)
    parser.add_argument("--scenes", type=int, default=40_000, help="training scenes, generated once")
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "shapes_clip.pt"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    start = time.time()
    train = scenes(0, args.scenes, size=CONFIG["image_resolution"])
    images = np.stack([s.image for s in train])
    contents = [frozenset(o.name for o in s.objects) for s in train]
    print(f"{args.scenes} scenes generated in {time.time() - start:.0f} s")

    model = CLIP(**CONFIG).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / args.steps))))
    for step in range(args.steps):
        batch = rng.choice(args.scenes, size=args.batch_size, replace=False)
        # Half the captions name every object, half a random subset (often one object), always in random order,
        # so that "a red circle" is learnt to match any scene that holds a red circle.
        named = []
        for i in batch:
            names = sorted(contents[i])  # sorted: set order varies with the hash seed
            keep = len(names) if rng.random() < 0.5 else int(rng.integers(1, len(names) + 1))
            named.append([names[j] for j in rng.permutation(len(names))[:keep]])
        tokens = gradeclip.tokenize(model, [" and ".join(f"a {n}" for n in ns) for ns in named])
        image = F.normalize(model.encode_image(to_tensor(images[batch])), dim=-1)
        text = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image @ text.T
        # image i and caption j match when every object the caption names is in scene i
        match = torch.tensor([[set(ns) <= contents[i] for ns in named] for i in batch], dtype=torch.float32)
        loss = (F.cross_entropy(logits, match / match.sum(1, keepdim=True))
                + F.cross_entropy(logits.T, (match / match.sum(0, keepdim=True)).T)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - start:.0f} s", flush=True)
    model.eval()
    accuracy = zero_shot_accuracy(model)
    minutes = (time.time() - start) / 60
    print(f"zero-shot accuracy on 600 held-out single-object scenes: {accuracy:.3f}; {minutes:.1f} min")
    out = Path(args.out)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, out)
    out.with_suffix(".json").write_text(json.dumps({
        "config": CONFIG, "steps": args.steps, "batch_size": args.batch_size, "scenes": args.scenes,
        "lr": args.lr, "seed": args.seed, "minutes": round(minutes, 1), "threads": torch.get_num_threads(),
        "zero_shot_accuracy": round(accuracy, 4), "zero_shot_prompts": class_prompts(),
        "held_out_seeds_from": HELD_OUT}, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MB) and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
