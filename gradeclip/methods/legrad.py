"""LeGrad (Bousselham et al., 2024): the sensitivity of every layer's own score to that layer's attention maps.

For block l (0-based, from ``start_layer`` to the last) with attention weights A^l (B, heads, L, L) after the
softmax, the score of prompt k at layer l is

    s^l_k = cos( proj(norm_post(z^l_cls)), t_k )

where z^l is the token output of block l (attention and MLP residuals included) and norm_post, proj are the model's
final norm and projection (``pool_rows``): the model's own score at the last block. Then

    E^l = mean_heads ReLU( d s^l_k / d A^l ),   map_k = (1 / n_layers) * sum_l E^l[cls row, patch columns]

Only the class token's row of dA^l is non-zero (block l's other rows do not reach z^l_cls), so the method takes the
gradient through that row alone: A^l[cls] -> o_cls = A^l[cls] v -> the rest of block l -> s^l.

On models pooled by an attention head (SigLIP, CoCa) the score of layer l is the head applied to z^l (the model's
post-norm, the probe's attention over all tokens, the head's MLP), and A^l is the probe's attention (B, heads, 1, L)
in that pass, as the authors do for SigLIP; the columns of the patches are the map (a class token, CoCa's, is
attended but not mapped).

Layers and readout, against the authors' code (WalBouss/LeGrad, ``legrad/wrapper.py``): their wrapper's default
``layer_index=-2`` explains the last two blocks of every model, ViT-B/16, ViT-B/32 and ViT-L/14 alike; the paper
aggregates over all layers, as ``start_layer=0`` (the default here) does; ``start_layer=-2`` is their code's
setting. Their CLIP path scores layer l by the mean of all of block l's tokens through ``ln_post`` and ``proj`` (and
so averages the gradient over every row of A^l); here the score is the class token's, the model's own readout. On
SigLIP and CoCa their head skips the trunk's final norm (SigLIP) or ``ln_post`` (CoCa); here the head is the model's
own, so that the last layer's score is the model's score.
"""
from __future__ import annotations

import torch

from ..backbones.base import attend
from .gradients import cosine, grid_maps, prepare
from .grad_eclip import _per_prompt_grads


def _through_weights(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention output (B, R, W) before the out-projection from weights w (B, heads, R, L) and values v (B, L, W)."""
    b, heads, rows, length = w.shape
    vh = v.reshape(b, length, heads, -1).transpose(1, 2)  # (B, heads, L, d)
    return (w @ vh).transpose(1, 2).reshape(b, rows, -1)


def _class_token_layer(bb, i, x, text):
    """Block i's E^l (K, B, L) for tokens x (B, L, W) entering it, and the tokens leaving it (B, L, W)."""
    q, k, v = bb.qkv(i, x)
    o, w = attend(q, k, v, bb.heads(i))
    with torch.enable_grad():
        w_cls = w[:, :, :1].detach().requires_grad_(True)  # (B, heads, 1, L): the class token's row of A^l
        z_cls = bb.finish(i, x[:, :1], _through_weights(w_cls, v))
        (grad,) = _per_prompt_grads(cosine(bb.pool_rows(z_cls)[:, 0], text), [w_cls])  # (K, B, heads, 1, L)
    return grad.clamp(min=0).mean(dim=2)[:, :, 0], bb.finish(i, x, o)


def _pooling_head_layer(bb, z, text):
    """E^l (K, B, L) of the pooling head's probe attention for tokens z (B, L, W) leaving a block."""
    q, k, v = bb.pool_qkv(z)
    _, w = attend(q, k, v, bb.pool_heads())
    with torch.enable_grad():
        w = w.detach().requires_grad_(True)  # (B, heads, 1, L)
        features = bb.pool_finish(_through_weights(w, v))[:, 0]
        (grad,) = _per_prompt_grads(cosine(features, text), [w])
    return grad.clamp(min=0).mean(dim=2)[:, :, 0]


def legrad(model, pixels, text_features, *, start_layer: int = 0):
    """LeGrad maps (B, K, h, w) float32, non-negative, on the token grid of ``pixels`` (B, 3, H, W normalised).

    ``text_features`` (K, D), not normalised. ``start_layer``: the first block whose score and attention count
    (negative counts from the end; default 0: every block, averaged). One forward; one batched backward per block,
    each through that block only.
    """
    return legrad_with_features(model, pixels, text_features, start_layer=start_layer)[0]


def legrad_with_features(model, pixels, text_features, *, start_layer: int = 0):
    """``legrad`` and the model's image features (B, D) of the same forward."""
    bb, grid, text = prepare(model, pixels, text_features)
    depth = bb.depth
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not -depth <= start_layer < depth:
        raise ValueError(f"start_layer must be an int in {-depth}..{depth - 1} (the model has {depth} blocks), "
                         f"got {start_layer!r}")
    start = start_layer % depth
    total = 0
    with torch.no_grad():
        x = bb.tokens_before(pixels, start) if start else bb.embed_image(pixels)
        for i in range(start, depth):
            if bb.has_class_token:
                relevance, x = _class_token_layer(bb, i, x, text)
            else:
                x = bb.run_blocks(x, i, i + 1)
                relevance = _pooling_head_layer(bb, x, text)
            total = total + relevance[:, :, bb.prefix:]
        features = bb.pool(x)
    return grid_maps((total / (depth - start)).transpose(0, 1), grid), features
