"""Grad-ECLIP on every supported backbone against the library's own image forward, ViT-B sizes, random weights.

Per backbone (openai-clip ViT-B/32, open_clip ViT-B-32, transformers CLIPModel ViT-B/32, transformers SiglipModel
base patch16 224, transformers Siglip2Model base patch16 NaFlex (at 256 x 256, its 256 trained patches), open_clip
ViT-B-16-SigLIP with its timm tower, open_clip coca_ViT-B-32, openai-clip and open_clip RN50, transformers
CLIPSegModel, AltCLIPModel and ChineseCLIPModel with ViT-B/16 image towers at 224, small text towers, which are not
timed, open_clip EVA02-B-16 and PE-Core-B-16 with timm Eva towers): the library's own image forward
(``encode_image`` / ``get_image_features``, no autograd) on a batch of frames at the native resolution, then
Grad-ECLIP as ``explain`` runs it (``run_method``: maps and image features of one forward) with 1 and 16 prompts on
the same batch. Targets: 1 prompt <= 1.3x the forward, 16 prompts <= 1.5x 1 prompt. Timings are medians of
--repeats rounds in one process (the three take turns); each backbone ends with a line
``BACKBONE grad_eclip_vs_forward=R prompts_16_vs_1=S``.

    python benchmarks/backbones.py [--frames 8] [--repeats 3] [--only openai,open_clip,hf_clip,hf_siglip,...]
"""
import argparse
import statistics
import time

import torch

from gradeclip.backbones.base import backbone_of  # first: gradeclip silences openai-clip's import warning
from gradeclip.methods.baselines import run_method


def openai_b32():
    from clip.model import CLIP
    return CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)


def open_clip_b32():
    import open_clip
    return open_clip.create_model("ViT-B-32", pretrained=None)  # open_clip's own config, random weights, offline


def open_clip_siglip_b16():
    import open_clip
    return open_clip.create_model("ViT-B-16-SigLIP", pretrained=None)  # CustomTextCLIP with a timm tower


def open_clip_coca_b32():
    import open_clip
    return open_clip.create_model("coca_ViT-B-32", pretrained=None)  # open_clip's ViT with the attentional pooler


def open_clip_eva02_b16():
    import open_clip
    return open_clip.create_model("EVA02-B-16", pretrained=None)  # timm Eva tower: rotary, SwiGLU, class token


def open_clip_pe_core_b16():
    import open_clip
    return open_clip.create_model("PE-Core-B-16", pretrained=None)  # timm Eva tower: rotary, latent-probe pool


def openai_rn50():
    from clip.model import CLIP
    return CLIP(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=512,
                transformer_heads=8, transformer_layers=12)  # clip.load("RN50")'s configuration


def open_clip_rn50():
    import open_clip
    return open_clip.create_model("RN50", pretrained=None)  # open_clip's ModifiedResNet, random weights


def hf_clip_b32():
    from transformers import CLIPConfig, CLIPModel
    return CLIPModel(CLIPConfig())  # the default configuration is ViT-B/32 at 224


def hf_siglip_b16():
    from transformers import SiglipConfig, SiglipModel
    return SiglipModel(SiglipConfig())  # the default configuration is SigLIP base patch16 224


def hf_siglip2_b16():
    from transformers import Siglip2Config, Siglip2Model
    return Siglip2Model(Siglip2Config())  # the default configuration is SigLIP 2 base patch16 NaFlex (16 x 16 positions)


def _b16():
    return dict(patch_size=16, image_size=224)  # ViT-B/16 at 224 (CLIPSeg's and Chinese-CLIP's base checkpoints)


def _small_text(**extra):
    return dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, **extra)


def hf_clipseg_b16():
    from transformers import CLIPSegConfig, CLIPSegModel
    return CLIPSegModel(CLIPSegConfig(text_config=_small_text(), vision_config=_b16()))


def hf_altclip_b16():
    from transformers import AltCLIPConfig, AltCLIPModel
    return AltCLIPModel(AltCLIPConfig(text_config=_small_text(vocab_size=1000, project_dim=768),
                                      vision_config=_b16()))


def hf_chinese_clip_b16():
    from transformers import ChineseCLIPConfig, ChineseCLIPModel
    return ChineseCLIPModel(ChineseCLIPConfig(text_config=_small_text(vocab_size=1000), vision_config=_b16()))


BACKBONES = {"openai": ("openai-clip ViT-B/32", openai_b32), "open_clip": ("open_clip ViT-B-32", open_clip_b32),
             "hf_clip": ("transformers CLIPModel ViT-B/32", hf_clip_b32),
             "hf_siglip": ("transformers SiglipModel B/16-224", hf_siglip_b16),
             "hf_siglip2": ("transformers Siglip2Model B/16 NaFlex, 256 patches", hf_siglip2_b16),
             "open_clip_siglip": ("open_clip ViT-B-16-SigLIP (timm tower)", open_clip_siglip_b16),
             "open_clip_coca": ("open_clip coca_ViT-B-32", open_clip_coca_b32),
             "openai_rn50": ("openai-clip RN50 (ModifiedResNet)", openai_rn50),
             "open_clip_rn50": ("open_clip RN50 (ModifiedResNet)", open_clip_rn50),
             "hf_clipseg": ("transformers CLIPSegModel B/16-224", hf_clipseg_b16),
             "hf_altclip": ("transformers AltCLIPModel B/16-224 (AltCLIP ships L/14)", hf_altclip_b16),
             "hf_chinese_clip": ("transformers ChineseCLIPModel B/16-224", hf_chinese_clip_b16),
             "open_clip_eva02": ("open_clip EVA02-B-16 (timm Eva, rotary)", open_clip_eva02_b16),
             "open_clip_pe_core": ("open_clip PE-Core-B-16 (timm Eva, rotary, probe pool)", open_clip_pe_core_b16)}


def median_times(fns, repeats):
    """Median seconds of each function; the functions take turns in every round, so that a change of machine load
    during the run affects all of them alike (the ratios are what matters)."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, kept in zip(fns, times):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(BACKBONES), help="comma-separated subset of " + ",".join(BACKBONES))
    args = parser.parse_args()
    print(f"{args.frames} frames at each model's native resolution; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {args.repeats}")
    for key in args.only.split(","):
        title, build = BACKBONES[key]
        torch.manual_seed(0)
        model = build().float().eval()
        bb = backbone_of(model)
        pixels = torch.randn(args.frames, 3, bb.resolution, bb.resolution)
        text = torch.randn(16, bb.output_dim)  # text features are given, as from encode_text once beforehand

        def forward():
            with torch.no_grad():
                bb.encode_image(pixels)

        t_forward, *rest = median_times([forward] + [lambda k=k: run_method("grad_eclip", bb, pixels, text[:k])
                                                     for k in (1, 16)], args.repeats)
        t = dict(zip((1, 16), rest))
        print(f"{title}: own image forward {t_forward * 1000:7.1f} ms, grad_eclip 1 prompt {t[1] * 1000:7.1f} ms, "
              f"16 prompts {t[16] * 1000:7.1f} ms")
        print(f"{key} grad_eclip_vs_forward={t[1] / t_forward:.2f} prompts_16_vs_1={t[16] / t[1]:.2f}")


if __name__ == "__main__":
    main()
