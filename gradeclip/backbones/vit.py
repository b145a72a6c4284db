"""Pieces of CLIP's transformers, exposed for explanation methods.

The openai-clip blocks run ``nn.MultiheadAttention``, which hides q, k, v and the attention output. Here the token
embedding (with positional embeddings interpolated to any patch grid), the plain blocks and a decomposed attention
are separate functions, so a method can keep a graph through the blocks it explains and nothing else.
Tensors are batch-first here (B, L, W): B images or prompts, L tokens, W channels.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def check_pixels(model, pixels: torch.Tensor) -> Tuple[int, int]:
    """Validate normalised pixels (B, 3, H, W) for the model's ViT; returns the patch grid (h, w)."""
    patch = model.visual.conv1.kernel_size[0]
    if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point():
        raise TypeError(f"pixels must be a float tensor (B, 3, H, W), got {type(pixels).__name__}"
                        + (f" of {pixels.dtype}" if isinstance(pixels, torch.Tensor) else ""))
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must have shape (B, 3, H, W), got {tuple(pixels.shape)}")
    h, w = pixels.shape[-2:]
    if h % patch or w % patch or h == 0 or w == 0:
        raise ValueError(f"pixel height and width must be positive multiples of the patch size {patch}, "
                         f"got {h}x{w}; gradeclip.to_pixels resizes frames accordingly")
    return h // patch, w // patch


def unit_text_features(visual, text_features: torch.Tensor) -> torch.Tensor:
    """Validate text features (K, D) for the image encoder and return them L2-normalised, detached, on its device."""
    if not isinstance(text_features, torch.Tensor) or text_features.ndim != 2 \
            or text_features.shape[1] != visual.output_dim:
        shape = tuple(text_features.shape) if isinstance(text_features, torch.Tensor) else type(text_features).__name__
        raise ValueError(f"text_features must have shape (K, {visual.output_dim}), got {shape}")
    return F.normalize(text_features.detach().to(device=visual.proj.device, dtype=visual.proj.dtype), dim=-1)


def positional_embedding(visual, grid: Tuple[int, int]) -> torch.Tensor:
    """Positional embeddings (1 + h*w, W) for a patch grid (h, w).

    The patch embeddings are interpolated bicubically (align_corners=False) from the trained square grid; the
    class-token embedding is kept. At the trained grid the embeddings are returned unchanged.
    """
    pos = visual.positional_embedding
    side = round((pos.shape[0] - 1) ** 0.5)
    if tuple(grid) == (side, side):
        return pos
    patches = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], patches.flatten(2).squeeze(0).T], dim=0)


def embed_image(visual, pixels: torch.Tensor) -> torch.Tensor:
    """Tokens (B, 1 + h*w, W) entering the first block: patch embedding, class token, positions, ln_pre."""
    weight = visual.conv1.weight
    x = visual.conv1(pixels.to(device=weight.device, dtype=weight.dtype))  # (B, W, h, w)
    grid = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)  # (B, h*w, W)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + positional_embedding(visual, grid).to(x.dtype)
    return visual.ln_pre(x)


def embed_text(model, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens (K, T, W) entering the first text block: token and positional embeddings."""
    x = model.token_embedding(tokens)
    return x + model.positional_embedding.to(x.dtype)


@torch.no_grad()
def tokens_before(visual, pixels: torch.Tensor, stop: int) -> torch.Tensor:
    """Tokens (B, L, W) entering block ``stop`` (0-based; negative counts from the end), without autograd."""
    return run_blocks(visual.transformer.resblocks[:stop], embed_image(visual, pixels))


def run_blocks(blocks, x: torch.Tensor) -> torch.Tensor:
    """Run openai-clip residual blocks on batch-first tokens (B, L, W) -> (B, L, W)."""
    if len(blocks) == 0:
        return x
    x = x.transpose(0, 1)  # NLD -> LND, as the blocks expect
    for block in blocks:
        x = block(x)
    return x.transpose(0, 1)


def qkv(block, x: torch.Tensor):
    """q, k, v (each B, L, W) of a block's attention for batch-first tokens x (B, L, W), before ln_1."""
    h = block.ln_1(x)
    return F.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
           mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention split into ``heads`` heads.

    q (B, Lq, W), k and v (B, L, W), ``mask`` additive (Lq, L). Returns the attention output o before out_proj
    (B, Lq, W) and the attention weights (B, heads, Lq, L).
    """
    b, lq, width = q.shape
    d = width // heads
    qh = q.reshape(b, lq, heads, d).transpose(1, 2) * d ** -0.5
    kh = k.reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.reshape(b, -1, heads, d).transpose(1, 2)
    logits = qh @ kh.transpose(-1, -2)  # (B, heads, Lq, L)
    if mask is not None:
        logits = logits + mask
    weights = logits.softmax(dim=-1)
    o = (weights @ vh).transpose(1, 2).reshape(b, lq, width)
    return o, weights


def finish_block(block, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """The rest of a block after attention: x + out_proj(o), then the MLP residual. Rows of x match rows of o."""
    x = x + F.linear(o, block.attn.out_proj.weight, block.attn.out_proj.bias)
    return x + block.mlp(block.ln_2(x))


def image_features(visual, cls_tokens: torch.Tensor) -> torch.Tensor:
    """Image embedding (B, D) from the class tokens (B, W) after the last block: ln_post, then proj."""
    return visual.ln_post(cls_tokens) @ visual.proj


@torch.no_grad()
def encode_pixels(model, pixels: torch.Tensor) -> torch.Tensor:
    """Image features (B, D), not normalised, for pixels at any patch grid (positions interpolated).

    At the model's own resolution this equals ``model.encode_image(pixels)``.
    """
    check_pixels(model, pixels)
    visual = model.visual
    x = run_blocks(visual.transformer.resblocks, embed_image(visual, pixels))
    return image_features(visual, x[:, 0])
