"""Attention methods written once against the backbone interface: self-attention, attention rollout, MaskCLIP.

Every method: ``method(model, pixels, text_features) -> raw maps (B, K, h, w)``, float32, non-negative, on the
token grid. Prompt-independent methods (self_attention, rollout) repeat one map per frame for each prompt;
they read the class token's row and are refused on models without one (SigLIP).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbones.base import attend
from .gradients import grid_maps, prepare


def self_attention(model, pixels, text_features):
    """The class token's attention to the patches in the last block, heads averaged (prompt-independent)."""
    bb, grid, text = prepare(model, pixels, text_features, "self_attention")
    last = bb.depth - 1
    x = bb.tokens_before(pixels, -1)
    with torch.no_grad():
        q, k, v = bb.qkv(last, x)
        _, w = attend(q[:, :1], k, v, bb.heads(last))  # (B, heads, 1, L)
    cls = w.mean(dim=1)[:, 0, 1:]  # (B, P)
    return grid_maps(cls[:, None].expand(-1, text.shape[0], -1), grid)


def rollout(model, pixels, text_features):
    """Attention rollout (Abnar & Zuidema 2020): per block, heads averaged plus the identity for the residual,
    rows renormalised; the product over all blocks; the class token's row over the patches (prompt-independent)."""
    bb, grid, text = prepare(model, pixels, text_features, "rollout")
    joint = None
    with torch.no_grad():
        x = bb.embed_image(pixels)
        for i in range(bb.depth):
            q, k, v = bb.qkv(i, x)
            o, w = attend(q, k, v, bb.heads(i))
            x = bb.finish(i, x, o)
            eye = torch.eye(w.shape[-1], device=w.device, dtype=w.dtype)
            a = w.mean(dim=1) + eye
            a = a / a.sum(dim=-1, keepdim=True)
            joint = a if joint is None else a @ joint
    cls = joint[:, 0, 1:]
    return grid_maps(cls[:, None].expand(-1, text.shape[0], -1), grid)


def maskclip(model, pixels, text_features):
    """MaskCLIP (Zhou et al. 2022): each patch's value-path embedding compared with the prompt.

    In the last block every token attends only to itself (attention output = its value), the residual and MLP
    are kept, then the post-norm and projection give one embedding per patch; the map is its cosine with the
    prompt, ReLU. On an attention-pooling head (SigLIP) the same is done in the head: each patch's value passes the
    head's out-projection, LayerNorm and MLP.
    """
    bb, grid, text = prepare(model, pixels, text_features)
    with torch.no_grad():
        if bb.has_class_token:
            last = bb.depth - 1
            x = bb.tokens_before(pixels, -1)
            _, _, v = bb.qkv(last, x)
            patches = bb.pool_rows(bb.finish(last, x[:, 1:], v[:, 1:]))  # (B, P, D)
        else:
            _, _, v = bb.pool_qkv(bb.tokens_before(pixels, bb.depth))
            patches = bb.pool_finish(v[:, bb.prefix:])  # (B, P, D)
        cos = (F.normalize(patches, dim=-1) @ text.T).relu()  # (B, P, K)
    return grid_maps(cos.transpose(1, 2), grid)
