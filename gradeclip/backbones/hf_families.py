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
mask (without it padding tokens are attended and every score moves). Word importance decomposes them read at their
first token, each prompt without its padding.
"""
from __future__ import annotations

from .adapters import SPECIFIC, register_adapter
from .hf import HFClipBackbone, _run_layer, transformers_class
from .pixels import CLIP_MEAN, CLIP_STD

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CLIPSegBackbone(HFClipBackbone):
    """``CLIPSegModel``: ``HFClipBackbone`` with CLIPSeg's processor defaults (squash, ImageNet mean and std)."""

    mean, std, crop = IMAGENET_MEAN, IMAGENET_STD, False
    library_any_size = True  # get_image_features interpolates the positions by default: any square input is its own


class _BidirectionalTextBackbone(HFClipBackbone):
    """CLIP's image tower with a BERT-style text tower read at its first token (AltCLIP, Chinese-CLIP).

    Text blocks are post-norm: q, k, v (``attention.self.query/key/value``) from the block's input itself; after
    attention ``attention.output``: LayerNorm(dense(o) + x); then ``output``: LayerNorm(dense(intermediate(h)) + h).
    Word importance decomposes each prompt alone without its trailing padding (the library masks it: the same
    numbers, no mask needed), read at the first token; the words lie between it and the end token."""

    def _text_tower(self, model):
        self.tm = model.text_model
        self.text_blocks = self._text_layers()
        self.text_depth = len(self.text_blocks)
        self.context_length = self._text_positions(model.config.text_config)
        self.pad_id = model.config.text_config.pad_token_id

    def text_lengths(self, tokens):
        return (tokens != self.pad_id).sum(dim=1)  # the tokenizer pads on the right

    def text_query(self, tokens):
        return tokens.new_zeros(tokens.shape[:1])  # <s> / [CLS]

    def text_word_end(self, tokens):
        return self.text_lengths(tokens) - 1  # </s> / [SEP]

    def text_mask(self, length, device, dtype):
        return None  # bidirectional; padding is dropped before decomposing (text_lengths)

    def text_embed(self, tokens):
        return self._text_embeddings()(input_ids=tokens)  # the library's: word + token type + position, LayerNorm

    def text_run_blocks(self, x, start, stop):
        for layer in self.text_blocks[start:stop]:
            x = _run_layer(layer, x)
        return x

    def text_heads(self, i):
        return self.text_blocks[i].attention.self.num_attention_heads

    def text_qkv(self, i, x):
        a = self.text_blocks[i].attention.self
        return a.query(x), a.key(x), a.value(x)

    def text_finish(self, i, x, o):
        block = self.text_blocks[i]
        after = block.attention.output
        h = after.LayerNorm(after.dense(o) + x)
        return block.output.LayerNorm(block.output.dense(block.intermediate(h)) + h)


class AltCLIPBackbone(_BidirectionalTextBackbone):
    """``AltCLIPModel``: CLIP's image tower, XLM-R's text tower (``text_model.roberta``)."""

    mean, std, crop = CLIP_MEAN, CLIP_STD, True

    def _text_layers(self):
        return self.tm.roberta.encoder.layers

    def _text_embeddings(self):
        return self.tm.roberta.embeddings  # positions counted from pad id + 1 over the non-pad tokens

    @staticmethod
    def _text_positions(config):
        return config.max_position_embeddings - config.pad_token_id - 1  # positions start after the pad id

    def text_pool(self, rows):
        return self.model.text_projection(self.tm.transformation(self.tm.pre_LN(rows)))


class ChineseCLIPBackbone(_BidirectionalTextBackbone):
    """``ChineseCLIPModel``: CLIP's image tower, BERT's text tower; the square input is not cropped."""

    mean, std, crop = CLIP_MEAN, CLIP_STD, False

    def _text_layers(self):
        return self.tm.encoder.layer

    def _text_embeddings(self):
        return self.tm.embeddings

    @staticmethod
    def _text_positions(config):
        return config.max_position_embeddings

    def text_pool(self, rows):
        return self.model.text_projection(rows)


def _refuse_segmentation(model, tokenizer=None, name: str = ""):
    """A ``CLIPSegForImageSegmentation`` is refused in one line naming its ``.clip``."""
    raise TypeError("got transformers CLIPSegForImageSegmentation, whose output is a segmentation mask from its "
                    "decoder, not an image-text score; pass its CLIP, model.clip (a CLIPSegModel), to explain "
                    "the scores the decoder is conditioned on")


FAMILIES = {"CLIPSegModel": CLIPSegBackbone, "AltCLIPModel": AltCLIPBackbone,
            "ChineseCLIPModel": ChineseCLIPBackbone, "CLIPSegForImageSegmentation": _refuse_segmentation}
for _cls, _adapter in FAMILIES.items():
    register_adapter(f"transformers {_cls}", transformers_class(_cls), _adapter, order=SPECIFIC)
