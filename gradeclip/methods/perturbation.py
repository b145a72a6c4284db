"""Perturbation methods: RISE, which needs only the image embedding (any backbone)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .gradients import prepare


def rise(model, pixels, text_features, *, n_masks: int = 1000, cells: int = 8, p: float = 0.5,
         batch_size: int = 32, seed: int = 0):
    """RISE (Petsiuk et al. 2018): saliency = sum over random masks of cosine(masked image) * mask / (N * p).

    Masks: ``cells`` x ``cells`` binary grids (each cell kept with probability ``p``), bilinearly upsampled with a
    random shift; masked pixels become 0 in normalised space (the dataset mean). Every masked image is scored for
    all prompts in one forward, ``batch_size`` images at a time. Negative saliency is clipped to 0; the map is
    averaged over each patch. ``seed`` makes the masks reproducible.
    """
    bb, grid, text = prepare(model, pixels, text_features)
    if n_masks < 1 or cells < 1 or not 0 < p <= 1 or batch_size < 1:
        raise ValueError(f"rise needs n_masks >= 1, cells >= 1, 0 < p <= 1 and batch_size >= 1; got n_masks="
                         f"{n_masks}, cells={cells}, p={p}, batch_size={batch_size}")
    b, _, h, w = pixels.shape
    generator = torch.Generator().manual_seed(seed)
    cell_h, cell_w = -(-h // cells), -(-w // cells)
    saliency = torch.zeros(b, text.shape[0], h, w, device=pixels.device)
    for start in range(0, n_masks, batch_size):
        m = min(batch_size, n_masks - start)
        coarse = (torch.rand(m, 1, cells, cells, generator=generator) < p).float()
        up = F.interpolate(coarse, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear",
                           align_corners=False)
        dy = torch.randint(0, cell_h, (m,), generator=generator)
        dx = torch.randint(0, cell_w, (m,), generator=generator)
        masks = torch.stack([up[i, 0, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(m)]).to(pixels.device)
        for i in range(b):
            feats = bb.encode_pixels(pixels[i:i + 1] * masks[:, None])  # (m, D)
            cos = F.normalize(feats.float(), dim=-1) @ text.float().T  # (m, K)
            saliency[i] += torch.einsum("mk,mhw->khw", cos, masks)
    saliency = (saliency / (n_masks * p)).clamp(min=0)
    return F.avg_pool2d(saliency, bb.patch_size).float()
