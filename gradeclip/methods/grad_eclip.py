"""Grad-ECLIP (Zhao et al., ICML 2024): gradient-based explanation of CLIP's image-text score.

For a decomposed attention block with queries q, keys k, values v and attention output o (before out_proj), the
relevance of token i is

    H_i = ReLU( sum_c  w_c * v_{i,c} * lambda_i ),   w = d cosine / d o[query row]

where the query row is the class token (image) or the end-of-text token (text), and lambda_i is the cosine between
q[query row] and k_i, min-max normalised over the tokens ("spatial weight"). Image maps are summed over the last
``layers`` blocks after the ReLU of each; word weights are summed over layers before the ReLU, as the paper's code
does.

By default the decomposed blocks use the model's own heads, so the explained score is exactly the model's cosine.
``single_head=True`` reproduces the official code, which runs the decomposed blocks as one head over the full width
and so explains a slightly different score.
"""
from __future__ import annotations

import warnings
from typing import List

import torch
import torch.nn.functional as F

from ..checks import positive_int
from ..backbones.model import check_vit
from ..backbones.vit import (attend, check_pixels, embed_text, finish_block, image_features, qkv, run_blocks, tokens_before,
                  unit_text_features)


def _layer_count(layers: int, depth: int, what: str) -> int:
    positive_int(layers, "layers", f" (number of last {what} blocks to decompose)")
    if layers > depth:
        warnings.warn(f"layers={layers} exceeds the {depth} {what} blocks; decomposing all {depth}")
    return min(layers, depth)


def qk_weight(q_row: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """lambda: cosine of q_row (B, W) with each key k (B, L, W), min-max normalised over L -> (B, L) in [0, 1].

    Where all cosines are equal the weight is 1 everywhere (no spatial preference) rather than NaN.
    """
    cos = torch.einsum("bc,blc->bl", F.normalize(q_row, dim=-1), F.normalize(k, dim=-1))
    low = cos.amin(dim=-1, keepdim=True)
    span = cos.amax(dim=-1, keepdim=True) - low
    return torch.where(span > 0, (cos - low) / span.clamp_min(torch.finfo(cos.dtype).tiny), torch.ones_like(cos))


def _per_prompt_grads(scores: torch.Tensor, inputs: List[torch.Tensor]) -> List[torch.Tensor]:
    """d scores[:, k] / d input for each prompt k: (K, *input.shape) per input, one batched backward."""
    k = scores.shape[1]
    eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
    selectors = eye[:, None, :].expand(k, scores.shape[0], k)  # (K, B, K): picks column k of scores
    return list(torch.autograd.grad(scores, inputs, grad_outputs=selectors, is_grads_batched=True))


def grad_eclip_image(model, pixels: torch.Tensor, text_features: torch.Tensor, *, layers: int = 1,
                     single_head: bool = False, spatial_weight: bool = True) -> torch.Tensor:
    """Grad-ECLIP maps of B images for K prompts.

    ``model``: openai-clip ``clip.model.CLIP`` with a ViT image encoder (any width, depth, patch, resolution).
    ``pixels``: normalised float tensor (B, 3, H, W), H and W multiples of the patch size (``to_pixels`` makes
    them); positional embeddings are interpolated to the grid. ``text_features``: (K, D) from ``encode_text``, not
    normalised. ``layers``: how many last blocks to decompose; ``spatial_weight=False`` drops lambda (the paper's
    ablation).

    Returns raw maps (B, K, H/patch, W/patch), float32, non-negative, not normalised, not upsampled, on the
    model's device. One forward serves all prompts; the prompts share one batched backward.
    """
    return grad_eclip_image_with_features(model, pixels, text_features, layers=layers, single_head=single_head,
                                          spatial_weight=spatial_weight)[0]


def grad_eclip_image_with_features(model, pixels: torch.Tensor, text_features: torch.Tensor, *, layers: int = 1,
                                   single_head: bool = False, spatial_weight: bool = True):
    """``grad_eclip_image`` plus the image features (B, D) of the same forward (not normalised), so that scores
    need no second forward. Returns ``(maps, image_features)``."""
    check_vit(model)
    grid = check_pixels(model, pixels)
    visual = model.visual
    blocks = visual.transformer.resblocks
    n = _layer_count(layers, len(blocks), "image")
    text = unit_text_features(visual, text_features)

    x = tokens_before(visual, pixels, len(blocks) - n)
    records = []  # (q of the class token, k, v, o) per decomposed block
    with torch.enable_grad():
        for j, block in enumerate(blocks[len(blocks) - n:]):
            last = j == n - 1
            heads = 1 if single_head else block.attn.num_heads
            q, k, v = qkv(block, x)
            # The last block only needs its class-token row: the score depends on nothing else.
            o, _ = attend(q[:, :1] if last else q, k, v, heads)
            if not o.requires_grad:  # the first decomposed block's input carries no graph
                o.requires_grad_(True)
            records.append((q[:, 0].detach(), k.detach(), v.detach(), o))
            x = finish_block(block, x[:, :1] if last else x, o)
        features = image_features(visual, x[:, 0])
        cosine = F.normalize(features, dim=-1) @ text.T  # (B, K)
        grads = _per_prompt_grads(cosine, [o for *_, o in records])

    maps = 0
    for (q_cls, k, v, _), grad in zip(records, grads):
        w = grad[:, :, 0]  # (K, B, W): gradient at the class-token row
        lam = qk_weight(q_cls, k[:, 1:]) if spatial_weight else torch.ones_like(k[:, 1:, 0])
        layer = torch.einsum("kbc,bpc->bkp", w, v[:, 1:]) * lam[:, None, :]
        maps = maps + layer.relu()
    return maps.reshape(*maps.shape[:2], *grid).float().detach(), features.detach()


def grad_eclip_text(model, pixels: torch.Tensor, tokens: torch.Tensor, *, layers: int = 8,
                    single_head: bool = False) -> List[torch.Tensor]:
    """Grad-ECLIP word importance of K prompts for one image.

    ``pixels``: (1, 3, S, S) preprocessed image (CLIP's own transform); its embedding is the ordinary
    ``encode_image``. ``tokens``: (K, T) token ids as ``clip.tokenize`` gives. The end-of-text token (argmax of the
    ids) is the query; keys and values span the whole sequence; the last ``layers`` text blocks are decomposed.

    Returns K float32 tensors (on the model's device), one weight per word token between start and end token,
    each summing to 1, or all zeros when no token has positive relevance.
    """
    check_vit(model)
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[0] != 1:
        raise ValueError(f"pixels must be one preprocessed image (1, 3, S, S), got "
                         f"{tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__}")
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.shape[1] != model.context_length:
        raise ValueError(f"tokens must be (K, {model.context_length}) token ids from clip.tokenize, got "
                         f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
    tokens = tokens.to(model.token_embedding.weight.device).long()
    blocks = model.transformer.resblocks
    n = _layer_count(layers, len(blocks), "text")
    eos = tokens.argmax(dim=-1)  # (K,)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    mask = model.build_attention_mask().to(device=tokens.device, dtype=model.positional_embedding.dtype)

    with torch.no_grad():
        weight = model.visual.conv1.weight
        image = F.normalize(model.encode_image(pixels.to(device=weight.device, dtype=weight.dtype)), dim=-1)  # (1, D)
        x = embed_text(model, tokens)
        x = run_blocks(blocks[:len(blocks) - n], x)
    records = []
    with torch.enable_grad():
        for block in blocks[len(blocks) - n:]:
            heads = 1 if single_head else block.attn.num_heads
            q, k, v = qkv(block, x)
            o, _ = attend(q, k, v, heads, mask)
            if not o.requires_grad:
                o.requires_grad_(True)
            records.append((q[rows, eos].detach(), k.detach(), v.detach(), o))
            x = finish_block(block, x, o)
        text = model.ln_final(x)[rows, eos] @ model.text_projection
        cosine = F.normalize(text, dim=-1) @ image[0]  # (K,)
        # Prompts are independent rows of the batch, so one backward of the sum gives each prompt's gradient.
        grads = torch.autograd.grad(cosine.sum(), [o for *_, o in records])

    total = 0
    for (q_eos, k, v, _), grad in zip(records, grads):
        w = grad[rows, eos]  # (K, W)
        total = total + torch.einsum("kc,ktc->kt", w, v) * qk_weight(q_eos, k)
    total = total.relu()
    out = []
    for i, end in enumerate(eos.tolist()):
        words = total[i, 1:end].float()
        s = words.sum()
        out.append((words / s if s > 0 else torch.zeros_like(words)).detach())
    return out
