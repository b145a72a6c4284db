"""Adapter for transformers' ``XCLIPModel`` (X-CLIP, Ni et al. ECCV 2022): a video CLIP that scores whole clips.

X-CLIP's image tower runs the frames of one clip together: each vision layer turns every frame's class token into a
cross-frame communication ("message") token, lets the clip's message tokens attend to each other, and appends each
frame's message token as one extra key/value row of that frame's self-attention (the row is dropped after it). The
frames' class embeddings then pass a multi-frame integration transformer (MIT: temporal positions, encoder, residual,
mean over frames) to make the video embedding; the text embedding of each prompt is conditioned on the video by the
prompts generator (cross-attention from the text embedding to the mean over frames of the last layer's patch tokens).
The score is ``logit_scale * cos(video, text + prompts_generator(text, patches))``; probabilities are the softmax over
prompts. The clip length is fixed: the MIT has ``num_frames`` temporal positions and the message attention reshapes
the batch into clips of ``num_frames``, so the model scores exactly ``num_frames`` frames at a time.

This module only knows the library's names: it loads, preprocesses and runs the pieces; ``xclip_level.py`` explains.
A per-frame explanation (``explain``) is not defined for a video score and is refused in one line.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .base import Backbone, attend, interpolate_grid
from .adapters import SPECIFIC, register_adapter
from .hf import _run_layer, transformers_class
from .inputs import InputView, input_view, resolve_input
from .library_input import crop_geometry, shortest_side
from .pixels import CLIP_MEAN, CLIP_STD, resize_normalise


class XClipBackbone(Backbone):
    """An ``XCLIPModel`` seen through the parts of the ``Backbone`` interface that make sense for a video score:
    loading, its tokenizer and text features, its preprocessing (``input="library"``, the default: the
    checkpoint's own image processor, resize of the short side and centre crop) and ``num_frames``. Per-frame
    pieces (``embed_image``, ``run_blocks``, ...) refuse: use ``gradeclip.explain_clip``."""

    library = "transformers"
    takes_attention_mask = True
    default_input = "library"  # X-CLIP's own preprocessing, so that the score is the model's own
    mean, std, crop, prefix = CLIP_MEAN, CLIP_STD, True, 1

    def __init__(self, model, tokenizer=None, name: str = ""):
        super().__init__(model, tokenizer, name)
        vc = model.config.vision_config
        self.vm = model.vision_model
        self.layers = self.vm.encoder.layers
        self.patch_weight = self.vm.embeddings.patch_embedding.weight
        self.patch_size = vc.patch_size
        self.resolution = vc.image_size
        self.num_frames = vc.num_frames
        self.depth = len(self.layers)
        self.output_dim = model.config.projection_dim
        self.context_length = model.config.text_config.max_position_embeddings
        self.text_depth = model.config.text_config.num_hidden_layers

    # ----- what a per-frame method would call: refused, the score is the clip's
    def _per_frame(self, *args, **kwargs):
        raise ValueError(f"{type(self.model).__name__} scores whole clips of {self.num_frames} frames, not single "
                         f"frames: use gradeclip.explain_clip (per-frame explain, similarity and word importance are "
                         f"not defined for it)")

    embed_image = run_blocks = qkv = finish = pool = pool_rows = encode_image = _per_frame
    text_embed = check_pixels = _per_frame

    def heads(self, i):
        return self.layers[i].self_attn.num_heads

    def logit_scale(self):
        return self.model.logit_scale.exp()

    def encode_text(self, tokens, attention_mask=None):
        out = self.model.get_text_features(input_ids=tokens, attention_mask=attention_mask)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def preprocess(self):
        """PIL image -> (3, S, S) float tensor through the model's image processor (one frame)."""
        processor = self.processor()
        return lambda image: processor([[image]], return_tensors="pt")["pixel_values"][0, 0]

    # ----- frames to the model's input
    def processor(self):
        """The checkpoint's image processor (``load_clip`` keeps it), else a ``VideoMAEImageProcessor`` (what the
        published X-CLIP checkpoints ship) resizing the short side to the resolution and centre-cropping, with
        the backbone's mean and std."""
        processor = getattr(self, "image_processor", None)
        if processor is None:
            import transformers

            size = self.resolution
            processor = transformers.VideoMAEImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                image_mean=list(self.mean), image_std=list(self.std))
        return processor

    def view(self, height: int, width: int, input: Optional[str] = None, scale: float = 1.0) -> InputView:
        """How frames (height, width) reach the model: ``"library"`` (default) the processor's square crop,
        ``"native"``/``"model"`` as for every model (positions interpolated to the grid)."""
        mode = resolve_input(self, input, scale)
        if mode != "library":
            return input_view(self, height, width, mode, scale)
        processor = self.processor()
        size, crop = _size_dict(processor.size), _size_dict(getattr(processor, "crop_size", None) or {})
        cropped = bool(getattr(processor, "do_center_crop", True)) and crop.get("height")
        out = (crop["height"], crop["width"]) if cropped else (size.get("height"), size.get("width"))
        if out != (self.resolution, self.resolution) or not ({"shortest_edge"} <= set(size) or "height" in size):
            raise ValueError(f"input='library' needs an image processor that resizes to 'shortest_edge' or "
                             f"'height'/'width' and gives the model's square input {self.resolution}; this one has "
                             f"size {size}, crop {crop}")
        resized = shortest_side(height, width, size["shortest_edge"]) if "shortest_edge" in size \
            else (size["height"], size["width"])
        box = crop_geometry(height, width, resized, out if cropped else None, "floor")
        return InputView("library", 1.0, (height, width), out, (0.0, 0.0, float(out[0]), float(out[1])),
                         tuple(int(round(v)) for v in box), rule="the image processor's (short side + centre crop)")

    def clip_pixels(self, frames: np.ndarray, view: InputView) -> torch.Tensor:
        """uint8 RGB frames (n, H, W, 3) of one clip -> normalised float32 (n, 3, H', W') on the model's device."""
        if view.mode == "library":
            pixels = self.processor()([list(frames)], return_tensors="pt")["pixel_values"][0]
            return pixels.to(device=self.device, dtype=torch.float32)
        return resize_normalise(self, frames, view.size)

    # ----- the model's forward in pieces (one clip of num_frames frames: the batch is the clip's frames)
    def frame_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tokens (n, 1 + P, W) entering the first vision layer, positions interpolated to the grid."""
        emb = self.vm.embeddings
        x = emb.patch_embedding(pixels.to(device=self.device, dtype=self.dtype))
        grid = x.shape[-2:]
        # under autocast the patch embedding comes out in bf16/fp16; the library adds the class embedding and the
        # positions in the weights' dtype (the sum is promoted), and so do we
        x = x.flatten(2).transpose(1, 2).to(torch.promote_types(x.dtype, emb.class_embedding.dtype))  # (n, P, W)
        cls = emb.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        pos = emb.position_embedding.weight.to(x.dtype)
        # bicubic as transformers' interpolate_pos_encoding (written out: transformers < 4.43 has none for X-CLIP)
        x = torch.cat([cls, x], dim=1) + torch.cat([pos[:1], interpolate_grid(pos[1:], grid)])
        return self.vm.pre_layernorm(x)

    def run_layers(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The library's own vision layers ``start:stop`` on the tokens (n, 1 + P, W) of one clip."""
        for layer in self.layers[start:stop]:
            x = _run_layer(layer, x)
        return x

    def layer_with_attention(self, i: int, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, tuple]:
        """Vision layer ``i`` written out, as the library computes it, with its self-attention decomposed.

        x (n, L, W) with L = 1 + P. Each frame's message token (from the class tokens of all n frames) is appended
        as row L; q, k, v (n, L + 1, W) after ``layer_norm1``; the attention output before ``out_proj``,
        of which the class row o_cls (n, 1, W) is returned (a leaf of the graph where nothing before carries one);
        the message row is dropped after the attention. Returns the layer's output as its class row (n, 1, W) and
        its patch rows (n, P, W), kept apart (not concatenated) for the same reason, and (q, k, v, o_cls)."""
        layer = self.layers[i]
        n, length, width = x.shape
        msg = layer.message_fc(x[:, 0]).view(1, n, width)
        msg = msg + layer.drop_path(layer.message_attn(layer.message_ln(msg))[0])
        h = torch.cat([x, msg.view(n, 1, width)], dim=1)
        a = layer.self_attn
        hn = layer.layer_norm1(h)
        q, k, v = a.q_proj(hn), a.k_proj(hn), a.v_proj(hn)
        # The class row apart: the score reaches the other rows through the prompts generator, and a gradient
        # asked of the class row alone does not run back through them.
        o_cls, _ = attend(q[:, :1], k, v, a.num_heads)
        if not o_cls.requires_grad:
            o_cls.requires_grad_(True)
        o_rest = attend(q[:, 1:length], k, v, a.num_heads)[0]  # the message row's output is dropped
        rows = []
        for part, o_part in ((h[:, :1], o_cls), (h[:, 1:length], o_rest)):
            part = part + a.out_proj(o_part)
            rows.append(part + layer.mlp(layer.layer_norm2(part)))
        return rows[0], rows[1], (q, k, v, o_cls)

    def video_and_text(self, cls: torch.Tensor, patches: torch.Tensor, text: torch.Tensor):
        """From the last layer's class rows (n, 1, W) and patch rows (n, P, W) of one clip and the prompts' text
        features (K, D): the MIT's output tokens (n, D) (their mean is the video embedding) and the
        video-conditioned text embeddings (K, D),
        neither normalised, as ``XCLIPModel.forward`` computes them."""
        m = self.model
        n = cls.shape[0]
        cls = m.visual_projection(self.vm.post_layernorm(cls[:, 0]))  # (n, D)
        tokens = m.mit(cls.view(1, n, -1))[0][0]  # (n, D): last_hidden_state (a tuple's first item in 4.x)
        patches = m.prompts_visual_layernorm(patches) @ m.prompts_visual_projection  # (n, P, D)
        visual = patches.mean(dim=0, keepdim=True)  # (1, P, D)
        conditioned = text[None] + m.prompts_generator(text[None], visual)
        return tokens, conditioned[0]


def _size_dict(size) -> dict:
    """A processor's size (dict or transformers ``SizeDict``) as a dict of its set entries."""
    items = size.items() if hasattr(size, "items") else vars(size).items()
    return {k: v for k, v in items if v is not None}


register_adapter("transformers XCLIPModel", transformers_class("XCLIPModel"), XClipBackbone, order=SPECIFIC)
