"""Tiny random CLIPSeg, AltCLIP and Chinese-CLIP models of ``transformers``, saved as users' folders, offline.

Each is built from a small configuration of the library's own classes, every weight perturbed so that every path
(padding embeddings included) carries signal, and saved with ``save_pretrained`` together with a tokenizer built here
from a small vocabulary (CLIPSeg: openai-clip's BPE as a ``CLIPTokenizer``; AltCLIP: a sentencepiece-style unigram
``XLMRobertaTokenizer``; Chinese-CLIP: a WordPiece ``BertTokenizer``) and the family's image processor.
"""
import torch

from backbone_models import write_clip_tokenizer

WORDS = ["a", "photo", "of", "dog", "cat", "red", "car", "person", "walking", "two", "cats", "tree", "on", "the",
         "road", "猫", "狗", "的", "照", "片", "一", "张"]
PROMPTS = ["a dog", "a photo of two red cats walking on the road", "一张狗的照片"]  # 2, 10 and 6 words


def _perturb(model, logit_scale=2.0):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.logit_scale.fill_(logit_scale)
    return model.eval()


def _vision(width=64, layers=2, heads=2, patch=8, resolution=32):
    return dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=heads,
                image_size=resolution, patch_size=patch)


def tiny_clipseg(seed=0, *, segmentation=False):
    """A random ``CLIPSegModel`` (or, with ``segmentation``, a ``CLIPSegForImageSegmentation`` around one):
    vision 2 layers of width 64 (2 heads), patch 8, trained at 32 px; CLIP's text tower, 24 positions."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegModel

    torch.manual_seed(seed)
    config = CLIPSegConfig(text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=24),
                           vision_config=_vision(), projection_dim=32, extract_layers=[1, 2], reduce_dim=16)
    model = CLIPSegForImageSegmentation(config) if segmentation else CLIPSegModel(config)
    if segmentation:
        _perturb(model.clip)
        return model.eval()
    return _perturb(model)


def save_clipseg(model, folder, size=48):
    """``model`` saved with its tokenizer and a ``ViTImageProcessor`` that squashes frames to ``size``² (ImageNet mean
    and std), larger than the trained 32 px, as CLIPSeg's checkpoints ship (352 for 224)."""
    from transformers import ViTImageProcessor

    model.save_pretrained(str(folder))
    write_clip_tokenizer(folder)
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(str(folder))
    return str(folder)


def xlmr_tokenizer(model_max_length=512):
    """An ``XLMRobertaTokenizer`` (unigram, ▁ word starts) over ``WORDS``: <s> 0, <pad> 1, </s> 2, <unk> 3."""
    from transformers import XLMRobertaTokenizer

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -1.0 - i) for i, w in enumerate(WORDS)] + [(w, -40.0 - i) for i, w in enumerate(WORDS)]
    vocab += [("▁", -80.0), ("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=model_max_length)


def bert_tokenizer(model_max_length=24):
    """A ``BertTokenizer`` (WordPiece, Chinese characters split one by one) over ``WORDS``: [PAD] 0 ... [MASK] 4."""
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s"]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=model_max_length)


def _text(vocab_size, positions, pad):
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=positions, pad_token_id=pad)


def tiny_altclip(seed=0):
    """A random ``AltCLIPModel``: CLIP's vision tower as ``tiny_clipseg``'s, an XLM-R text tower (2 layers of 64,
    514 positions: 512 for a prompt, as AltCLIP's), ``project_dim`` 48, projection 32."""
    from transformers import AltCLIPConfig, AltCLIPModel

    torch.manual_seed(seed)
    text = dict(_text(len(xlmr_tokenizer()), 514, 1), project_dim=48)
    return _perturb(AltCLIPModel(AltCLIPConfig(text_config=text, vision_config=_vision(), projection_dim=32)))


def save_altclip(model, folder):
    from transformers import CLIPImageProcessor

    model.save_pretrained(str(folder))
    xlmr_tokenizer().save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return str(folder)


def tiny_chinese_clip(seed=0):
    """A random ``ChineseCLIPModel``: CLIP's vision tower as ``tiny_clipseg``'s, a BERT text tower (2 layers of 64,
    512 positions), projection 32."""
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    torch.manual_seed(seed)
    text = _text(len(bert_tokenizer()), 512, 0)
    return _perturb(ChineseCLIPModel(ChineseCLIPConfig(text_config=text, vision_config=_vision(), projection_dim=32)))


def save_chinese_clip(model, folder):
    """``model`` with its tokenizer and a ``ChineseCLIPImageProcessor`` that resizes to the square input without
    a crop (the original Chinese-CLIP's transform)."""
    from transformers import ChineseCLIPImageProcessor

    model.save_pretrained(str(folder))
    bert_tokenizer().save_pretrained(str(folder))
    ChineseCLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False).save_pretrained(str(folder))
    return str(folder)
