"""SigLIP 2 NaFlex (transformers ``Siglip2Model``): scores equal to the library's own pipeline, Grad-ECLIP equal to a
naive loop reference, maps the right way round, the methods that apply and the refusals, loading from a folder.

The model is a random ``Siglip2Model`` (patch 8, trained positions a 4 x 4 grid, 2 heads); its folder holds a
``Siglip2ImageProcessor`` with ``max_num_patches`` 24 (more than the trained 16, as NaFlex checkpoints are used) and a
``Siglip2Tokenizer`` (the library's own class: lower case, padded on the left) over a character vocabulary, written
offline. Frames are non-square; the library's own pipeline pads and masks.
"""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gradeclip
from gradeclip import load_clip
from gradeclip.backbones.base import backbone_of
from gradeclip.backbones.inputs import input_view
from gradeclip.cli import main
from gradeclip.methods.registry import method_names

from backbone_models import (check_pooling_head_model, naive_pooling_grad_eclip, perturbed_sigmoid_model,
                             clip_tokenizer)
from conftest import write_video

PATCH, MAX_PATCHES, TEXT_LENGTH = 8, 24, 24
PROMPTS = ["a photo of a dog", "A Red Car!", "two cats walking"]  # capitals: the tokenizer lower-cases
CLASS_TOKEN_METHODS = {"self_attention", "rollout", "game", "clip_surgery", "gem"}


def tiny_siglip2(seed=0):
    """A random ``Siglip2Model`` (vision width 128, 2 heads, 2 layers; text width 64, 1 layer, 24 positions, CLIP's
    vocabulary size so that CLIP's BPE ids fit), every weight perturbed, logit scale 2 and bias -3."""
    from transformers import Siglip2Config, Siglip2Model

    torch.manual_seed(seed)
    config = Siglip2Config(
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=1, max_position_embeddings=TEXT_LENGTH, projection_size=128),
        vision_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=PATCH, num_patches=16))
    return perturbed_sigmoid_model(Siglip2Model(config))


@pytest.fixture(scope="module")
def model():
    return tiny_siglip2(3)


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    """The model saved as a transformers folder with its image processor and a ``Siglip2Tokenizer`` (24 tokens,
    one per character, lower case, padded on the left as the library's class pads)."""
    from transformers import Siglip2ImageProcessor, Siglip2Tokenizer

    path = tmp_path_factory.mktemp("siglip2")
    model.save_pretrained(str(path))
    chars = list("abcdefghijklmnopqrstuvwxyz\u2581.,!")  # U+2581: the tokenizer's space
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + chars)}
    Siglip2Tokenizer(vocab=vocab, merges=[], model_max_length=TEXT_LENGTH).save_pretrained(str(path))
    Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=MAX_PATCHES).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def frames():
    """Two non-square frames 24 x 40: a 3 x 5 grid at patch 8 (positions resized from the trained 4 x 4)."""
    return (np.random.RandomState(0).rand(2, 24, 40, 3) * 255).astype(np.uint8)


def library_patches(pixels, pad_to):
    """The library's own patches of pixels (B, 3, H, W), each padded to ``pad_to`` rows with its mask, as
    ``Siglip2ImageProcessor`` makes them (its ``convert_image_to_patches`` and ``pad_along_first_dim``)."""
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches, pad_along_first_dim

    rows = [pad_along_first_dim(convert_image_to_patches(p, PATCH), pad_to) for p in pixels]
    grid = [pixels.shape[2] // PATCH, pixels.shape[3] // PATCH]
    return {"pixel_values": torch.stack([r[0] for r in rows]), "pixel_attention_mask": torch.stack([r[1] for r in rows]),
            "spatial_shapes": torch.tensor([grid] * len(pixels))}


def naive_siglip2_grad_eclip(model, pixels, text_features, heads=None):
    """The naive loop reference (``naive_pooling_grad_eclip``: autograd gradient of the cosine at the probe's
    attention output, loops over heads and tokens) fed with the library's own pieces: the tokens after
    post_layernorm from its own vision forward (patches padded by 4 rows and masked), the head's probe query, its
    key and value projections and the rest of its head."""
    vm = model.vision_model
    n = (pixels.shape[2] // PATCH) * (pixels.shape[3] // PATCH)
    with torch.no_grad():
        h = vm(**library_patches(pixels, n + 4)).last_hidden_state[:, :n]  # after post_layernorm, padding cut off
    head = vm.head
    attn = head.attention
    wq, wk, wv = attn.in_proj_weight.detach().chunk(3)
    bq, bk, bv = attn.in_proj_bias.detach().chunk(3)
    q = head.probe.detach()[0, 0] @ wq.T + bq

    def rest(o):
        y = attn.out_proj(o)
        return y + head.mlp(head.layernorm(y))

    return naive_pooling_grad_eclip(h, q, lambda t: t @ wk.T + bk, lambda t: t @ wv.T + bv, heads or attn.num_heads,
                                    rest, text_features)


def test_library_mode_scores_are_the_library_pipeline_own(model, folder):
    """Bugs caught: the processor's grid ignored (frames squashed to a square, or resized by the longer side),
    unpatchify with patch rows and columns swapped, SigLIP's sigmoid replaced by a softmax, the tokenizer's
    attention mask dropped (its padding is on the left), its lower-casing skipped or its padding side overridden. Two frames of different aspect (wide, tall) go through the library's own image
    processor and tokenizer in one call (each padded to 24 patches and masked) and ``Siglip2Model``'s forward;
    gradeclip's library-mode cosines and probabilities for 3 prompts equal its logits within 1e-5."""
    from transformers import AutoTokenizer, Siglip2ImageProcessor

    rng = np.random.RandomState(4)
    wide, tall = [(rng.rand(*shape, 3) * 255).astype(np.uint8) for shape in [(28, 60), (44, 20)]]
    processor, tokenizer = Siglip2ImageProcessor.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    images = processor(images=[Image.fromarray(wide), Image.fromarray(tall)], return_tensors="pt")
    text = tokenizer(PROMPTS, padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt")
    assert text["attention_mask"][:, 0].tolist() == [0, 0, 0]  # padded on the left: the mask matters
    assert images["pixel_attention_mask"].sum(1).tolist() != [MAX_PATCHES] * 2  # the library padded
    with torch.no_grad():
        out = model(**images, **text)
    cosines = (out.image_embeds @ out.text_embeds.T).numpy()
    probs = torch.sigmoid(out.logits_per_image).numpy()
    backbone, _ = load_clip(f"hf:{folder}", device="cpu")
    for i, frame in enumerate([wide, tall]):
        result = gradeclip.explain(backbone, frame, PROMPTS, input="library", progress=False)
        np.testing.assert_allclose(result.cosine[0], cosines[i], rtol=0, atol=1e-5)
        np.testing.assert_allclose(result.probs[0], probs[i], rtol=0, atol=1e-5)
        assert result.view.size == tuple(int(s) * PATCH for s in images["spatial_shapes"][i])
        assert result.raw.shape[-2:] == tuple(images["spatial_shapes"][i].tolist()) and result.seen.all()
    assert not np.allclose(cosines[0], cosines[1], atol=1e-3)  # the two frames give different numbers


def test_pieces_equal_get_image_features_at_a_native_grid(model):
    """Bugs caught: positions resized to (w, h) instead of (h, w) (spatial_shapes swapped), patches flattened
    channels first or column by column, positions not resized at all, the pooling head or the decomposed last block
    wrong. Tokens entering block 0 equal the library's Linear patch embedding of its own patches plus the trained
    4 x 4 positions resized by ``F.interpolate`` (bilinear, antialias, written here); the dense forward and the
    decomposed last-block readout equal ``get_image_features`` with the library's padded, masked patches."""
    bb = backbone_of(model)
    pixels = torch.randn(2, 3, 24, 40)  # a 3 x 5 grid
    emb = model.vision_model.embeddings
    inputs = library_patches(pixels, 20)
    with torch.no_grad():
        table = emb.position_embedding.weight.reshape(4, 4, -1).permute(2, 0, 1)[None]
        resized = F.interpolate(table, size=(3, 5), mode="bilinear", align_corners=False, antialias=True)
        want_tokens = emb.patch_embedding(inputs["pixel_values"][:, :15]) + resized[0].flatten(1).T
        torch.testing.assert_close(bb.embed_image(pixels), want_tokens, rtol=1e-5, atol=1e-5)
        own = model.get_image_features(**inputs).pooler_output
        torch.testing.assert_close(bb.encode_pixels(pixels), own, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bb.readout(bb.tokens_before(pixels, -1), bb.depth - 1), own, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bb.encode_image(pixels), own, rtol=1e-5, atol=1e-5)


def test_grad_eclip_and_methods_on_non_square_frames(model, frames):
    """Bugs caught: a wrong query (a token instead of the probe), keys taken before post_layernorm, a missing ReLU,
    lambda over the wrong axis, ``single_head`` ignored, a class-token method silently reading a patch, the grid
    off by one. Grad-ECLIP (the model's 2 heads, and one head) equals the naive loop reference on 24 x 40 frames
    (3 x 5 grid), K = 3 prompts; every method's cosine is the library's; the class-token methods, ``layers=2`` and
    word importance refuse in one line naming Siglip2Model."""
    check_pooling_head_model(model, frames, PROMPTS, grid=(3, 5), name="Siglip2Model", text_width=128,
                             words_error=ValueError, words_match="SigLIP's text tower is not supported",
                             reference=lambda pixels, text, heads: naive_siglip2_grad_eclip(model, pixels, text,
                                                                                            heads))


def test_every_method_runs_or_refuses_in_one_line(model, frames):
    """Bugs caught: a method that needs the class token's row running on the pooled model (a patch read as the
    image), or one that applies refusing. The 11 methods that apply give finite (1, 3, 3, 5) maps, somewhere
    positive (except RISE and Score-CAM, which clip negative saliency: a random model's may all be), with the
    library's cosines; the 5 class-token methods refuse in one line that says why and what to use."""
    tok, frame = clip_tokenizer(16), frames[:1]
    own = gradeclip.similarity(model, frame, PROMPTS, tokenizer=tok)[0]
    assert CLASS_TOKEN_METHODS < set(method_names()) and len(method_names()) == 16
    for method in method_names():
        if method in CLASS_TOKEN_METHODS:
            with pytest.raises(ValueError) as err:
                gradeclip.explain(model, frame, PROMPTS, method=method, tokenizer=tok, progress=False)
            assert str(err.value) == (f"{method} needs the image embedding to be the class token's row; Siglip2Model "
                                      f"pools its image embedding with an attention head instead (use grad_eclip, "
                                      f"legrad, grad_cam, maskclip or rise)")
            continue
        options = {"rise": {"n_masks": 16}, "scorecam": {"batch_size": 128}}.get(method, {})
        result = gradeclip.explain(model, frame, PROMPTS, method=method, tokenizer=tok, progress=False, **options)
        assert result.raw.shape == (1, 3, 3, 5) and np.isfinite(result.raw).all(), method
        assert method in ("rise", "scorecam") or result.raw.max() > 0, method  # those two clip negative saliency
        np.testing.assert_allclose(result.cosine, own, rtol=0, atol=1e-5, err_msg=method)


def test_map_orientation_follows_the_frame(model):
    """Bug caught: spatial_shapes passed as (w, h) (positions resized to a 5 x 3 grid and read row by row), patches
    taken column by column, or the map reshaped (w, h) and transposed. The positions are made to vary along columns
    only; the frame is one grey except a red patch in its top-right corner. On the 3 x 5 grid every column of the
    raw Grad-ECLIP map must then be constant down its rows, except the corner cell (row 0, column 4), which must
    differ from the cell below it for at least one prompt; the columns themselves differ."""
    bb = copy.deepcopy(model)
    with torch.no_grad():
        table = bb.vision_model.embeddings.position_embedding.weight.view(4, 4, -1)
        table.copy_(table[:1].expand(4, 4, -1).clone())  # row 0's positions in every row: positions vary by column
    frame = np.full((24, 40, 3), 128, np.uint8)
    frame[:8, 32:] = (250, 10, 10)  # the top-right patch
    text = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    raw = gradeclip.grad_eclip_image(bb, gradeclip.to_pixels(bb, frame), text)[0].numpy()  # (K, 3, 5)
    scale = np.abs(raw).max()
    assert raw.shape == (3, 3, 5) and scale > 0
    np.testing.assert_allclose(raw[:, 1:, :], raw[:, 1:2, :].repeat(2, 1), rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(raw[:, 0, :4], raw[:, 1, :4], rtol=0, atol=1e-4 * scale)
    assert np.abs(raw[:, 0, 4] - raw[:, 1, 4]).max() > 1e-2 * scale
    assert np.abs(np.diff(raw[:, 1, :], axis=-1)).max() > 1e-2 * scale


def test_model_mode_is_the_processor_grid(model, folder):
    """Bugs caught: ``input="model"`` sizing the longer side to ``resolution`` (4 x 8 = 32 px) as for square-trained
    models, or ignoring the processor's ``max_num_patches``, or ``scale``. The size equals the library's own
    ``get_image_size_for_max_num_patches`` for a wide and a tall frame (times 2 with scale 2), and the loaded
    processor's 24 patches replace the configuration's 16."""
    from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches as size_for

    plain = backbone_of(model)
    loaded, _ = load_clip(folder, device="cpu")
    for height, width in [(28, 60), (44, 20)]:
        assert input_view(plain, height, width, "model").size == size_for(height, width, PATCH, 16)
        assert input_view(loaded, height, width, "model").size == size_for(height, width, PATCH, MAX_PATCHES)
        h, w = size_for(height, width, PATCH, MAX_PATCHES)
        assert input_view(loaded, height, width, "model", scale=2).size == (2 * h, 2 * w)
        assert input_view(loaded, height, width, "library").size == (h, w)
        assert input_view(loaded, height, width, "native").size == (int(height / 8 + 0.5) * 8, int(width / 8 + 0.5) * 8)
    assert size_for(28, 60, PATCH, 16) != size_for(28, 60, PATCH, MAX_PATCHES)


def test_token_count_warning_counts_the_trained_grid(model):
    """Bug caught: the trained token count taken from the processor's or a wrong side (``resolution`` set to the
    patch size times ``num_patches`` instead of times its square root): the warning fires above 4 x 16 = 64
    tokens (a 8 x 9 grid) and not at 56 (7 x 8)."""
    import warnings

    from gradeclip.backbones.inputs import warn_token_count

    bb = backbone_of(model)
    with pytest.warns(UserWarning, match="8×9 token grid, 4.5 times the 4×4"):
        warn_token_count(bb, input_view(bb, 64, 72, "native"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_token_count(bb, input_view(bb, 56, 64, "native"))


def library_cosines(model, folder, frame):
    """Cosines (K,) of one uint8 RGB frame with PROMPTS by the library's own image processor, tokenizer and
    ``Siglip2Model`` forward from ``folder``; and the processor's patch grid (h, w)."""
    from transformers import AutoTokenizer, Siglip2ImageProcessor

    images = Siglip2ImageProcessor.from_pretrained(folder)(images=Image.fromarray(frame), return_tensors="pt")
    text = AutoTokenizer.from_pretrained(folder)(PROMPTS, padding="max_length", max_length=TEXT_LENGTH,
                                                 return_tensors="pt")
    with torch.no_grad():
        out = model(**images, **text)
    return (out.image_embeds @ out.text_embeds.T)[0].numpy(), tuple(images["spatial_shapes"][0].tolist())


def test_load_from_folder_and_cli_explain(model, folder, tmp_path, capsys):
    """Bugs caught: the folder not recognised as Siglip2Model (refused, or built as SigLIP), its image processor or
    tokenizer lost (``preprocess`` and the scores not the library's), or the CLI refusing the model. ``load_clip``
    gives the adapter with the folder's tokenizer and processor; ``preprocess`` gives exactly the processor's
    pixels, unpatchified; the CLI's ``explain --input library`` on a tall video writes the library's cosines of
    the decoded frame and maps on the processor's (tall) grid."""
    from transformers import Siglip2ImageProcessor
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    from gradeclip.io.frames import read_frames

    backbone, preprocess = load_clip(f"hf:{folder}", device="cpu")
    assert type(backbone).__name__ == "HFSiglip2Backbone" and backbone.name == f"hf:{folder}"
    frame = (np.random.RandomState(5).rand(48, 28, 3) * 255).astype(np.uint8)
    images = Siglip2ImageProcessor.from_pretrained(folder)(images=Image.fromarray(frame), return_tensors="pt")
    h, w = images["spatial_shapes"][0].tolist()
    pixels = preprocess(Image.fromarray(frame))
    assert pixels.shape == (3, h * PATCH, w * PATCH) and h > w
    torch.testing.assert_close(convert_image_to_patches(pixels, PATCH), images["pixel_values"][0, :h * w],
                               rtol=0, atol=0)
    video = write_video(tmp_path / "tall.avi", np.repeat(frame[None], 3, axis=0))
    want, grid = library_cosines(model, folder, read_frames(video, [0])[0])
    assert main(["explain", video, "-p", PROMPTS[0], "-p", PROMPTS[1], "-p", PROMPTS[2], "--model", f"hf:{folder}",
                 "--input", "library", "--out", str(tmp_path / "o"), "--dpi", "40"]) == 0
    assert "(transformers)" in capsys.readouterr().out
    record = json.loads(next((tmp_path / "o").glob("*_scores.json")).read_text())
    assert record["library"] == "transformers" and record["model"] == f"hf:{folder}"
    assert record["raw_maps"]["shape"] == [1, 3, *grid] and record["input"]["size_hw"] == [g * PATCH for g in grid]
    np.testing.assert_allclose(record["cosine"][0], want, rtol=0, atol=1e-5)
