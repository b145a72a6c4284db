"""Explain a whole video: every selected frame x every prompt, streamed in batches, with one forward per batch.

Only the token-grid maps and the scores are kept (a 1,500-frame video with 4 prompts at ViT-B/32 is about 2 MB),
never the frames; exports decode the frames again as they write (the maps' own file: ``viz.maps_file``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones.base import backbone_of
from .backbones.inputs import InputView, input_view, model_pixels, warn_token_count
from .explain import normalize_maps, scores
from .io.frames import MAX_SIDE, video_info
from .io.index import shape_after
from .methods.baselines import run_method  # noqa: F401 (importing methods registers them)
from .methods.registry import check_options
from .precision import check_precision, run_method_at
from .io.stream import StreamErrors, select_indices, stream_frames

SCALES = ("shared", "per_frame")
_PIXEL_BUDGET = 16 * 480 * 640  # model-input pixels per forward: big frames go in smaller batches, the bar moves


@dataclass
class VideoExplanation:
    """Maps and scores of F explained frames x K prompts of one video.

    ``raw``: (F, K, h, w) float32 token-grid maps. ``cosine``, ``probs``: (F, K). ``indices``: (F,) frame indices;
    ``times``: (F,) seconds. ``failed``: frames that could not be decoded, as ``(index, reason)``.
    ``frame_similarity``: (F - 1,) cosine of the image embeddings of consecutive explained frames (how much the
    frame itself changed; beside the maps' rank correlation in ``eval.stability``). ``input_size``: the model
    input (H', W') in pixels; ``view``: how frames reached the model (``view.mode``: native, model or library;
    with library, ``view.box`` the part of the decoded frame the model saw). ``precision``: how the forward ran
    (fp32, bf16 or fp16; ``gradeclip/precision.py``).
    """

    video: str
    prompts: List[str]
    method: str
    model: str
    raw: np.ndarray
    cosine: np.ndarray
    probs: np.ndarray
    indices: np.ndarray
    times: np.ndarray
    fps: float
    frame_size: Tuple[int, int]
    input_size: Tuple[int, int]
    options: dict = field(default_factory=dict)
    failed: List[Tuple[int, str]] = field(default_factory=list)
    library: str = ""
    frame_similarity: Optional[np.ndarray] = None
    view: Optional[InputView] = None
    precision: str = "fp32"

    def normalized(self, scale: str = "shared") -> np.ndarray:
        """Maps (F, K, h, w) in [0, 1]. ``"shared"``: one scale per prompt over the whole video, so that a change of
        colour over time is a change of relevance; ``"per_frame"``: each map on its own. Constant maps give 0."""
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
        axes = (0, 2, 3) if scale == "shared" else (2, 3)
        low = self.raw.min(axis=axes, keepdims=True)
        span = self.raw.max(axis=axes, keepdims=True) - low
        with np.errstate(invalid="ignore", divide="ignore"):
            maps = np.where(span > 0, (self.raw - low) / np.where(span > 0, span, 1), 0).astype(np.float32)
        if self.view is None or self.view.mode != "library":
            return maps
        # the model saw part of the frame: the maps go onto a frame-shaped canvas (long side 256), 0 elsewhere
        canvas = self.view.at(_canvas(self.view.frame_size))
        return canvas.place(canvas.fit(torch.from_numpy(maps))).numpy()

    def frame_maps(self, n: int, size: Tuple[int, int]):
        """Explained frame ``n``'s maps for scoring against annotations at frame ``size`` (H, W): ``(maps, box)``,
        maps (K, bh, bw) float32 in [0, 1] (each min-max normalised) on the part of the frame the model saw,
        box (top, left, bottom, right) that part in frame pixels (the whole frame unless ``input="library"``
        cropped it). Metrics are computed on the box only: the rest was not seen."""
        view = self.view.at(size) if self.view is not None else None
        raw = torch.from_numpy(self.raw[n:n + 1]).float()
        if view is None:
            from .explain import upsample
            return normalize_maps(upsample(raw, size))[0].numpy(), (0, 0, *size)
        return normalize_maps(view.fit(raw))[0].numpy(), view.box


def _canvas(frame_size) -> Tuple[int, int]:
    h, w = frame_size
    f = 256 / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def explain_video(model, video, prompts: Union[str, Sequence[str]], *, method: str = "grad_eclip",
                  every: Optional[int] = None, count: Optional[int] = None, batch_size: int = 16,
                  input: Optional[str] = None, scale: float = 1.0, model_name: str = "", progress=True, tokenizer=None,
                  max_side: Optional[int] = MAX_SIDE, precision: str = "fp32", **options) -> VideoExplanation:
    """Explain the selected frames of ``video`` (all, every ``every``-th, or ``count`` evenly spaced) for
    ``prompts`` with ``method``, at most ``batch_size`` frames per forward (fewer for large frames, so that
    memory stays bounded and the progress bar moves), with a progress bar. Text features are computed once.
    Frames that fail to decode are skipped and listed in ``failed``; the others are kept. ``times`` are the frames'
    presentation times from the container. ``max_side``: frames with a longer side above this many pixels are
    reduced while they are decoded (default ``MAX_SIDE`` = 1920: a 4K clip costs what a 1080p one does); None
    keeps full size. ``input`` and ``scale``: the model input as for ``explain`` (None: the model's default;
    ``"library"``: the maps cover the library's crop, see ``view``). ``model`` and ``tokenizer`` as for ``explain``; ``model_name`` is recorded (default: the name
    the model was loaded as). ``progress``: True for a bar of its own, False for none, or a caller's bar (anything
    with ``update(n)``, e.g. a tqdm) to advance by the frames explained. ``precision``: ``"fp32"``, ``"bf16"`` or
    ``"fp16"`` as for ``explain`` (recorded in the sidecar).
    """
    model = backbone_of(model, tokenizer)
    check_options(method, options)
    check_precision(precision, model, method)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    text_features = model.encode_prompts(prompts)
    info = video_info(video)
    total = len(select_indices(info.num_frames, every=every, count=count))
    width, height = shape_after(info.width, info.height, max_side)
    view = input_view(model, height, width, input, scale)
    warn_token_count(model, view)
    input_size = view.size
    batch_size = max(1, min(batch_size, _PIXEL_BUDGET // (input_size[0] * input_size[1])))
    errors = StreamErrors()
    raws, feats, indices, times = [], [], [], []
    own = not hasattr(progress, "update")  # else the caller's bar, advanced frame by frame
    bar = tqdm(total=total, desc=f"{Path(video).name} ({method})", unit="frame", disable=not progress) if own \
        else progress
    try:
        for batch in stream_frames(video, every=every, count=count, batch_size=batch_size, errors=errors,
                                   max_side=max_side):
            raw, features = run_method_at(precision, method, model, model_pixels(model, batch.frames, view),
                                          text_features, **options)
            raws.append(raw.cpu())
            feats.append(features)
            indices.append(batch.indices)
            times.append(batch.times)
            bar.update(len(batch.indices))
    finally:
        if own:
            bar.close()
    if not raws:
        raise ValueError(f"{video}: no frame could be decoded")
    cosine, probs = scores(model, torch.cat(feats), text_features)
    described = model.describe()
    embedded = torch.nn.functional.normalize(torch.cat(feats).float(), dim=-1)
    consecutive = (embedded[1:] * embedded[:-1]).sum(-1).cpu().numpy()  # cosine of consecutive frames' embeddings
    return VideoExplanation(
        video=str(video), prompts=prompts, method=method, model=model_name or described["model"],
        library=described["library"], raw=torch.cat(raws).numpy(),
        cosine=cosine, probs=probs, indices=np.concatenate(indices), times=np.concatenate(times), fps=info.fps,
        frame_size=(info.height, info.width), input_size=input_size,
        options=dict(options), failed=list(errors.failed), frame_similarity=consecutive, view=view,
        precision=precision)
