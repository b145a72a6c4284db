"""GEM, "Grounding Everything" (Bousselham et al., 2024): self-self attention in a parallel path.

The model runs unchanged (the original path x^l). From block s = depth - ``layers`` on, a parallel path starts as
the tokens entering block s, y = x^s, and each block l >= s adds to it (no MLP on the parallel path)

    y <- y + out_proj_l( (1/3) * sum_{p in q, k, v} A_p v_h )     for each head h

where, with h_l = the block's first norm of x^l (what q, k, v are projected from) and, per image, the adaptive
inverse temperature tau = mean_tokens ||h_l||_2 * d^-1/2 (d the head width; ``temperature`` replaces tau):

    p <- softmax(tau * n(p) n(p)^T) n(p)      repeated ``iterations`` times, n() the L2 normalisation per token
    A_p = softmax(tau * n(p) n(p)^T)

Each patch's feature proj(norm_post(y_i)) is compared with the prompt (cosine); each map is min-max normalised over
the patches (as the authors show them); a map with no spread is all zeros. Needs a class token (the per-token
projection into the joint space is the class token's ``norm_post`` and ``proj``).

Default depth of the parallel path: the last 6 blocks, the authors' setting (WalBouss/GEM, ``gem/gem_wrapper.py``:
``depth=7`` swaps blocks -1 .. -6 for every open_clip ViT, the default of ``create_gem_model`` for ViT-B/16, ViT-B/32
and ViT-L/14 alike); below 12 blocks half the blocks, at least one (``clip_surgery.default_blocks``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .clip_surgery import added_path_blocks, head_merge, head_split, minmax_patches
from .gradients import grid_maps, prepare


def self_self(p: torch.Tensor, tau: torch.Tensor, iterations: int) -> torch.Tensor:
    """A_p (B, heads, L, L) of one projection p (B, heads, L, d) after ``iterations`` clustering steps."""
    for _ in range(iterations):
        p = F.normalize(p, dim=-1)
        p = (tau * p @ p.transpose(-1, -2)).softmax(dim=-1) @ p
    p = F.normalize(p, dim=-1)
    return (tau * p @ p.transpose(-1, -2)).softmax(dim=-1)


def gem(model, pixels, text_features, *, layers=None, iterations: int = 1, temperature=None):
    """GEM maps (B, K, h, w) float32 in [0, 1] on the token grid of ``pixels`` (B, 3, H, W normalised).

    ``text_features`` (K, D), not normalised. ``layers``: how many last blocks carry the parallel path (default 6
    as the authors, half the blocks below 12); ``iterations``: self-self clustering steps (default 1, the
    authors'); ``temperature``: a fixed positive inverse temperature instead of the adaptive one. Refused on models
    without a class token (SigLIP, CoCa).
    """
    return gem_with_features(model, pixels, text_features, layers=layers, iterations=iterations,
                             temperature=temperature)[0]


def gem_with_features(model, pixels, text_features, *, layers=None, iterations: int = 1, temperature=None):
    """``gem`` and the model's own image features (B, D) of the same forward (the original path)."""
    bb, grid, text = prepare(model, pixels, text_features, "gem")
    start = added_path_blocks(bb, layers)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0 (self-self clustering steps), got {iterations!r}")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not temperature > 0):
        raise ValueError(f"temperature must be a positive number or None (adaptive), got {temperature!r}")
    with torch.no_grad():
        x = bb.tokens_before(pixels, start) if start else bb.embed_image(pixels)
        y = x
        for i in range(start, bb.depth):
            heads = bb.heads(i)
            h = bb.attention_input(i, x)
            d = h.shape[-1] // heads
            tau = h.norm(dim=-1).mean(dim=-1)[:, None, None, None] * d ** -0.5 if temperature is None \
                else torch.tensor(float(temperature), dtype=h.dtype, device=h.device)
            q, k, v = (head_split(p, heads) for p in bb.qkv(i, x))
            mixed = sum(self_self(p, tau, iterations) for p in (q, k, v)) / 3
            y = y + bb.attention_out(i, head_merge(mixed @ v))
            x = bb.run_blocks(x, i, i + 1)
        patches = F.normalize(bb.pool_rows(y[:, bb.prefix:]), dim=-1)  # (B, P, D)
        scores = (patches @ text.T).transpose(1, 2)  # (B, K, P)
    return grid_maps(minmax_patches(scores.float()), grid), bb.pool(x)
