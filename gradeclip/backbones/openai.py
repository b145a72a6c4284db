"""Adapter for OpenAI's ``clip`` package (openai-clip): ``clip.model.CLIP`` with a ViT image encoder.

The pieces are those of ``vit.py`` (the behaviour gradeclip always had); the text side is CLIP's causal transformer
read at the end-of-text token (the argmax of the ids).
"""
from __future__ import annotations

import torch.nn.functional as F

from . import vit
from .adapters import LIBRARY, library_of, register_adapter
from .base import Backbone
from .pixels import CLIP_MEAN, CLIP_STD
from .tokens import decode_token  # noqa: F401 (moved to tokens.py; importable from here)


class OpenAIBackbone(Backbone):
    library = "openai-clip"
    mean, std, crop = CLIP_MEAN, CLIP_STD, True

    def __init__(self, model, tokenizer=None, name: str = ""):
        from .model import check_vit
        check_vit(model)
        super().__init__(model, tokenizer, name)
        visual = model.visual
        self.visual = visual
        self.blocks = visual.transformer.resblocks
        self.patch_weight = visual.conv1.weight
        self.patch_size = visual.conv1.kernel_size[0]
        self.resolution = visual.input_resolution
        self.depth = len(self.blocks)
        self.output_dim = visual.output_dim
        self.context_length = model.context_length
        self.text_blocks = model.transformer.resblocks
        self.text_depth = len(self.text_blocks)

    # image side
    def embed_image(self, pixels):
        return vit.embed_image(self.visual, pixels)

    def run_blocks(self, x, start, stop):
        return vit.run_blocks(self.blocks[start:stop], x)

    def heads(self, i):
        return self.blocks[i].attn.num_heads

    def qkv(self, i, x):
        return vit.qkv(self.blocks[i], x)

    def finish(self, i, x, o):
        return vit.finish_block(self.blocks[i], x, o)

    def attention_input(self, i, x):
        return self.blocks[i].ln_1(x)

    def attention_out(self, i, o):
        attn = self.blocks[i].attn
        return F.linear(o, attn.out_proj.weight, attn.out_proj.bias)

    def pool(self, x):
        return vit.image_features(self.visual, x[:, 0])

    def pool_rows(self, y):
        return vit.image_features(self.visual, y)

    @property
    def vision_blocks(self):
        return list(self.blocks)

    def cam_layer(self):
        return self.blocks[-1].ln_1, False  # openai-clip blocks run sequence-first (L, N, W)

    def logit_scale(self):
        return self.model.logit_scale.exp()

    def encode_image(self, pixels):
        return self.model.encode_image(pixels)

    def encode_text(self, tokens):
        return self.model.encode_text(tokens)

    def preprocess(self):
        from .model import clip_preprocess
        return clip_preprocess(self.model)

    # text side
    def default_tokenize(self, prompts, *, truncate: bool = False):
        from .model import tokenize
        return tokenize(self.model, prompts, truncate=truncate)

    def text_embed(self, tokens):
        return vit.embed_text(self.model, tokens)

    def text_run_blocks(self, x, start, stop):
        return vit.run_blocks(self.text_blocks[start:stop], x)

    def text_heads(self, i):
        return self.text_blocks[i].attn.num_heads

    def text_qkv(self, i, x):
        return vit.qkv(self.text_blocks[i], x)

    def text_finish(self, i, x, o):
        return vit.finish_block(self.text_blocks[i], x, o)

    def text_mask(self, length, device, dtype):
        return self.model.build_attention_mask()[:length, :length].to(device=device, dtype=dtype)

    def text_query(self, tokens):
        return tokens.argmax(dim=-1)

    def text_pool(self, rows):
        return self.model.ln_final(rows) @ self.model.text_projection


register_adapter("openai-clip", lambda model: library_of(model) == "clip", OpenAIBackbone, order=LIBRARY)
