"""CLIP Surgery (Li et al., 2023): value-value attention in an added path, and feature surgery.

Architecture surgery. The model runs unchanged (the original path x^l). From block s = depth - ``layers`` on, an
added path starts as the tokens entering block s, y = x^s, and each block l >= s adds to it

    y <- y + out_proj_l( softmax_L( d^-1/2 v_h v_h^T ) v_h )      for each head h (v from the block's norm of x^l)

(value-value attention, computed from the original path's tokens; no MLP on the added path). Each patch's feature
is f_i = proj(norm_post(y_i)), L2-normalised; the class token's feature c comes from the original path (the model's
own image embedding), L2-normalised.

Feature surgery, with the unit text features t_k (K prompts):

    p_k = softmax_k(2 * c . t_k),   w_k = p_k / mean_k p_k
    e_{i,k,c} = f_{i,c} t_{k,c} w_k,   r_{i,c} = mean_k e_{i,k,c}    (the redundant feature common to all prompts)
    S_{i,k} = sum_c (e_{i,k,c} - r_{i,c})

With one prompt nothing is common to several prompts and S is the cosine f_i . t_k. Each map S[:, k] is min-max
normalised over the patches (as the authors show them); a map with no spread is all zeros. Needs a class token.

Default depth of the added path: the last 6 blocks, the authors' setting for every ViT they release (xmed-lab/
CLIP_Surgery, ``clip/clip_surgery_model.py``: the same six last blocks for ViT-B/32, ViT-B/16, ViT-L/14 and
ViT-L/14@336px, i.e. half of ViT-B's 12 blocks and a quarter of ViT-L's 24); a model with fewer than 12 blocks gets
half its blocks (at least one), the ViT-B proportion. GEM (``gem.py``) uses the same six (``added_path_blocks``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import positive_int
from .gradients import grid_maps, prepare


def head_split(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, W) -> (B, heads, L, W / heads)."""
    b, length, _ = t.shape
    return t.reshape(b, length, heads, -1).transpose(1, 2)


def head_merge(t: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads * d)."""
    b, heads, length, d = t.shape
    return t.transpose(1, 2).reshape(b, length, heads * d)


AUTHORS_BLOCKS = 6  # the last blocks CLIP Surgery's and GEM's authors modify, whatever the ViT's depth


def default_blocks(depth: int) -> int:
    """How many last blocks carry the added path by default: the authors' 6 (ViT-B/32, ViT-B/16: 6 of 12; ViT-L/14:
    6 of 24), half the blocks (at least one) below 12 blocks."""
    return min(AUTHORS_BLOCKS, max(1, depth // 2))


def added_path_blocks(bb, layers) -> int:
    """The first block of the added path: depth - layers (default ``default_blocks(depth)``)."""
    if layers is None:
        return bb.depth - default_blocks(bb.depth)
    positive_int(layers, "layers", f" (last blocks with the added path, at most {bb.depth})")
    if layers > bb.depth:
        raise ValueError(f"layers must be at most the model's {bb.depth} blocks, got {layers}")
    return bb.depth - layers


def minmax_patches(scores: torch.Tensor) -> torch.Tensor:
    """(B, K, P) scores min-max normalised over P into [0, 1]; a row with no spread becomes zeros."""
    low = scores.amin(dim=-1, keepdim=True)
    span = scores.amax(dim=-1, keepdim=True) - low
    return torch.where(span > 0, (scores - low) / span.clamp_min(torch.finfo(scores.dtype).tiny),
                       torch.zeros_like(scores))


def clip_surgery(model, pixels, text_features, *, layers=None):
    """CLIP Surgery maps (B, K, h, w) float32 in [0, 1] on the token grid of ``pixels`` (B, 3, H, W normalised).

    ``text_features`` (K, D), not normalised. ``layers``: how many last blocks carry the added value-value path
    (default 6 as the authors, half the blocks below 12: ``default_blocks``). Refused on models without a class token
    (SigLIP, CoCa).
    """
    return clip_surgery_with_features(model, pixels, text_features, layers=layers)[0]


def clip_surgery_with_features(model, pixels, text_features, *, layers=None):
    """``clip_surgery`` and the model's own image features (B, D) of the same forward (the original path)."""
    bb, grid, text = prepare(model, pixels, text_features, "clip_surgery")
    start = added_path_blocks(bb, layers)
    with torch.no_grad():
        x = bb.tokens_before(pixels, start) if start else bb.embed_image(pixels)
        y = x
        for i in range(start, bb.depth):
            heads = bb.heads(i)
            q, k, v = bb.qkv(i, x)
            vh = head_split(v, heads)
            vv = (vh @ vh.transpose(-1, -2) * vh.shape[-1] ** -0.5).softmax(dim=-1)
            y = y + bb.attention_out(i, head_merge(vv @ vh))
            x = bb.run_blocks(x, i, i + 1)
        patches = F.normalize(bb.pool_rows(y[:, bb.prefix:]), dim=-1)  # (B, P, D)
        features = bb.pool(x)  # (B, D): the model's own embedding
        cls = F.normalize(features, dim=-1)
        if text.shape[0] == 1:
            scores = patches @ text.T  # (B, P, 1)
        else:
            weight = (2 * cls @ text.T).softmax(dim=-1)  # (B, K)
            weight = weight / weight.mean(dim=-1, keepdim=True)
            e = patches[:, :, None, :] * text[None, None] * weight[:, None, :, None]  # (B, P, K, D)
            scores = (e - e.mean(dim=2, keepdim=True)).sum(dim=-1)  # (B, P, K)
    return grid_maps(minmax_patches(scores.transpose(1, 2).float()), grid), features
