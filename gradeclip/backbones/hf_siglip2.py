"""Adapter for transformers ``Siglip2Model`` (SigLIP 2, NaFlex): SigLIP's attention-pooling head over patches that
a linear layer embeds, at any patch grid and aspect.

Image side. Pixels (B, 3, H, W), H and W multiples of the patch size p, are cut into an (h, w) = (H/p, W/p) grid of
patches in the image processor's order (``Siglip2ImageProcessor``: patches row by row from the top left, each patch
flattened as (p, p, 3): pixel rows, pixel columns, then RGB) and embedded by ``patch_embedding`` (a Linear over
p*p*3 values). The trained positional embeddings (an S x S grid, S*S = ``num_patches``) are resized per image to
its grid (h, w) -- rows h first -- by the library's own ``resize_positional_embeddings`` (bilinear with antialias).
All images of one call have one grid (frames of a call have one size), so no token is padding and the blocks and the
pooling head run without an attention mask; the library's processor pads every image to ``max_num_patches`` and
masks the padding, which gives the same embedding. The blocks, post-norm and pooling head are SigLIP's
(``HFSiglipBackbone``): the probe is the query, every patch token a key and value.

Input modes (``inputs.py``). Every aspect is native for NaFlex (positions are resized per image anyway):
``native`` = the frame's own size rounded to the patch grid; ``model`` = the grid the image processor would pick
(the largest size whose sides are multiples of p, each rounded up, with at most ``max_num_patches`` patches, aspect
kept up to that rounding), each side times ``scale`` rounded to the patch grid, resized by gradeclip (PIL bicubic);
``library`` = the processor's own resize (bilinear, antialias), rescale and normalisation, so the score is the
library's, the map placed over the whole frame (NaFlex never crops). ``max_num_patches`` is the loaded processor's
(``load_clip``), else the configuration's ``num_patches``.

Text side: SigLIP's (not causal, read at the last position, the tokenizer's attention mask passed), the score
``sigmoid(exp(logit_scale) * cos + logit_bias)``.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .base import Backbone
from .adapters import SPECIFIC, register_adapter
from .hf import HFSiglipBackbone, _features, transformers_class
from .library_input import LibraryInput

NAFLEX_MEAN = NAFLEX_STD = (0.5, 0.5, 0.5)


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """Pixels (B, C, H, W) -> patches (B, h*w, p*p*C) in ``Siglip2ImageProcessor``'s order (patch rows top to bottom,
    each patch's pixels row by row, channels last); H, W multiples of ``patch``."""
    b, c, height, width = pixels.shape
    h, w = height // patch, width // patch
    x = pixels.reshape(b, c, h, patch, w, patch).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(b, h * w, patch * patch * c)


def unpatchify(patches: torch.Tensor, grid: Tuple[int, int], patch: int) -> torch.Tensor:
    """The inverse of ``patchify`` for one image: patches (h*w + padding, p*p*C) -> pixels (C, h*p, w*p); rows past
    h*w (the processor's padding) are dropped."""
    h, w = grid
    x = patches[:h * w].reshape(h, w, patch, patch, -1).permute(4, 0, 2, 1, 3)  # (C, h, p, w, p)
    return x.reshape(x.shape[0], h * patch, w * patch)


def processor_size(height: int, width: int, patch: int, max_num_patches: int) -> Tuple[int, int]:
    """(H', W') in pixels that ``Siglip2ImageProcessor`` resizes a (height, width) image to (the library's rule)."""
    from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches

    return tuple(get_image_size_for_max_num_patches(height, width, patch, max_num_patches))


class HFSiglip2Backbone(HFSiglipBackbone):
    """``Siglip2Model`` through the Backbone interface (see the module docstring). ``resolution`` is p*S, the side
    of the square whose grid is the trained S x S (what the token-count warning compares with)."""

    mean, std, crop, prefix = NAFLEX_MEAN, NAFLEX_STD, False, 0

    def __init__(self, model, tokenizer=None, name: str = ""):
        Backbone.__init__(self, model, tokenizer, name)
        vm = model.vision_model
        if not getattr(vm, "use_head", True):
            raise TypeError("this Siglip2Model has no attention-pooling head (vision_use_head=False); its image "
                            "embedding is not defined")
        self.vm, self.layers, self.emb, self.head = vm, vm.encoder.layers, vm.embeddings, vm.head
        vc = model.config.vision_config
        self.patch_weight = self.emb.patch_embedding.weight
        self.patch_size = vc.patch_size
        self.side = self.emb.position_embedding_size  # S: the trained positions are an S x S grid
        self.num_patches = vc.num_patches
        self.resolution = self.patch_size * self.side
        self.depth = len(self.layers)
        self.output_dim = vc.hidden_size
        self.tm = model.text_model
        self.text_blocks = self.tm.encoder.layers
        self.text_depth = len(self.text_blocks)
        self.context_length = model.config.text_config.max_position_embeddings

    # ----- image side
    def positions(self, grid: Tuple[int, int], dtype) -> torch.Tensor:
        """Positional embeddings (h*w, W) resized to ``grid`` (h, w) by the library's own rule."""
        table = self.emb.position_embedding.weight.reshape(self.side, self.side, -1)
        shapes = torch.tensor([list(grid)], device=table.device)
        return self.emb.resize_positional_embeddings(table, shapes, max_length=grid[0] * grid[1])[0].to(dtype)

    def embed_image(self, pixels):
        """Normalised pixels (B, 3, H, W) -> tokens (B, h*w, W) entering block 0 (no class token)."""
        grid = self.check_pixels(pixels)
        w = self.patch_weight
        x = self.emb.patch_embedding(patchify(pixels.to(device=w.device, dtype=w.dtype), self.patch_size))
        return x + self.positions(grid, x.dtype)

    def library_inputs(self, pixels) -> dict:
        """The keyword arguments of the library's ``get_image_features`` for pixels (B, 3, H, W): patches, an
        all-ones ``pixel_attention_mask`` (B, h*w) and ``spatial_shapes`` (B, 2) = (h, w)."""
        h, w = self.check_pixels(pixels)
        patches = patchify(pixels.to(dtype=self.patch_weight.dtype), self.patch_size)
        b = patches.shape[0]
        return {"pixel_values": patches,
                "pixel_attention_mask": torch.ones(b, h * w, dtype=torch.long, device=patches.device),
                "spatial_shapes": torch.tensor([[h, w]] * b, device=patches.device)}

    def encode_image(self, pixels):
        return _features(self.model.get_image_features(**self.library_inputs(pixels)))

    # ----- preprocessing
    def processor(self):
        """The image processor: the one ``load_clip`` found in the model's folder, else ``Siglip2ImageProcessor``
        with the model's patch size, ``max_num_patches`` = the configuration's ``num_patches`` and its mean/std."""
        own = getattr(self, "image_processor", None)
        if own is not None:
            return own
        from transformers import Siglip2ImageProcessor

        return Siglip2ImageProcessor(patch_size=self.patch_size, max_num_patches=self.num_patches,
                                     image_mean=list(self.mean), image_std=list(self.std))

    def max_num_patches(self) -> int:
        return int(self.processor().max_num_patches)

    def model_size(self, height: int, width: int, scale: float = 1.0) -> Tuple[int, int]:
        """(H', W') of ``input="model"`` for frames (height, width): the processor's grid, times ``scale``."""
        from .resize import native_size

        size = processor_size(height, width, self.patch_size, self.max_num_patches())
        return native_size(size[0], size[1], self.patch_size, scale)

    def library_input(self) -> LibraryInput:
        """``input="library"``: the processor's own pixels, unpatchified to (3, H', W'); the whole frame is seen."""
        processor = self.processor()
        patch = int(processor.patch_size)
        if patch != self.patch_size or not getattr(processor, "do_resize", True):
            raise ValueError(f"input='library' needs the image processor to resize to the model's patch size "
                             f"{self.patch_size}; this one has patch_size {patch}, do_resize "
                             f"{getattr(processor, 'do_resize', None)}")

        def transform(image):
            out = processor(images=image, return_tensors="pt")
            grid = tuple(int(v) for v in out["spatial_shapes"][0])
            return unpatchify(out["pixel_values"][0], grid, patch)

        def size(height, width):
            return processor_size(height, width, patch, int(processor.max_num_patches))

        def geometry(height, width):
            h, w = size(height, width)
            return (0.0, 0.0, float(h), float(w)), (0.0, 0.0, float(height), float(width))

        return LibraryInput(transform, geometry, self.resolution, "NaFlex: fit max_num_patches, aspect kept",
                            input_size=size)

    def preprocess(self):
        """The library's own transform: PIL image -> normalised (3, H', W') float tensor at the processor's grid."""
        return self.library_input().transform


register_adapter("transformers Siglip2Model", transformers_class("Siglip2Model"), HFSiglip2Backbone, order=SPECIFIC)
