"""Silhouette-aligned relevance maps: the relevance counterpart of a gait energy image, from a batch run's records.

Per annotated explained frame of a video with masks: the map (min-max normalised per frame and prompt, upsampled
bilinearly to the frame, as the annotation metrics see it) and the silhouette are cropped to the silhouette's
bounding box widened by ``MARGIN`` x the box height on every side (clipped to the frame), resized (bilinear, OpenCV
``INTER_LINEAR``) to ``ALIGNED_HEIGHT`` rows keeping the aspect (narrowed to ``ALIGNED_WIDTH`` when wider) and
padded with zeros to ``ALIGNED_WIDTH`` columns, centred. A group's aligned map is the mean over all its videos'
aligned frames (each frame counts once), drawn beside the mean silhouette of the same frames.

Body bands (``BANDS``), on the silhouette's bounding box without margin: ``head`` the top 15 % of its rows,
``legs`` the bottom 40 %, ``torso`` the rows between. A frame's ``head_share`` etc. is the relevance in the band
over the relevance in the whole box (the three add up to 1; NaN when the map is zero on the box); a video's value is
the mean over its frames, and the group table averages videos like its other columns. How much relevance falls on
the person at all is the ``energy`` column.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..files import atomic_path

ALIGNED_HEIGHT, ALIGNED_WIDTH = 64, 48
MARGIN = 0.1
BANDS = (("head", 0.0, 0.15), ("torso", 0.15, 0.60), ("legs", 0.60, 1.0))
SHARE_COLUMNS = tuple(f"{name}_share" for name, _, _ in BANDS)
CACHE = "aligned.npz"
_VERSION = f"{ALIGNED_HEIGHT}x{ALIGNED_WIDTH} margin {MARGIN} bands {BANDS}"

Box = Tuple[int, int, int, int]  # top, left, bottom, right in pixels (bottom and right exclusive)


def silhouette_box(mask: np.ndarray) -> Optional[Box]:
    """The bounding box of the True pixels of ``mask`` (H, W) bool; None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def widen(box: Box, frame_hw: Tuple[int, int], margin: float = MARGIN) -> Box:
    """``box`` widened by ``round(margin * box height)`` pixels on every side, clipped to the frame (H, W)."""
    top, left, bottom, right = box
    pad = int(round(margin * (bottom - top)))
    return max(0, top - pad), max(0, left - pad), min(frame_hw[0], bottom + pad), min(frame_hw[1], right + pad)


def align(image: np.ndarray, box: Box, height: int = ALIGNED_HEIGHT, width: int = ALIGNED_WIDTH) -> np.ndarray:
    """Crop ``image`` (..., H, W) float to ``box``, resize bilinearly to ``height`` rows keeping the aspect (to
    ``width`` columns when that is wider) and pad with zeros to (height, width), centred. Returns (..., height,
    width) float32."""
    import cv2

    top, left, bottom, right = box
    crop = np.asarray(image, np.float32)[..., top:bottom, left:right]
    h, w = crop.shape[-2:]
    new_h, new_w = height, max(1, int(round(w * height / h)))
    if new_w > width:
        new_h, new_w = max(1, int(round(h * width / w))), width
    lead = crop.shape[:-2]
    flat = crop.reshape(-1, h, w)
    out = np.zeros((flat.shape[0], height, width), np.float32)
    y0, x0 = (height - new_h) // 2, (width - new_w) // 2
    for i, plane in enumerate(flat):
        out[i, y0:y0 + new_h, x0:x0 + new_w] = cv2.resize(plane, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(*lead, height, width)


def band_shares(maps: np.ndarray, box: Box) -> np.ndarray:
    """(K, len(BANDS)) float64: the share of each map's (K, H, W) relevance inside ``box`` (no margin) that falls
    in each band of ``BANDS`` (rows from the box's top); NaN for a map that is zero on the box."""
    top, left, bottom, right = box
    inside = np.asarray(maps, np.float64)[:, top:bottom, left:right]
    h = bottom - top
    edges = [int(round(start * h)) for _, start, _ in BANDS] + [h]
    total = inside.sum(axis=(1, 2))
    sums = np.stack([inside[:, a:b].sum(axis=(1, 2)) for a, b in zip(edges[:-1], edges[1:])], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total[:, None] > 0, sums / np.where(total > 0, total, 1)[:, None], np.nan)


def frame_map(raw: np.ndarray, frame_hw: Tuple[int, int], seen: Optional[Sequence[int]] = None) -> np.ndarray:
    """(K, H, W) float32 in [0, 1]: one frame's raw maps (K, h, w) upsampled bilinearly to the part of the frame the
    model saw (``seen`` (top, left, bottom, right); the whole frame when None) and min-max normalised per prompt,
    0 outside that part. The same map the annotation metrics score."""
    import torch

    from ..explain import normalize_maps, upsample

    top, left, bottom, right = seen if seen is not None else (0, 0, *frame_hw)
    maps = normalize_maps(upsample(torch.from_numpy(np.asarray(raw, np.float32))[None], (bottom - top, right - left)))
    out = np.zeros((raw.shape[0], *frame_hw), np.float32)
    out[:, top:bottom, left:right] = maps[0].numpy()
    return out


class RecordMaps:
    """The maps, masks and frames of one batch video from its folder ``out/videos/<id>``: ``indices`` (F,) frame
    indices, ``times`` (F,) true times in seconds, ``frame_hw``, ``prompts``; ``map(n)`` the (K, H, W) map of the
    n-th explained frame (``frame_map``), ``mask(index)`` the (H, W) bool silhouette (None when not annotated)."""

    def __init__(self, folder: Path, record: dict):
        from ..eval.annotations import open_masks

        self.folder, self.record = Path(folder), record
        npz = sorted(self.folder.glob("*_maps.npz"))
        if not npz:
            raise FileNotFoundError(f"no *_maps.npz in {self.folder}")
        sidecar = json.loads(npz[0].with_name(npz[0].name[:-4] + ".json").read_text())
        with np.load(npz[0]) as data:
            self.raw, self.indices, self.times = data["maps"], data["indices"], data["times"]
        self.prompts = sidecar["prompts"]
        self.frame_hw = tuple(sidecar["preprocessing"]["frame_size_hw"])
        seen = (record.get("input") or {}).get("seen_box_tlbr")
        self.seen = tuple(seen) if seen else None
        self.masks = open_masks(record["masks"], frame_size=self.frame_hw) if record.get("masks") else None
        self._have = set(self.masks.indices) if self.masks is not None else set()

    def map(self, n: int) -> np.ndarray:
        return frame_map(self.raw[n], self.frame_hw, self.seen)

    def mask(self, index: int) -> Optional[np.ndarray]:
        if index not in self._have:
            return None
        with warnings.catch_warnings():  # a resize is already in the record (masks_resized)
            warnings.simplefilter("ignore")
            return self.masks.mask(int(index), self.frame_hw)


def video_aligned(maps: RecordMaps) -> dict:
    """A video's aligned sums: ``maps`` (K, ALIGNED_HEIGHT, ALIGNED_WIDTH) float64 sum of aligned maps,
    ``silhouette`` (ALIGNED_HEIGHT, ALIGNED_WIDTH) sum of aligned silhouettes, ``frames`` how many frames (those
    with a non-empty silhouette), ``shares`` (K, len(BANDS)) the NaN-ignoring mean band shares over them."""
    k = len(maps.prompts)
    total = np.zeros((k, ALIGNED_HEIGHT, ALIGNED_WIDTH))
    silhouette = np.zeros((ALIGNED_HEIGHT, ALIGNED_WIDTH))
    shares, frames = [], 0
    for n, index in enumerate(maps.indices.tolist()):
        mask = maps.mask(index)
        box = silhouette_box(mask) if mask is not None else None
        if box is None:
            continue
        frame = maps.map(n)
        wide = widen(box, maps.frame_hw)
        total += align(frame, wide)
        silhouette += align(mask.astype(np.float32), wide)
        shares.append(band_shares(frame, box))
        frames += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        mean_shares = np.nanmean(np.stack(shares), axis=0) if shares else np.full((k, len(BANDS)), np.nan)
    return {"maps": total, "silhouette": silhouette, "frames": frames, "shares": mean_shares}


def cached_aligned(out: Path, record: dict) -> Optional[dict]:
    """``video_aligned`` of a complete or partial video with masks, kept in ``videos/<id>/aligned.npz`` (recomputed
    when the alignment settings changed); None for a video without masks or maps."""
    if record.get("status") not in ("complete", "partial") or not record.get("masks"):
        return None
    folder = Path(out) / "videos" / record["id"]
    if not any(folder.glob("*_maps.npz")):  # no maps kept (a record written without them): missing, not 0
        return None
    cache = folder / CACHE
    if cache.is_file():
        with np.load(cache) as data:
            if str(data["version"]) == _VERSION:
                return {"maps": data["maps"], "silhouette": data["silhouette"], "frames": int(data["frames"]),
                        "shares": data["shares"]}
    found = video_aligned(RecordMaps(folder, record))
    with atomic_path(cache) as temp:
        np.savez_compressed(temp, version=_VERSION, **found)
    return found


def share_values(found: Optional[dict], prompt: int) -> Dict[str, float]:
    """The row values (``head_share`` ...) of one prompt of ``cached_aligned``'s result (NaN without one)."""
    values = found["shares"][prompt] if found is not None else [float("nan")] * len(BANDS)
    return {name: round(float(v), 6) if np.isfinite(v) else float("nan") for name, v in zip(SHARE_COLUMNS, values)}


def group_aligned(found: List[dict]) -> Optional[dict]:
    """Frame-weighted means over videos' ``video_aligned`` results: ``maps`` (K, h, w), ``silhouette`` (h, w),
    ``videos`` and ``frames`` counted; None when no frame is aligned."""
    found = [f for f in found if f is not None and f["frames"]]
    frames = sum(f["frames"] for f in found)
    if not frames:
        return None
    return {"maps": sum(f["maps"] for f in found) / frames, "silhouette": sum(f["silhouette"] for f in found) / frames,
            "videos": len(found), "frames": frames}


def plot_aligned(groups: Dict[str, dict], prompts: List[str], name: str):
    """A row per group value: the mean silhouette (grey, 0..1), then each prompt's mean aligned map (one colour
    scale per prompt, shared down its column), n videos and frames in each title, band edges marked. Returns a
    matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = list(groups)
    tops = [max(float(g["maps"][j].max()) for g in groups.values()) or 1.0 for j in range(len(prompts))]
    aspect = ALIGNED_WIDTH / ALIGNED_HEIGHT
    fig, axes = plt.subplots(len(values), len(prompts) + 1, squeeze=False, layout="constrained",
                             figsize=(1.9 * aspect * (len(prompts) + 1) + 1.2, 2.1 * len(values) + 0.5))
    images = [None] * len(prompts)
    for r, value in enumerate(values):
        g = groups[value]
        axes[r, 0].imshow(g["silhouette"], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"{name} = {value}\nsilhouette (n={g['videos']} v, {g['frames']} f)", fontsize=7)
        for j, prompt in enumerate(prompts):
            images[j] = axes[r, j + 1].imshow(g["maps"][j], cmap="jet", vmin=0, vmax=tops[j])
            axes[r, j + 1].set_title(f"{_short(prompt)}\n(n={g['videos']} v, {g['frames']} f)", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            _band_marks(ax, g["silhouette"])
    for j, image in enumerate(images):
        if image is not None:
            fig.colorbar(image, ax=axes[:, j + 1], shrink=0.7, location="bottom", aspect=12).ax.tick_params(labelsize=6)
    fig.suptitle(f"silhouette-aligned mean relevance per {name} (box + {MARGIN:.0%} margin; head/torso/legs bands)",
                 fontsize=8)
    return fig


def _band_marks(ax, silhouette: np.ndarray) -> None:
    """Dashed lines at the band edges of the mean silhouette's box (where it is above 0.5)."""
    box = silhouette_box(silhouette > 0.5)
    if box is None:
        return
    top, _, bottom, _ = box
    for _, start, _ in BANDS[1:]:
        ax.axhline(top + start * (bottom - top) - 0.5, color="white", lw=0.6, ls="--")


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"
