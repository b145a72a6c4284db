"""Frames resized to a model input size and normalised: the piece that ``pixels.to_pixels`` and ``inputs.py`` share
(it lies below both, so neither imports the other back)."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from PIL import Image


def native_size(height: int, width: int, patch: int, scale: float = 1.0) -> Tuple[int, int]:
    """(H, W) of the model input: each side of the scaled frame rounded to the nearest multiple of ``patch``."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return (max(patch, int(height * scale / patch + 0.5) * patch),
            max(patch, int(width * scale / patch + 0.5) * patch))



def resize_normalise(backbone, frames: np.ndarray, size: Tuple[int, int]) -> torch.Tensor:
    """uint8 RGB frames (N, H, W, 3) resized (PIL bicubic) to ``size`` (H', W') and normalised with the backbone's
    mean and std: float32 (N, 3, H', W') on its device."""
    h, w = size
    resized = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])
    x = torch.from_numpy(resized).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(backbone.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).to(backbone.device)
