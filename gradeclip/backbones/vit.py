"""Pieces of openai-clip's transformers (the openai-clip adapter's parts; other libraries have their adapters).

The openai-clip blocks run ``nn.MultiheadAttention``, which hides q, k, v and the attention output. Here the token
embedding (with positional embeddings interpolated to any patch grid), the plain blocks and a decomposed attention
are separate functions, so a method can keep a graph through the blocks it explains and nothing else.
Tensors are batch-first here (B, L, W): B images or prompts, L tokens, W channels.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .base import attend as attend, interpolate_grid  # attend: one implementation, also imported from here


def positional_embedding(visual, grid: Tuple[int, int]) -> torch.Tensor:
    """Positional embeddings (1 + h*w, W) for a patch grid (h, w).

    The patch embeddings are interpolated bicubically (align_corners=False) from the trained square grid; the
    class-token embedding is kept. At the trained grid the embeddings are returned unchanged.
    """
    pos = visual.positional_embedding
    return torch.cat([pos[:1], interpolate_grid(pos[1:], grid)], dim=0)


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
    """Tokens (K, T, W) entering the first text block: token and positional embeddings (the first T positions;
    T is the tokenizer's length, at most the tower's)."""
    x = model.token_embedding(tokens)
    return x + model.positional_embedding[:tokens.shape[1]].to(x.dtype)


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


def finish_block(block, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """The rest of a block after attention: x + out_proj(o), then the MLP residual. Rows of x match rows of o."""
    x = x + F.linear(o, block.attn.out_proj.weight, block.attn.out_proj.bias)
    return x + block.mlp(block.ln_2(x))


def image_features(visual, cls_tokens: torch.Tensor) -> torch.Tensor:
    """Image embedding (B, D) from the class tokens (B, W) after the last block: ln_post, then proj."""
    return visual.ln_post(cls_tokens) @ visual.proj


def encode_pixels(model, pixels: torch.Tensor) -> torch.Tensor:
    """Image features (B, D), not normalised, for pixels at any patch grid (positions interpolated), without
    autograd; ``model`` any model gradeclip accepts. At the model's own resolution this equals its own image
    forward (``model.encode_image(pixels)`` for openai-clip)."""
    from .base import backbone_of

    return backbone_of(model).encode_pixels(pixels)
