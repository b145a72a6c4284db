"""X-CLIP's video score explained: which frames of a clip, and where in them, made X-CLIP match a prompt.

Grad-ECLIP is described here; every method (Grad-CAM, GAME, self-attention, rollout, and the refusals) is in
``xclip_methods.py``.

The explained score is X-CLIP's own video-level cosine s_k = cos(video, text_k conditioned on the video)
(``logits_per_video / logit_scale``), one clip of ``num_frames`` frames at a time (``backbones/xclip.py``).

What is decomposed: in each of the last ``layers`` vision layers, every frame's class-token row of the
self-attention output o_t = sum_i A_ti v_ti (before ``out_proj``). As in Grad-ECLIP (Zhao et al., ICML 2024), the
relevance of patch i of frame t is ReLU(sum_c w_tc v_tic lambda_ti), with lambda the min-max normalised cosine of
the frame's class-token query with patch i's key, summed over layers after the ReLU. The keys and values also
hold the frame's cross-frame message token (one extra row); its term is not a place on the frame and is left out
of the map (lambda is normalised over the patches only).

What is attributed by gradient only: the channel weights w_t = d s_k / d o_t[class row] are autograd's gradient of
the video score through everything after o_t: the rest of the layer, the later layers and their message tokens
(the clip's other frames), the post-norm and projection, the multi-frame integration transformer (MIT) and, with
``layers > 1``, the prompts generator (the text is conditioned on the last layer's patch tokens, which depend on
earlier layers' class rows through attention). At ``layers=1`` the video-conditioned text does not depend on the
decomposed rows, so w flows through the MIT only.

``frame_importance``: the exact additive split of the score over the MIT's output tokens. The video embedding is
V = mean_t y_t over the MIT's output tokens y_t (each one frame's class embedding plus the integration
transformer's update of it), so s_k = sum_t <y_t, g_k> / (n |V| |g_k|) exactly; the term of t is frame t's
importance. (Gradient x input on the class embeddings entering the MIT is not used: the cosine is invariant to the
scale of V, so those products do not sum to the score; on the random test model they sum to -0.093 where the
cosine is 0.156.) ``relevance_mass``: each frame's raw map summed.

Clips longer than ``num_frames`` are explained in windows of ``num_frames`` consecutive frames, starting at 0,
n, 2n, ...; where T is not a multiple of n, the last window is the last n frames (it overlaps the one before).
The clip's ``cosine`` is the mean of the windows' cosines and its ``probs`` the mean of the windows' probabilities
(X-CLIP's multi-view test averages its views the same way); each window counts 1 / (number of windows) in every
frame it holds, in ``raw``, ``frame_importance`` and ``relevance_mass``, so the importances still sum to the
clip's cosine. Fewer frames than ``num_frames`` are refused in one line (the MIT has exactly n temporal positions).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones.base import backbone_of
from .backbones.pixels import as_frames
from .checks import positive_int
from .clip_result import ClipExplanation
from .precision import check_precision
from .xclip_methods import check_xclip_method, explain_window


def window_starts(count: int, size: int) -> list:
    """First frame of each window of ``size`` frames over ``count`` frames (see the module docstring)."""
    if count < size:
        raise ValueError(f"X-CLIP scores clips of exactly {size} frames (its num_frames); got {count} frame"
                         f"{'s' if count != 1 else ''}: pass at least {size} (e.g. frames='uniform:{size}')")
    starts = list(range(0, count - size + 1, size))
    return starts + [count - size] if count % size else starts


def explain_xclip(model, frames, prompts: Union[str, Sequence[str]], *, method: str = "grad_eclip", tokenizer=None,
                  progress: bool = True, input: Optional[str] = None, scale: float = 1.0, batch_size: int = 16,
                  precision: str = "fp32", **options) -> ClipExplanation:
    """Explain X-CLIP's video-level score of T frames for K prompts (see the module docstring for what is
    decomposed and what is attributed by gradient, and ``xclip_methods.py`` for each method).

    ``model``: a transformers ``XCLIPModel`` or its gradeclip Backbone (``load_clip("hf:FOLDER")``). ``frames``:
    (T, H, W, 3) uint8 RGB array or list, T >= the model's ``num_frames``. ``prompts``: K strings. ``method``: one
    of ``xclip_methods.XCLIP_METHODS``; the others are refused in one line saying why. ``tokenizer``: where the
    model carries none. ``input``: ``"library"`` (default: the model's image processor, short side + centre crop;
    maps cover the crop, 0 elsewhere), ``"native"`` or ``"model"`` (positions interpolated). ``batch_size``:
    accepted for the shared signature; X-CLIP runs one window of ``num_frames`` at a time. ``precision``:
    ``"fp32"``, ``"bf16"`` or ``"fp16"`` (GPU only): the layers before the explained ones under autocast, the rest
    (score, gradients, maps) in float32. ``options``: Grad-ECLIP ``layers`` (last vision layers decomposed) and
    ``spatial_weight`` (False drops lambda); GAME ``start_layer`` (-1 only).

    Returns a ``ClipExplanation`` (pooling ``"xclip"``): ``cosine``/``probs`` (K,) from the model's own path,
    ``maps`` (T, K, H, W) in [0, 1] on one min-max scale per prompt over all T frames, ``raw`` (T, K, h, w),
    ``frame_importance``/``relevance_mass`` (T, K), ``windows`` [{start, stop, cosine, probs}] (stop exclusive).
    """
    check_xclip_method(method, options)
    bb = backbone_of(model, tokenizer)
    if not hasattr(bb, "num_frames"):
        raise TypeError(f"explain_xclip needs a transformers XCLIPModel, got {type(bb.model).__name__}")
    dtype = check_precision(precision, bb, method)
    layers = options.get("layers", 1)
    positive_int(layers, "layers", " (number of last vision layers to decompose)")
    if layers > bb.depth:
        raise ValueError(f"layers={layers} exceeds the model's {bb.depth} vision layers")
    positive_int(batch_size, "batch_size")
    frames = as_frames(frames)
    count, n = frames.shape[0], bb.num_frames
    starts = window_starts(count, n)
    view = bb.view(frames.shape[1], frames.shape[2], input, scale)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    text = bb.encode_prompts(prompts).to(bb.dtype)  # (K, D), the library's get_text_features, in float32
    share = 1.0 / len(starts)

    raw = importance = None
    windows = []
    for start in tqdm(starts, desc="explaining X-CLIP windows", unit="window",
                      disable=not progress or len(starts) < 2):
        pixels = bb.clip_pixels(frames[start:start + n], view)
        w_raw, w_imp, cosine = explain_window(bb, pixels, text, method, dtype, **options)
        if raw is None:
            raw = w_raw.new_zeros((count, *w_raw.shape[1:]))
            importance = w_imp.new_zeros((count, w_imp.shape[1]))
        raw[start:start + n] += share * w_raw
        importance[start:start + n] += share * w_imp
        probs = (bb.logit_scale().detach().float() * cosine.float()).softmax(dim=-1)
        windows.append({"start": start, "stop": start + n, "cosine": cosine.float().tolist(),
                        "probs": probs.tolist()})

    maps = view.place(_shared_scale(view.fit(raw)))
    return ClipExplanation(
        cosine=np.mean([w["cosine"] for w in windows], axis=0).astype(np.float32),
        probs=np.mean([w["probs"] for w in windows], axis=0).astype(np.float32),
        maps=maps.cpu().numpy().astype(np.float32), raw=raw.cpu().numpy().astype(np.float32),
        frame_importance=importance.cpu().numpy().astype(np.float32),
        relevance_mass=raw.flatten(2).sum(-1).cpu().numpy().astype(np.float32),
        indices=np.arange(count), times=np.full(count, np.nan), prompts=prompts, method=method, pooling="xclip",
        input=f"{view.mode} {view.size[1]}x{view.size[0]}", windows=windows, frames=frames, precision=precision,
        **bb.describe())


def _shared_scale(maps: torch.Tensor) -> torch.Tensor:
    """Maps (T, K, h, w) min-max normalised with ONE scale per prompt over all T frames (a frame that did not
    matter stays dark); a prompt whose maps are constant over the clip gets zeros (a miss, never NaN)."""
    flat = maps.transpose(0, 1).reshape(maps.shape[1], -1)  # (K, T*h*w)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    span = high - low
    varies = span > 1e-6 * torch.maximum(low.abs(), high.abs())
    scale = torch.where(varies, span, torch.ones_like(span))
    out = (maps - low[None, :, None, None]) / scale[None, :, None, None]
    return out * varies[None, :, None, None]
