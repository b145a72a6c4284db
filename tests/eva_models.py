"""Tiny random open_clip models with timm ``Eva`` towers (EVA02-CLIP and PE-Core shapes), built offline.

``register_tiny_eva_towers`` adds timm model names that build the library's own ``eva02_base_patch16_clip_224``,
``vit_pe_core_base_patch16_224`` (and ``eva02_enormous_patch14_clip_224``, ``vit_pe_core_gigantic_patch14_448``) with
small widths (their rotary, SwiGLU, inner-norm, pooling settings kept),
so that open_clip's ``TimmModel`` (which passes no size to timm) builds them from a config and a saved folder
loads them. ``tiny_eva_clip`` is the open_clip ``CustomTextCLIP`` around one, every weight perturbed.
"""
import json
from pathlib import Path

import torch

EVA02 = "gradeclip_tiny_eva02_clip"
PE_CORE = "gradeclip_tiny_pe_core"
EVA02_E = "gradeclip_tiny_eva02_e"  # EVA02-E-14's tower: residual post-norm blocks, no rotary embedding
PE_CORE_G = "gradeclip_tiny_pe_core_g"  # PE-Core-bigG-14-448's tower: no class token
# a 6 x 6 trained grid (48 px, patch 8), 4 heads of 16 channels; PE's pool has 2 heads
TOWER = dict(img_size=48, patch_size=8, embed_dim=64, depth=2, num_heads=4)
POOL = {EVA02: "token", PE_CORE: "map", EVA02_E: "token", PE_CORE_G: "map"}


def register_tiny_eva_towers():
    """Register the tiny tower names with timm (once per process). PE's tiny tower has layer scale
    (``init_values``), which the B-16 config lacks, so that ``gamma_1``/``gamma_2`` are exercised."""
    from timm.models import is_model, register_model
    from timm.models.eva import (eva02_base_patch16_clip_224, eva02_enormous_patch14_clip_224,
                                 vit_pe_core_base_patch16_224, vit_pe_core_gigantic_patch14_448)

    if is_model(EVA02):
        return

    def gradeclip_tiny_eva02_clip(pretrained=False, **kwargs):
        return eva02_base_patch16_clip_224(pretrained=False, **dict(TOWER, **kwargs))

    def gradeclip_tiny_pe_core(pretrained=False, **kwargs):
        return vit_pe_core_base_patch16_224(pretrained=False, **dict(TOWER, attn_pool_num_heads=2,
                                                                     init_values=0.5, **kwargs))

    def gradeclip_tiny_eva02_e(pretrained=False, **kwargs):
        return eva02_enormous_patch14_clip_224(pretrained=False, **dict(TOWER, **kwargs))

    def gradeclip_tiny_pe_core_g(pretrained=False, **kwargs):
        return vit_pe_core_gigantic_patch14_448(pretrained=False, **dict(TOWER, attn_pool_num_heads=2, **kwargs))

    for fn in (gradeclip_tiny_eva02_clip, gradeclip_tiny_pe_core, gradeclip_tiny_eva02_e, gradeclip_tiny_pe_core_g):
        register_model(fn)


def model_cfg(tower: str) -> dict:
    """open_clip's config of the tiny model (as ``EVA02-B-16.json`` / ``PE-Core-B-16.json`` shrunk)."""
    return {"embed_dim": 32, "custom_text": True,
            "vision_cfg": {"image_size": 48, "timm_model_name": tower, "timm_model_pretrained": False,
                           "timm_pool": POOL[tower], "timm_proj": None},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}


def tiny_eva_clip(tower: str, seed: int = 0, **tower_kwargs):
    """A random open_clip ``CustomTextCLIP`` with the tiny ``tower`` (EVA02 or PE_CORE); ``tower_kwargs`` rebuild
    the trunk with other timm arguments (``qkv_fused=True``: EVA-CLIP's fused projection with ``q_bias``/``v_bias``;
    ``dynamic_img_size=True``: timm's own resampling at any input size)."""
    import timm
    from open_clip.model import CustomTextCLIP

    register_tiny_eva_towers()
    torch.manual_seed(seed)
    cfg = model_cfg(tower)
    model = CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
    if tower_kwargs:  # as TimmModel builds it (num_classes = the embedding, its pool)
        model.visual.trunk = timm.create_model(tower, num_classes=cfg["embed_dim"], global_pool=POOL[tower],
                                               **tower_kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.logit_scale.fill_(2.0)
    return model.eval()


def same_weights(model, tower: str, **tower_kwargs):
    """A copy of ``model`` whose trunk is rebuilt with ``tower_kwargs`` (e.g. ``dynamic_img_size=True``) and the
    same weights."""
    twin = tiny_eva_clip(tower, seed=123, **tower_kwargs)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def save_eva_folder(model, tower: str, folder) -> str:
    """``model`` saved as an open_clip folder (``open_clip_config.json`` + weights) that ``load_clip`` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg(tower), "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return str(folder)
