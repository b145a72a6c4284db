"""Adapters for three CLIP relatives in ``transformers``: CLIPSeg, AltCLIP and Chinese-CLIP.

All three keep CLIP's image tower under CLIP's names (``vision_model.embeddings`` with ``class_embedding``,
``patch_embedding`` and ``position_embedding``; ``pre_layrnorm``; ``encoder.layers[i]`` with ``layer_norm1``,
``self_attn.{q,k,v,out}_proj``, ``layer_norm2``, ``mlp``; ``post_layernorm`` of the class token;
``visual_projection``) and CLIP's score (softmax over prompts of ``exp(logit_scale) * cos``), so the image side and
every image method are ``HFClipBackbone``'s. What differs:

- ``CLIPSegModel`` (also ``CLIPSegForImageSegmentation.clip``): CLIP's causal text tower read at the end-of-text
  token, unchanged. Its library interpolates the positions at any input size by default, and its checkpoints' image
  processor squashes frames to 352×352 (ImageNet mean and std), more patches than the trained 224: ``input="library"``
  feeds the model exactly that.
- ``AltCLIPModel``: an XLM-R text tower (``text_model.roberta``: word, token-type and position embeddings, positions
  counted from the pad id + 1, LayerNorm; post-norm layers at ``encoder.layers``; bidirectional, padding hidden by
  the attention mask), then ``pre_LN`` and ``transformation`` on every token, read at the first token (``<s>``),
  then ``text_projection``. A prompt may fill ``max_position_embeddings - pad_token_id - 1`` positions (512).
- ``ChineseCLIPModel``: a BERT text tower (``text_model``: embeddings, post-norm layers at ``encoder.layer``, no
  pooler), read at ``[CLS]`` (the first token), then ``text_projection``; positions ``max_position_embeddings``. Its
  image transform resizes the frame to the square input without cropping (the original Chinese-CLIP's).

The bidirectional text towers are encoded by the library's own ``get_text_features`` with the tokenizer's attention
mask (without it padding tokens are attended and every score moves); word importance, which decomposes causal towers
read at the end-of-text token, refuses them in one line.
"""
from __future__ import annotations

from .hf import HFClipBackbone
from .pixels import CLIP_MEAN, CLIP_STD

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CLIPSegBackbone(HFClipBackbone):
    """``CLIPSegModel``: ``HFClipBackbone`` with CLIPSeg's processor defaults (squash, ImageNet mean and std)."""

    mean, std, crop = IMAGENET_MEAN, IMAGENET_STD, False
    library_any_size = True  # get_image_features interpolates the positions by default: any square input is its own


class _BidirectionalTextBackbone(HFClipBackbone):
    """CLIP's image tower with a BERT-style text tower read at its first token (AltCLIP, Chinese-CLIP)."""

    tower = "?"

    def _text_tower(self, model):
        self.tm = model.text_model
        self.text_blocks = self._text_layers()
        self.text_depth = len(self.text_blocks)
        self.context_length = self._text_positions(model.config.text_config)

    def text_embed(self, tokens):
        raise ValueError(f"word importance needs a CLIP-style text tower (causal, read at the end-of-text token); "
                         f"{type(self.model).__name__}'s text tower ({self.tower}) is bidirectional, post-norm and "
                         f"read at its first token, which gradeclip does not decompose")


class AltCLIPBackbone(_BidirectionalTextBackbone):
    """``AltCLIPModel``: CLIP's image tower, XLM-R's text tower (``text_model.roberta``)."""

    mean, std, crop = CLIP_MEAN, CLIP_STD, True
    tower = "XLM-R"

    def _text_layers(self):
        return self.tm.roberta.encoder.layers

    @staticmethod
    def _text_positions(config):
        return config.max_position_embeddings - config.pad_token_id - 1  # positions start after the pad id


class ChineseCLIPBackbone(_BidirectionalTextBackbone):
    """``ChineseCLIPModel``: CLIP's image tower, BERT's text tower; the square input is not cropped."""

    mean, std, crop = CLIP_MEAN, CLIP_STD, False
    tower = "BERT"

    def _text_layers(self):
        return self.tm.encoder.layer

    @staticmethod
    def _text_positions(config):
        return config.max_position_embeddings


FAMILIES = {"CLIPSegModel": CLIPSegBackbone, "AltCLIPModel": AltCLIPBackbone,
            "ChineseCLIPModel": ChineseCLIPBackbone}


def family_backbone(model, tokenizer, name: str, names: set):
    """The adapter of a CLIPSeg, AltCLIP or Chinese-CLIP model (``names``: the class names of its MRO), else None.
    A ``CLIPSegForImageSegmentation`` is refused in one line naming its ``.clip``."""
    for cls, adapter in FAMILIES.items():
        if cls in names:
            return adapter(model, tokenizer, name)
    if "CLIPSegForImageSegmentation" in names:
        raise TypeError("got transformers CLIPSegForImageSegmentation, whose output is a segmentation mask from its "
                        "decoder, not an image-text score; pass its CLIP, model.clip (a CLIPSegModel), to explain "
                        "the scores the decoder is conditioned on")
    return None
