"""Backbones: CLIP-family ViTs of openai-clip, open_clip and transformers behind one interface (``base.Backbone``),
their loading (``model.load_clip``) and preprocessing (``pixels.to_pixels``).

Every adapter module is imported here, where each registers itself in ``adapters.py``: any import of a module of
this package runs this first, so ``backbone_of`` finds every adapter. A new adapter module is one line below (the
test ``tests/test_adapters.py`` fails naming a module that registers an adapter but is missing here). The adapters
import torch only; each library is imported when one of its models is used.
"""
from . import eva_tower, hf, hf_families, hf_siglip2, open_clip, openai, resnet, timm_tower, xclip  # noqa: F401
from .base import ACCEPTED_MODELS, Backbone, backbone_of

__all__ = ["ACCEPTED_MODELS", "Backbone", "backbone_of"]
