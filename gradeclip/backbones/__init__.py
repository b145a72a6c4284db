"""Backbones: CLIP-family ViTs of openai-clip, open_clip and transformers behind one interface (``base.Backbone``),
their loading (``model.load_clip``) and preprocessing (``pixels.to_pixels``)."""
from .base import ACCEPTED_MODELS, Backbone, backbone_of

__all__ = ["ACCEPTED_MODELS", "Backbone", "backbone_of"]
