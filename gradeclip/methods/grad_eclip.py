"""Grad-ECLIP (Zhao et al., ICML 2024): gradient-based explanation of CLIP's image-text score.

For a decomposed attention block with queries q, keys k, values v and attention output o (before out_proj), the
relevance of token i is

    H_i = ReLU( sum_c  w_c * v_{i,c} * lambda_i ),   w = d cosine / d o[query row]

where the query row is the class token (image) or the token the text tower is read at (CLIP's end-of-text token;
the first token of AltCLIP's and Chinese-CLIP's bidirectional towers), and lambda_i is the cosine between
q[query row] and k_i, min-max normalised over the tokens ("spatial weight"). Image maps are summed over the last
``layers`` blocks after the ReLU of each; word weights are summed over layers before the ReLU, as the paper's code
does.

On models pooled by an attention head (SigLIP, CoCa) the query row is the head's probe (CoCa: its first query),
and the keys and values are the tokens entering it (after the last block and the head's norm); a class token among
them (CoCa) takes part in the attention but gets no map entry, and lambda is min-max normalised over the patches.

By default the decomposed blocks use the model's own heads, so the explained score is exactly the model's cosine.
``single_head=True`` reproduces the official code, which runs the decomposed blocks as one head over the full width
and so explains a slightly different score; the score reported with its maps is still the model's own.
"""
from __future__ import annotations

import warnings
from typing import List

import torch
import torch.nn.functional as F

from ..backbones.base import attend, backbone_of
from ..checks import positive_int


def _layer_count(layers: int, depth: int, what: str) -> int:
    positive_int(layers, "layers", f" (number of last {what} blocks to decompose)")
    if layers > depth:
        warnings.warn(f"layers={layers} exceeds the {depth} {what} blocks; decomposing all {depth}")
    return min(layers, depth)


def _float32(bb):
    """Autocast off on the model's device: under ``precision="bf16"/"fp16"`` (``gradeclip/precision.py``) the
    decomposed blocks, the score, its gradients and the maps are computed in float32 (only the blocks before the
    decomposed ones run in reduced precision); a no-op otherwise."""
    return torch.autocast(bb.device.type, enabled=False)


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

    ``model``: a CLIP-family ViT of openai-clip, open_clip or transformers (``CLIPModel``, ``SiglipModel``), or a
    gradeclip ``Backbone`` (any width, depth, patch, resolution). ``pixels``: float tensor (B, 3, H, W) normalised
    as the library does, H and W multiples of the patch size (``to_pixels`` makes them); positional embeddings are
    interpolated to the grid. ``text_features``: (K, D), the library's own (``encode_text`` /
    ``get_text_features``), not normalised. ``layers``: how many last blocks to decompose; ``spatial_weight=False``
    drops lambda (the paper's ablation).

    On SigLIP (no class token) the decomposed attention is the attention-pooling head, its probe the query; only
    ``layers=1`` is defined there.

    Returns raw maps (B, K, H/patch, W/patch), float32, non-negative, not normalised, not upsampled, on the
    model's device. One forward serves all prompts; the prompts share one batched backward.
    """
    return grad_eclip_image_with_features(model, pixels, text_features, layers=layers, single_head=single_head,
                                          spatial_weight=spatial_weight)[0]


def grad_eclip_image_with_features(model, pixels: torch.Tensor, text_features: torch.Tensor, *, layers: int = 1,
                                   single_head: bool = False, spatial_weight: bool = True):
    """``grad_eclip_image`` plus the model's own image features (B, D) (not normalised): those of the same
    forward, so that scores need no second forward; with ``single_head`` (whose decomposed forward is not the
    model's) those of a second, ordinary forward, so that the score reported is always the model's own.
    Returns ``(maps, image_features)``."""
    bb = backbone_of(model)
    grid = bb.check_pixels(pixels)
    start = decomposition_start(bb, layers)
    maps, features = grad_eclip_tokens(bb, bb.tokens_before(pixels, start), grid, text_features, start=start,
                                       single_head=single_head, spatial_weight=spatial_weight)
    return maps, (bb.encode_pixels(pixels) if single_head else features)


def decomposition_start(bb, layers: int = 1) -> int:
    """Index of the first image block Grad-ECLIP decomposes with ``layers`` last blocks (``bb.depth`` where an
    attention-pooling head is decomposed: its input is the output of the last block). Refuses bad ``layers``."""
    if bb.has_class_token:
        return bb.depth - _layer_count(layers, bb.depth, "image")
    positive_int(layers, "layers", " (number of last image blocks to decompose)")
    if layers != 1:
        raise ValueError(f"layers={layers}: on {type(bb.model).__name__} (no class token) Grad-ECLIP decomposes the "
                         f"attention-pooling head only; layers must be 1")
    return bb.depth


def grad_eclip_tokens(bb, x: torch.Tensor, grid, text_features: torch.Tensor, *, start: int,
                      single_head: bool = False, spatial_weight: bool = True):
    """Grad-ECLIP from the tokens ``x`` (B, L, W) entering block ``start`` (``decomposition_start``; they carry no
    graph), for callers that keep those tokens between a scoring pass and an explaining pass (``clip_level``).
    ``grid``: the patch grid (h, w). Returns ``(maps (B, K, h, w) float32, image features (B, D))``. Under reduced
    precision only the blocks before ``start`` ran in it (gradeclip/precision.py): ``x`` is cast back to the
    model's dtype and the decomposed blocks run in float32."""
    x = x.to(bb.dtype)
    if bb.has_class_token:
        return _class_token(bb, x, text_features, bb.depth - start, single_head, spatial_weight, grid)
    return _pooling_head(bb, x, text_features, single_head, spatial_weight, grid)


def _class_token(bb, x, text_features, n, single_head, spatial_weight, grid):
    """Grad-ECLIP where the embedding is the class token's row: the last ``n`` blocks decomposed, ``x`` the tokens
    entering the first of them."""
    text = bb.unit_text(text_features)
    records = []  # (q of the class token, k, v, o) per decomposed block
    with torch.enable_grad(), _float32(bb):
        for j, i in enumerate(range(bb.depth - n, bb.depth)):
            last = j == n - 1
            heads = 1 if single_head else bb.heads(i)
            q, k, v = bb.qkv(i, x)
            # The last block only needs its class-token row: the score depends on nothing else.
            o, _ = attend(q[:, :1] if last else q, k, v, heads)
            if not o.requires_grad:  # the first decomposed block's input carries no graph
                o.requires_grad_(True)
            records.append((q[:, 0].detach(), k.detach(), v.detach(), o))
            x = bb.finish(i, x[:, :1] if last else x, o)
        features = bb.pool(x)
        cosine = F.normalize(features.float(), dim=-1) @ text.float().T  # (B, K)
        grads = _per_prompt_grads(cosine, [o for *_, o in records])

    maps = 0
    with _float32(bb):
        for (q_cls, k, v, _), grad in zip(records, grads):
            w = grad[:, :, 0].float()  # (K, B, W): gradient at the class-token row
            k, v = k[:, 1:].float(), v[:, 1:].float()
            lam = qk_weight(q_cls.float(), k) if spatial_weight else torch.ones_like(k[:, :, 0])
            layer = torch.einsum("kbc,bpc->bkp", w, v) * lam[:, None, :]
            maps = maps + layer.relu()
    return maps.reshape(*maps.shape[:2], *grid).float().detach(), features.detach()


def _pooling_head(bb, x, text_features, single_head, spatial_weight, grid):
    """Grad-ECLIP on an attention-pooling head (SigLIP): the probe's row of the pooling attention is decomposed,
    H_i = ReLU(sum_c w_c v_ic lambda_i) with w = dcos/do at the probe's row and lambda from the probe's query;
    ``x`` the tokens after the last block."""
    text = bb.unit_text(text_features)
    with torch.enable_grad(), _float32(bb):
        q, k, v = bb.pool_qkv(x)  # q (B, 1, W): the probe's query; k, v (B, P, W)
        o, _ = attend(q, k, v, 1 if single_head else bb.pool_heads())
        o.requires_grad_(True)
        features = bb.pool_finish(o)[:, 0]
        cosine = F.normalize(features.float(), dim=-1) @ text.float().T  # (B, K)
        (grad,) = _per_prompt_grads(cosine, [o])
    w = grad[:, :, 0].float()  # (K, B, W)
    # a class token (CoCa) is attended, not mapped
    k, v = k[:, bb.prefix:].detach().float(), v[:, bb.prefix:].detach().float()
    with _float32(bb):
        lam = qk_weight(q[:, 0].detach().float(), k) if spatial_weight else torch.ones_like(k[:, :, 0])
        maps = (torch.einsum("kbc,bpc->bkp", w, v) * lam[:, None, :]).relu()
    return maps.reshape(*maps.shape[:2], *grid).float().detach(), features.detach()


def grad_eclip_text(model, pixels: torch.Tensor, tokens: torch.Tensor, *, layers: int = 8,
                    single_head: bool = False) -> List[torch.Tensor]:
    """Grad-ECLIP word importance of K prompts for one image.

    ``model``: as for ``grad_eclip_image``, with a CLIP-style text tower (causal, read at the end-of-text token:
    openai-clip, open_clip, transformers ``CLIPModel``) or a bidirectional one read at its first token (AltCLIP,
    Chinese-CLIP: each prompt is decomposed alone, without its padding, which the library masks). ``pixels``:
    (1, 3, S, S) preprocessed image (the library's own transform); its embedding is the ordinary image forward.
    ``tokens``: (K, T) token ids as the model's tokenizer gives them (T the tokenizer's length, at most the tower's
    positions). The token the tower is read at is the query; keys and values span the whole sequence; the last
    ``layers`` text blocks are decomposed.

    Returns K float32 tensors (on the model's device), one weight per word token between start and end token,
    each summing to 1, or all zeros when no token has positive relevance.
    """
    bb = backbone_of(model)
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[0] != 1:
        raise ValueError(f"pixels must be one preprocessed image (1, 3, S, S), got "
                         f"{tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__}")
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or not 0 < tokens.shape[1] <= bb.context_length:
        raise ValueError(f"tokens must be (K, T<={bb.context_length}) token ids from the model's tokenizer, got "
                         f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
    tokens = tokens.to(bb.device).long()
    kept = bb.text_lengths(tokens)  # (K,) tokens a bidirectional tower attends to, or None (causal: padding unread)
    if kept is not None and bool((kept < tokens.shape[1]).any()):  # each prompt alone, its padding dropped
        return [grad_eclip_text(bb, pixels, row[None, :n], layers=layers, single_head=single_head)[0]
                for row, n in zip(tokens, kept.tolist())]
    x0 = bb.text_embed(tokens)  # refuses text towers it cannot decompose before any work
    n = _layer_count(layers, bb.text_depth, "text")
    eos = bb.text_query(tokens)  # (K,)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    mask = bb.text_mask(tokens.shape[1], tokens.device, x0.dtype)

    with torch.no_grad():
        image = F.normalize(bb.encode_pixels(pixels.to(device=bb.device, dtype=bb.dtype)), dim=-1)  # (1, D)
        x = bb.text_run_blocks(x0, 0, bb.text_depth - n)
    records = []
    with torch.enable_grad():
        for i in range(bb.text_depth - n, bb.text_depth):
            heads = 1 if single_head else bb.text_heads(i)
            q, k, v = bb.text_qkv(i, x)
            o, _ = attend(q, k, v, heads, mask)
            if not o.requires_grad:
                o.requires_grad_(True)
            records.append((q[rows, eos].detach(), k.detach(), v.detach(), o))
            x = bb.text_finish(i, x, o)
        text = bb.text_pool(x[rows, eos])
        cosine = F.normalize(text, dim=-1) @ image[0]  # (K,)
        # Prompts are independent rows of the batch, so one backward of the sum gives each prompt's gradient.
        grads = torch.autograd.grad(cosine.sum(), [o for *_, o in records])

    total = 0
    for (q_eos, k, v, _), grad in zip(records, grads):
        w = grad[rows, eos]  # (K, W)
        total = total + torch.einsum("kc,ktc->kt", w, v) * qk_weight(q_eos, k)
    total = total.relu()
    out = []
    for i, end in enumerate(bb.text_word_end(tokens).tolist()):
        words = total[i, 1:end].float()
        s = words.sum()
        out.append((words / s if s > 0 else torch.zeros_like(words)).detach())
    return out
