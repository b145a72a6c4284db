"""Tokenization is the library's own: the ids gradeclip feeds each text tower equal what that library's own
tokenizer gives (cleaning, special tokens, padding length), and the scores equal the library's own pipeline at the
trained square input. Tokenizers are built offline in the test (``tokenizers`` WordPiece, CLIP's BPE file).
"""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradeclip
from gradeclip.backbones.base import backbone_of

from backbone_models import (BOS, EOS, PAD, SPECIALS, WORDS, write_open_clip_hf_tokenizer_model,
                             write_wordpiece_tokenizer)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip

PROMPTS = ["A photo of a Dog.", "ÉTÉ, café!", "a red car"]  # capitals, punctuation, accents; one plain
LONG = "a photo of a dog " * 6  # 30 words: over every context length here


@pytest.fixture(scope="module")
def square():
    """One frame at the models' trained square input (32 x 32), so that every library's preprocessing leaves it
    as it is and the scores must agree exactly."""
    return (np.random.RandomState(4).rand(1, 32, 32, 3) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def oc_folder(tmp_path_factory):
    return write_open_clip_hf_tokenizer_model(tmp_path_factory.mktemp("oc_hf_tok") / "model")


def _unit(x):
    return F.normalize(x.float(), dim=-1)


def test_open_clip_hf_tokenizer_ids_and_score_are_open_clip_own(oc_folder, square):
    """Catches the unwrapped HF tokenizer (``tokenizer.tokenizer``: no ``clean="canonicalize"``, so capitals and
    punctuation get other ids) and padding to another length: for an open_clip folder whose config names an HF
    tokenizer with canonicalize cleaning, gradeclip's ids are ``open_clip.get_tokenizer``'s, and ``similarity`` at
    the trained square input is the library's own pipeline (its tokenizer, encode_text, its preprocess and
    encode_image, logit scale and bias) within 1e-5."""
    import open_clip
    from PIL import Image

    name = f"local-dir:{oc_folder}"
    own_tok = open_clip.get_tokenizer(name)
    want = own_tok(PROMPTS)
    model, _ = gradeclip.load_clip(oc_folder, device="cpu")
    got = model.tokenize(PROMPTS)
    assert got.shape == (3, 16)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the fixture can see the bug: the raw HF tokenizer (no cleaning) gives other ids for the first two prompts
    raw = own_tok.tokenizer(PROMPTS, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    assert [bool((raw[i] != want[i]).any()) for i in range(3)] == [True, True, False]

    lib, _, preprocess = open_clip.create_model_and_transforms(name)
    lib.eval()
    with torch.no_grad():
        image = _unit(lib.encode_image(preprocess(Image.fromarray(square[0]))[None]))
        text = _unit(lib.encode_text(want))
        cos = image @ text.T
        probs = torch.sigmoid(lib.logit_scale.exp() * cos + lib.logit_bias)
    cosine, p = gradeclip.similarity(model, square, PROMPTS)
    np.testing.assert_allclose(cosine, cos.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(p, probs.numpy(), rtol=0, atol=1e-5)
    with torch.no_grad():  # and the wrong ids would have scored differently (the test can fail)
        wrong = image @ _unit(lib.encode_text(raw)).T
    assert np.abs(wrong[0, :2].numpy() - cosine[0, :2]).min() > 1e-4


def test_open_clip_over_long_prompt_is_refused_or_cut_as_open_clip_cuts(oc_folder):
    """Catches open_clip's silent truncation passed through (the prompt scored without its end), and a cut
    that differs from open_clip's own: the error names truncate=True and --truncate; with truncate=True the ids
    are open_clip's own truncated ids, with a warning."""
    import open_clip

    model, _ = gradeclip.load_clip(oc_folder, device="cpu")
    with pytest.raises(ValueError, match=r"context length is 16 .*truncate=True \(on the command line: --truncate\)"):
        model.tokenize(["a dog", LONG])
    with pytest.warns(UserWarning, match="truncated to the tokenizer's context length 16"):
        got = model.tokenize(["a dog", LONG], truncate=True)
    want = open_clip.get_tokenizer(f"local-dir:{oc_folder}")(["a dog", LONG])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert int(got[1, -1]) == EOS  # open_clip ends the cut prompt with its end token
    exact = " ".join(["dog"] * 15)  # 15 words + </s> = 16 tokens: fits exactly, no error, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int(model.tokenize([exact])[0, -1]) == EOS


def test_open_clip_default_tokenizer_is_open_clip_own():
    """Catches CLIP's BPE used with other cleaning or special tokens than open_clip's ``SimpleTokenizer`` (an
    open_clip model object passed without a tokenizer) or than openai-clip's ``clip.tokenize``."""
    import open_clip
    from open_clip.model import CLIP

    from conftest import tiny_clip

    torch.manual_seed(0)
    model = CLIP(32, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
                 text_cfg={"context_length": 20, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}).eval()
    want = open_clip.get_tokenizer("ViT-B-32", context_length=20)(PROMPTS)
    torch.testing.assert_close(backbone_of(model).tokenize(PROMPTS), want, rtol=0, atol=0)
    torch.testing.assert_close(gradeclip.tokenize(tiny_clip(), PROMPTS), clip.tokenize(PROMPTS).long(), rtol=0,
                               atol=0)


def _hf_text_config(max_positions):
    return dict(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=max_positions)


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    """A random transformers CLIPModel with a modern text configuration (end token id 1, not the largest id;
    pad id 0, not the end token; start id 3), a text tower of 24 positions and a WordPiece tokenizer of 16."""
    from transformers import CLIPConfig, CLIPModel

    tok = write_wordpiece_tokenizer(tmp_path_factory.mktemp("hf_clip_tok"), model_max_length=16, bos=True)
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(_hf_text_config(24), eos_token_id=EOS, bos_token_id=BOS, pad_token_id=PAD),
                        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8),
                        projection_dim=32)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, tok


@pytest.fixture(scope="module")
def hf_siglip(tmp_path_factory):
    """A random transformers SiglipModel (text tower of 24 positions, read at the last one) with a WordPiece
    tokenizer of 16 that ends each prompt with </s> and pads with <pad>."""
    from transformers import SiglipConfig, SiglipModel

    tok = write_wordpiece_tokenizer(tmp_path_factory.mktemp("hf_siglip_tok"), model_max_length=16)
    torch.manual_seed(1)
    config = SiglipConfig(text_config=_hf_text_config(24),
                          vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=32, patch_size=8))
    model = SiglipModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.logit_bias.fill_(-3.0)
    return model, tok


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.mark.parametrize("which", ["hf_clip", "hf_siglip"])
def test_transformers_ids_and_score_are_the_library_own(which, square, request):
    """Catches prompts padded to the text tower's 24 positions instead of the tokenizer's 16 (SigLIP reads the
    last position, so the score changes), the tokenizer's attention mask dropped (transformers 5's SigLIP
    tokenizer returns one and its pipeline passes it), and special tokens added twice: ids equal
    ``tokenizer(prompts, padding="max_length")``, and ``similarity`` equals the library's own forward on the
    tokenizer's full output (CLIP's zero-shot pipeline pads to the longest, SigLIP's to max_length) within 1e-5."""
    model, tok = request.getfixturevalue(which)
    siglip = which == "hf_siglip"
    want = tok(PROMPTS, padding="max_length", truncation=True, return_tensors="pt")
    bb = backbone_of(model, tok)
    got = bb.tokenize(PROMPTS)
    assert got.shape == (3, 16)
    torch.testing.assert_close(got, want["input_ids"], rtol=0, atol=0)
    pipeline = want if siglip else tok(PROMPTS, padding=True, return_tensors="pt")
    pixels = gradeclip.to_pixels(bb, square)
    with torch.no_grad():
        out = model(pixel_values=pixels, **pipeline)
        cos = _unit(out.image_embeds) @ _unit(out.text_embeds).T
    cosine, probs = gradeclip.similarity(bb, square, PROMPTS)
    np.testing.assert_allclose(cosine, cos.numpy(), rtol=0, atol=1e-5)
    want_probs = torch.sigmoid(out.logits_per_image) if siglip else out.logits_per_image.softmax(-1)
    np.testing.assert_allclose(probs, want_probs.numpy(), rtol=0, atol=1e-5)
    if siglip:  # the fixture can see a dropped mask or the tower's length: both change SigLIP's score
        with torch.no_grad():
            unmasked = _unit(_features(model.get_text_features(input_ids=want["input_ids"])))
            tower = tok(PROMPTS, padding="max_length", max_length=24, return_tensors="pt")
            longer = _unit(_features(model.get_text_features(**tower)))
        assert ((_unit(out.image_embeds) @ unmasked.T) - cos).abs().max() > 1e-4
        assert ((_unit(out.image_embeds) @ longer.T) - cos).abs().max() > 1e-4


def test_transformers_over_long_prompt(hf_siglip):
    """Catches a silent cut at the tokenizer's length, or a prompt checked against the tower's 24 positions
    instead (21 tokens fit the tower, not the tokenizer): refused in one line naming --truncate, cut with a
    warning to the tokenizer's own truncation when asked."""
    model, tok = hf_siglip
    bb = backbone_of(model, tok)
    long = "a photo of a dog " * 4  # 20 words and </s>
    with pytest.raises(ValueError, match=r"is 21 tokens long; the tokenizer's context length is 16 .*--truncate"):
        bb.tokenize(["a dog", long])
    with pytest.warns(UserWarning, match="truncated"):
        got = bb.tokenize(["a dog", long], truncate=True)
    want = tok(["a dog", long], padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_hf_clip_modern_config_reads_the_first_end_token(hf_clip):
    """Catches the end of text read by ``argmax`` of the ids (the legacy rule, right only where the end token
    has the largest id) on a modern config (eos_token_id 1, pad 0): the decomposed text forward at the adapter's
    query position equals ``get_text_features``, and word importance lists exactly the prompt's words."""
    model, tok = hf_clip
    bb = backbone_of(model, tok)
    tokens = bb.tokenize(PROMPTS)
    end = bb.text_query(tokens)
    first_eos = [row.tolist().index(EOS) for row in tokens]
    assert end.tolist() == first_eos and end.tolist() != tokens.argmax(-1).tolist()
    with torch.no_grad():
        rows = bb.text_run_blocks(bb.text_embed(tokens), 0, bb.text_depth)
        pooled = bb.text_pool(rows[torch.arange(3), end])
        torch.testing.assert_close(pooled, _features(model.get_text_features(input_ids=tokens)), rtol=1e-5,
                                   atol=1e-6)
    frame = (np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)
    words = gradeclip.word_importance(bb, frame, PROMPTS[0], layers=2)
    assert [w for w, _ in words] == ["A", "photo", "of", "a", "Dog", "."]


def test_open_clip_eos_pooling_reads_the_end_token():
    """Catches the end of text read by ``argmax`` where open_clip's text tower pools at its ``eos_id``
    (``pool_type="eos"``; end id 1, not the largest): the decomposed text forward equals ``encode_text`` and word
    importance lists exactly the prompt's words."""
    from open_clip.model import CLIP

    torch.manual_seed(2)
    model = CLIP(32, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
                 text_cfg={"context_length": 16, "vocab_size": len(SPECIALS) + len(WORDS), "width": 64, "heads": 1,
                           "layers": 2, "eos_id": EOS, "pool_type": "eos"}).eval()
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        tok = write_wordpiece_tokenizer(folder, model_max_length=16, bos=True)
    bb = backbone_of(model, tok)
    tokens = bb.tokenize(PROMPTS)
    end = bb.text_query(tokens)
    assert end.tolist() == [row.tolist().index(EOS) for row in tokens] != tokens.argmax(-1).tolist()
    with torch.no_grad():
        rows = bb.text_run_blocks(bb.text_embed(tokens), 0, bb.text_depth)
        torch.testing.assert_close(bb.text_pool(rows[torch.arange(3), end]), model.encode_text(tokens),
                                   rtol=1e-5, atol=1e-6)
    frame = (np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)
    words = gradeclip.word_importance(bb, frame, PROMPTS[1], layers=2)
    assert [w for w, _ in words] == ["ÉTÉ", ",", "café", "!"]


@pytest.mark.parametrize("command", ["explain", "video"])
def test_cli_truncate_flag(command, checkpoint, tmp_path, capsys):
    """Catches a --truncate flag that is not passed on (``video`` tokenizes inside ``explain_video``, which takes
    no truncate argument) and an error that names an option the command line does not have: an over-long prompt
    is refused in one line naming --truncate (exit 1), and with --truncate it is cut with a warning and the run
    completes."""
    from conftest import numbered_frames, write_video
    from gradeclip.cli import main

    video = write_video(tmp_path / "clip.avi", numbered_frames(3, 32, 48))
    args = [command, video, "-p", "a dog", "-p", "word " * 100, "--model", str(checkpoint), "--dpi", "30"]
    args += [] if command == "explain" else ["--no-gif"]
    assert main(args + ["--out", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err
    assert "context length is 77" in err and "--truncate" in err
    assert len([line for line in err.splitlines() if "context length" in line]) == 1
    assert main(args + ["--out", str(tmp_path / "cut"), "--truncate"]) == 0
    err = capsys.readouterr().err
    assert "truncated to the tokenizer's context length 77" in err
    assert any((tmp_path / "cut").glob("*.json"))


def test_open_clip_hf_text_tower_is_padded_to_the_tokenizer_length(tmp_path):
    """Catches prompts padded to a Hugging Face text tower's maximum (xlm-roberta's 514 positions, 5x slower)
    instead of open_clip's tokenizer length: a small xlm-roberta-shaped ``HFTextEncoder`` (40 positions, built
    offline from a local config) with open_clip's ``HFTokenizer`` at 16 gets 16 ids per prompt, and its text
    features equal ``encode_text`` of open_clip's own tokens."""
    from open_clip.model import CustomTextCLIP
    from open_clip.tokenizer import HFTokenizer
    from transformers import XLMRobertaConfig

    write_wordpiece_tokenizer(tmp_path, model_max_length=512)
    XLMRobertaConfig(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=40, pad_token_id=PAD,
                     type_vocab_size=1).save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    model = CustomTextCLIP(16, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
                           text_cfg={"hf_model_name": str(tmp_path), "hf_tokenizer_name": str(tmp_path),
                                     "hf_model_pretrained": False, "hf_pooler_type": "mean_pooler"}).eval()
    tok = HFTokenizer(str(tmp_path), context_length=16)
    bb = backbone_of(model, tok)
    assert bb.context_length == 40
    tokens = bb.tokenize(PROMPTS)
    assert tokens.shape == (3, 16)
    torch.testing.assert_close(tokens, tok(PROMPTS), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_prompts(PROMPTS), model.encode_text(tok(PROMPTS)), rtol=1e-5,
                                   atol=1e-6)
