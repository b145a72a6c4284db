"""Gradient methods other than Grad-ECLIP, written once against the backbone interface: Grad-CAM and GAME.

Every method: ``method(model, pixels, text_features, *, options) -> raw maps (B, K, h, w)``, float32, non-negative,
on the token grid of ``pixels`` (any patch grid; positional embeddings are interpolated).
"""
from __future__ import annotations

import torch

from ..backbones.base import attend, backbone_of
from .grad_eclip import _per_prompt_grads


def prepare(model, pixels, text_features, method: str = ""):
    """Validated inputs: the backbone, the patch grid and the normalised text features (K, D); ``method`` names a
    method that reads the class token's row (refused on models without one)."""
    bb = backbone_of(model)
    if method:
        bb.require_class_token(method)
    grid = bb.check_pixels(pixels)
    return bb, grid, bb.unit_text(text_features)


def grid_maps(per_prompt: torch.Tensor, grid) -> torch.Tensor:
    """(K, B, P) or (B, K, P) patch scores -> (B, K, h, w) float32, detached."""
    return per_prompt.reshape(*per_prompt.shape[:2], *grid).float().detach()


def cosine(features, text):
    """Cosine (B, K) of unnormalised image features (B, D) with unit text features (K, D)."""
    return torch.nn.functional.normalize(features, dim=-1) @ text.T  # (B, K)


def grad_cam(model, pixels, text_features):
    """Grad-CAM as the Grad-ECLIP paper applies it to CLIP ViT: the tokens entering the last block, weighted by the
    gradient of the cosine averaged over all tokens, summed over channels, ReLU (patch tokens only)."""
    bb, grid, text = prepare(model, pixels, text_features)
    x = bb.tokens_before(pixels, -1)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        cos = cosine(bb.readout(x, bb.depth - 1), text)  # only the rows the score needs pass the last block
        (grad,) = _per_prompt_grads(cos, [x])  # (K, B, L, W)
    weights = grad.mean(dim=2, keepdim=True)
    cam = (weights * x.detach()).sum(-1).relu()[:, :, bb.prefix:]  # (K, B, P)
    return grid_maps(cam.transpose(0, 1), grid)


def game(model, pixels, text_features, *, start_layer: int = -1):
    """Gradient-weighted attention relevance (Chefer et al. 2021, "Generic Attention-model Explainability").

    From block ``start_layer`` on (default -1: the last block, as its authors use for CLIP ViT; negative counts
    from the end): R <- R + mean_heads(ReLU(dcos/dA * A)) @ R, with R starting as the identity; the map is R's
    class-token row over the patches. Needs a class token.
    """
    bb, grid, text = prepare(model, pixels, text_features, "game")
    depth = bb.depth
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not -depth <= start_layer < depth:
        raise ValueError(f"start_layer must be an int in {-depth}..{depth - 1} (the model has {depth} blocks), "
                         f"got {start_layer!r}")
    start = start_layer % depth
    x = bb.tokens_before(pixels, start)
    attentions = []
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)  # so that the attention weights join the graph
        for i in range(start, depth):
            q, k, v = bb.qkv(i, x)
            o, w = attend(q, k, v, bb.heads(i))
            attentions.append(w)
            x = bb.finish(i, x, o)
        grads = _per_prompt_grads(cosine(bb.pool(x), text), attentions)  # each (K, B, heads, L, L)
    length = attentions[0].shape[-1]
    relevance = torch.eye(length, device=x.device, dtype=x.dtype).expand(*grads[0].shape[:2], length, length)
    for w, g in zip(attentions, grads):
        cam = (g * w.detach()).clamp(min=0).mean(dim=2)  # (K, B, L, L)
        relevance = relevance + cam @ relevance
    return grid_maps(relevance[:, :, 0, 1:].transpose(0, 1), grid)
