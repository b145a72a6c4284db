"""Reduced-precision inference: ``precision="fp32" | "bf16" | "fp16"`` for every entry point.

Choice: **autocast** on the model's own device (``torch.autocast(device.type, dtype)``), not a reduced-precision
copy of the model. The caller's model is never touched (its parameters stay float32, no copy doubles its memory);
matrix products and convolutions of the forward (and their backward) run in bfloat16/float16 under autocast.
What stays float32:

- maps: every method's raw maps are returned as float32. Under Grad-ECLIP only the blocks before the decomposed
  ones run in reduced precision: the decomposed blocks, the score, its gradients and the maps (summed over layers)
  are float32 with autocast switched off (``methods/grad_eclip.py``). Other methods run under autocast throughout
  (their gradients carry reduced-precision rounding);
- scores: the image features behind ``cosine`` and ``probs`` are a float32 readout of the last block: the tokens
  entering it (from a reduced-precision forward) are cast to float32 and the last block's readout and the final
  projection run in float32 (``Backbone.readout``). Grad-ECLIP with its defaults on a class-token model already
  computes exactly that (its one decomposed block is the last, in float32, from the reduced-precision tokens
  entering it), so its own features are used and no extra forward runs (``own_readout_is_exact``). Every other
  case recomputes the features once more per batch (``exact_features``: the blocks before the last again in
  reduced precision): other methods (their features are reduced-precision), Grad-ECLIP with ``layers`` > 1 (its
  features would carry more float32 blocks, and a frame's score would depend on the option), with
  ``single_head`` (scored by a second, reduced-precision forward) and on attention-pooling heads (its last block
  ran in reduced precision; only the head is float32). So a frame's score is the same whatever the method.
  Costs in ``benchmarks/precision.py``.

The grad-cam package's methods (gradcam_pp, xgradcam, layercam, eigencam, scorecam) read activations as numpy,
which has no bfloat16: they are refused under bf16/fp16. float16 needs a GPU: on CPU it is refused (bfloat16 works there). A model whose weights are not float32 (an
openai-clip model loaded on CUDA is float16) is refused for bf16/fp16: there is no float32 readout to recompute.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch

from .methods.baselines import run_method
from .methods.registry import get_method

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, model=None, method: Optional[str] = None) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` (None for fp32), checked against ``model``'s device and dtype (a
    ``Backbone``; None: only the name is checked) and ``method``. ValueError in one line for an unknown name, fp16
    on CPU, bf16/fp16 on a model whose weights are not float32, or with a method of the grad-cam package."""
    if precision not in _DTYPES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    dtype = _DTYPES[precision]
    if dtype is not None and method is not None and get_method(method).__module__.endswith(".cam_package"):
        raise ValueError(f"method {method!r} runs through the grad-cam package, which reads activations as numpy "
                         f"(no {precision}): use precision 'fp32'")
    if dtype is None or model is None:
        return dtype
    if precision == "fp16" and model.device.type == "cpu":
        raise ValueError("precision 'fp16' needs a GPU (float16 on CPU is slow and loses accuracy); "
                         "on CPU use precision 'bf16' or 'fp32'")
    if model.dtype != torch.float32:
        raise ValueError(f"precision {precision!r} runs a float32 model's forward in reduced precision; this model's "
                         f"weights are {str(model.dtype).replace('torch.', '')}: convert it with model.float() or "
                         f"use precision 'fp32'")
    return dtype


def autocast(model, dtype: Optional[torch.dtype]):
    """A context running ``model``'s forward in ``dtype`` on its own device (a no-op for None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(model.device.type, dtype=dtype)


@torch.no_grad()
def exact_features(model, pixels: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """Image features (B, D) float32 of normalised pixels (B, 3, H, W): the blocks before the last in ``dtype``
    (autocast), the last block's readout and the final projection in float32 (``model``: a ``Backbone``)."""
    last = model.depth - 1
    with autocast(model, dtype):
        x = model.tokens_before(pixels, last)
    with torch.autocast(model.device.type, enabled=False):
        return model.readout(x.to(model.dtype), last).float()


def own_readout_is_exact(method: str, model, options: dict) -> bool:
    """True where ``method``'s own image features under reduced precision already are ``exact_features``' float32
    readout of the last block: Grad-ECLIP on a class-token model (``model``: a ``Backbone``) with ``layers`` 1
    and without ``single_head``."""
    return (method == "grad_eclip" and model.has_class_token and options.get("layers", 1) == 1
            and not options.get("single_head", False))


def run_method_at(precision: str, method: str, model, pixels: torch.Tensor, text_features: torch.Tensor,
                  **options) -> Tuple[torch.Tensor, torch.Tensor]:
    """``run_method`` at ``precision`` (``model``: a ``Backbone``): returns (raw maps (B, K, h, w) float32, image
    features (B, D) float32); under bf16/fp16 the maps come from the reduced-precision run and the features are
    the float32 readout of the last block (the method's own where ``own_readout_is_exact``, else
    ``exact_features``). fp32 is ``run_method`` unchanged."""
    dtype = check_precision(precision, model, method)
    if dtype is None:
        return run_method(method, model, pixels, text_features, **options)
    with autocast(model, dtype):
        raw, features = run_method(method, model, pixels, text_features, **options)
    if own_readout_is_exact(method, model, options):
        return raw.float(), features.float()
    return raw.float(), exact_features(model, pixels, dtype)
