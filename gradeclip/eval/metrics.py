"""Faithfulness and localisation metrics for explanation maps of free-form prompts.

Deletion and insertion (Petsiuk et al. 2018), with CLIP's cosine to the prompt as the score (or its probability
among the prompts): pixels are ranked by the map (upsampled bilinearly to the input), then in ``steps`` equal
steps the top-ranked fraction is replaced (deletion: from the image towards the replacement) or revealed
(insertion: from the replacement towards the image). The replacement is ``"blur"`` (Gaussian, sigma = 1/20 of the
longer side), ``"black"`` or ``"noise"`` (uniform, seeded). The curve has ``steps + 1`` points at fractions
0, 1/steps, ..., 1; its AUC is the trapezoid area over [0, 1]. A faithful map has a low deletion AUC (the score
falls fast) and a high insertion AUC. All images of all curves are scored in batches, not one forward each. A
constant map ranks no pixel above another (its order would be the raster order, the image's layout rather than
the method's), so its curves and AUCs are NaN: missing, not a number.

Pointing game: a hit when the map's point (the centre of its maximal plateau or token, see ``pointing_point``)
lies in the object's mask (or box). Energy pointing game: the share of the map's mass inside it. Neither rewards
a map that says nothing: a constant map (``is_constant``: all zero, or flat up to rounding noise) is a miss and
has energy 0, whatever the mask. Randomisation check (Adebayo et al. 2018): re-initialise the last blocks and measure
the rank correlation between the maps before and after; a method that ignores the model scores high.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import positive_int
from ..backbones.pixels import CLIP_MEAN, CLIP_STD
from ..backbones.base import backbone_of

REPLACEMENTS = ("blur", "black", "noise")
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def clip_scorer(model, text_features: torch.Tensor, *, score: str = "cosine") -> ScoreFn:
    """A score function: normalised pixels (M, 3, H, W) -> (M, K) cosine to each prompt, or with
    ``score="prob"`` the library's own probabilities (CLIP: softmax over the prompts of the logit-scaled cosines;
    SigLIP: per-prompt sigmoid). ``model``: any model ``explain`` accepts."""
    if score not in ("cosine", "prob"):
        raise ValueError(f"score must be 'cosine' or 'prob', got {score!r}")
    text = F.normalize(text_features.detach().float(), dim=-1)
    backbone = backbone_of(model)

    @torch.no_grad()
    def scorer(images):
        cos = F.normalize(backbone.encode_pixels(images).float(), dim=-1) @ text.to(images.device).T
        return cos if score == "cosine" else backbone.probabilities(cos)

    return scorer


def replacement_image(pixels: torch.Tensor, kind: str = "blur", *, seed: int = 0) -> torch.Tensor:
    """What removed pixels become, in CLIP-normalised space, for pixels (B, 3, H, W)."""
    mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
    if kind == "black":
        return ((0 - mean) / std).expand_as(pixels).clone()
    if kind == "noise":
        noise = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(seed)).to(pixels.device)
        return (noise - mean) / std
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        sigma = max(pixels.shape[-2:]) / 20
        size = min(2 * math.ceil(3 * sigma) + 1, 2 * ((min(pixels.shape[-2:]) - 1) // 2) + 1)
        return gaussian_blur(pixels, [size, size], [sigma, sigma])
    raise ValueError(f"unknown replacement {kind!r}; allowed: {', '.join(REPLACEMENTS)}")


def _auc(curves: np.ndarray) -> np.ndarray:
    x = np.linspace(0, 1, curves.shape[-1])
    return ((curves[..., 1:] + curves[..., :-1]) / 2 * np.diff(x)).sum(-1)


def deletion_insertion(score_fn: ScoreFn, pixels: torch.Tensor, maps: torch.Tensor, *, steps: int = 20,
                       replacement: str = "blur", batch_size: int = 64, seed: int = 0) -> Dict[str, np.ndarray]:
    """Deletion and insertion curves of maps (B, K, h, w) for pixels (B, 3, H, W).

    ``score_fn``: images (M, 3, H, W) -> scores (M, K), e.g. ``clip_scorer``; curve (b, k) follows column k.
    Returns ``deletion_curve`` and ``insertion_curve`` (B, K, steps + 1) and ``deletion_auc``, ``insertion_auc``
    (B, K), as numpy arrays; NaN for a constant map (``is_constant``), whose pixels have no order.
    """
    positive_int(steps, "steps")
    maps = torch.as_tensor(maps, dtype=torch.float32, device=pixels.device)
    if maps.ndim != 4 or maps.shape[0] != pixels.shape[0]:
        raise ValueError(f"maps must be (B, K, h, w) with B = {pixels.shape[0]} frames, got {tuple(maps.shape)}")
    b, k = maps.shape[:2]
    h, w = pixels.shape[-2:]
    fill = replacement_image(pixels, replacement, seed=seed)
    up = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False).flatten(2)  # (B, K, H*W)
    order = torch.argsort(-up, dim=-1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(h * w, device=order.device).expand_as(order))
    counts = torch.tensor([round(s / steps * h * w) for s in range(steps + 1)], device=pixels.device)
    curves = {}
    for mode in ("deletion", "insertion"):
        jobs = [(i, j, s) for i in range(b) for j in range(k) for s in range(steps + 1)]
        scores = []
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            images = []
            for i, j, s in chunk:
                hidden = (rank[i, j] < counts[s]).view(1, h, w)  # the top-ranked pixels at this step
                if mode == "deletion":
                    images.append(torch.where(hidden, fill[i], pixels[i]))
                else:
                    images.append(torch.where(hidden, pixels[i], fill[i]))
            out = score_fn(torch.stack(images))
            scores += [float(out[n, j]) for n, (_, j, _) in enumerate(chunk)]
        curves[mode] = np.asarray(scores, dtype=np.float64).reshape(b, k, steps + 1)
        curves[mode][is_constant(maps.cpu().numpy())] = np.nan
    return {"deletion_curve": curves["deletion"], "insertion_curve": curves["insertion"],
            "deletion_auc": _auc(curves["deletion"]), "insertion_auc": _auc(curves["insertion"])}


def boxes_to_masks(boxes, size) -> np.ndarray:
    """Boxes (..., 4) as pixel (x0, y0, x1, y1), x1 and y1 exclusive -> boolean masks (..., H, W)."""
    boxes = np.asarray(boxes, dtype=np.int64)
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must end in 4 values (x0, y0, x1, y1), got shape {boxes.shape}")
    h, w = size
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    b = boxes[..., None, None, :]
    return (xs >= b[..., 0]) & (xs < b[..., 2]) & (ys >= b[..., 1]) & (ys < b[..., 3])


def _check_pair(maps, masks):
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must have the same shape (..., H, W)")
    return maps, masks


CONSTANT_TOLERANCE = 1e-6  # the rule of ``explain.normalize_maps``: a range below this share of the magnitude


def is_constant(maps) -> np.ndarray:
    """Whether each map (..., h, w) says nothing: bool (...,), True where the map's range (max - min, NaN
    ignored) is at most ``CONSTANT_TOLERANCE`` (1e-6) of its magnitude (max |value|), the rule of
    ``explain.normalize_maps``. An all-zero map, a flat map, a flat map plus 1e-12 noise and an all-NaN map are
    constant; a one-hot map is not."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim < 2:
        raise ValueError(f"maps must be (..., h, w), got shape {maps.shape}")
    flat = maps.reshape(*maps.shape[:-2], -1)
    finite = np.isfinite(flat)
    low = np.where(finite, flat, np.inf).min(-1)
    high = np.where(finite, flat, -np.inf).max(-1)
    with np.errstate(invalid="ignore"):
        span = high - low  # -inf when no value is finite
        return ~(span > CONSTANT_TOLERANCE * np.maximum(np.abs(low), np.abs(high)))


def pointing_point(heatmap, size=None) -> tuple:
    """The pixel ``(row, col)`` a map points at, free of a border bias. ``heatmap``: (h, w) float, on the token grid
    or at any resolution; ``size``: the (H, W) of the image the point is for (default: the map's own size).

    Rule: the maximal cells may tie (bilinear upsampling turns the best token of the first row or column into a
    plateau of equal pixels reaching the border, where ``argmax`` would pick the plateau's first pixel); the point
    is the centre of the connected plateau of maxima that contains the first maximum in row-major order (its cell
    nearest the plateau's centroid), and a cell (i, j) of an (h, w) map becomes the image pixel at the centre of
    that cell, ``(floor((i + 0.5) * H / h), floor((j + 0.5) * W / w))``.
    """
    from scipy import ndimage

    heatmap = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=-np.inf)
    h, w = heatmap.shape
    H, W = size if size is not None else (h, w)
    top = heatmap == heatmap.max()
    labels, _ = ndimage.label(top)
    first = np.unravel_index(np.argmax(top), top.shape)
    cells = np.argwhere(labels == labels[first])  # (n, 2) cells of the plateau holding the first maximum
    centre = cells[np.argmin(((cells - cells.mean(0)) ** 2).sum(1))]
    return int((centre[0] + 0.5) * H / h), int((centre[1] + 0.5) * W / w)


def pointing_game(maps, masks) -> np.ndarray:
    """Hits (...,) bool: whether the point of each map (..., h, w) lies inside its mask (..., H, W).

    The point follows ``pointing_point``: the centre of the maximal plateau (so bilinear ties at the border do not
    drag it to pixel 0), and a map on a coarser grid (e.g. the raw token grid) points at the centre of its maximal
    cell in mask pixels. A constant map (``is_constant``) is a miss, whatever the mask: its plateau is the whole
    map, and its centre would be the frame's centre. Leading dimensions of maps and masks must match.
    """
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks, dtype=bool)
    if maps.ndim < 2 or maps.shape[:-2] != masks.shape[:-2] or masks.ndim != maps.ndim:
        raise ValueError(f"maps (..., h, w) {maps.shape} and masks (..., H, W) {masks.shape} must have the same "
                         f"leading dimensions")
    size = masks.shape[-2:]
    flat_maps, flat_masks = maps.reshape(-1, *maps.shape[-2:]), masks.reshape(-1, *size)
    constant = is_constant(flat_maps)
    hits = [not c and bool(mask[pointing_point(m, size)]) for m, mask, c in zip(flat_maps, flat_masks, constant)]
    return np.asarray(hits, dtype=bool).reshape(maps.shape[:-2])


def energy_pointing_game(maps, masks) -> np.ndarray:
    """Share (...,) in [0, 1] of each map's positive mass (negative values and NaN count as 0) inside its mask
    (..., H, W, same shape as the maps); 0 for a constant map (``is_constant``: all zero or flat), whatever the
    mask, and for a map with no positive mass."""
    maps, masks = _check_pair(maps, masks)
    constant = is_constant(maps)
    maps = np.clip(np.nan_to_num(maps, nan=0.0), 0, None)
    total = maps.sum((-2, -1))
    inside = (maps * masks).sum((-2, -1))
    share = np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)
    return np.where(constant, 0.0, share)


def rank_correlation(a, b) -> np.ndarray:
    """Spearman rank correlation of maps a and b (..., h, w) over their last two axes (ties get mean ranks); the
    leading axes broadcast against each other. NaN where either map is constant (``is_constant``: the correlation
    is undefined, and a flat map plus rounding noise would otherwise get ranks from its noise) or holds NaN."""
    from scipy.stats import rankdata

    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    undefined = is_constant(a) | is_constant(b) | np.isnan(a).any((-2, -1)) | np.isnan(b).any((-2, -1))
    a, b = a.reshape(*a.shape[:-2], -1), b.reshape(*b.shape[:-2], -1)
    ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    denom = np.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(denom > 0, (ra * rb).sum(-1) / np.where(denom > 0, denom, 1), np.nan)
    return np.where(undefined, np.nan, corr)


def prompt_sensitivity(raw) -> np.ndarray:
    """Rank correlations (K, K) between the maps of K prompts for one frame (raw (K, h, w), or (1, K, h, w));
    entry (i, j) compares prompt i's map with prompt j's, the diagonal is 1. Off-diagonal values near 1 mean the
    map hardly depends on the prompt; near 0, the prompts light unrelated regions."""
    raw = np.asarray(raw)
    raw = raw[0] if raw.ndim == 4 else raw
    if raw.ndim != 3:
        raise ValueError(f"raw maps must be (K, h, w) or (1, K, h, w), got shape {raw.shape}")
    return rank_correlation(raw[:, None], raw[None, :])


def randomize_last_blocks(model, blocks: int = 1, *, seed: int = 0):
    """A copy of ``model`` whose last ``blocks`` vision blocks are re-initialised (weights N(0, 0.02), biases 0,
    LayerNorms to identity) and whose post-norm, pooling and projection are kept. ``model``: any model ``explain``
    accepts; the copy is of the same kind."""
    depth = backbone_of(model).depth
    if not 1 <= blocks <= depth:
        raise ValueError(f"blocks must be in 1..{depth}, got {blocks}")
    twin = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in backbone_of(twin).vision_blocks[-blocks:]:
            for name, p in block.named_parameters():
                if isinstance(dict(block.named_modules())[name.rsplit(".", 1)[0]], torch.nn.LayerNorm):
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return twin


def randomization_check(model, pixels, text_features, method: Callable, *, blocks: int = 1, seed: int = 0,
                        **options) -> np.ndarray:
    """Rank correlation (B, K) between ``method``'s maps of ``model`` and of the model with its last ``blocks``
    vision blocks re-initialised. Near 1: the map barely depends on those weights (a warning sign)."""
    before = method(model, pixels, text_features, **options)
    after = method(randomize_last_blocks(model, blocks, seed=seed), pixels, text_features, **options)
    return rank_correlation(before.cpu().numpy(), after.cpu().numpy())
