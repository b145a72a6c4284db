"""The input-size choice (input=native|model|library, scale): library mode equals each library's own pipeline, its map
lies over the crop, the shapes CLIP defaults to its trained size, the token-count warning, the model's default."""
import copy
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gradeclip
from gradeclip.backbones.inputs import INPUT_MODES
from gradeclip.input_args import INPUT_CHOICES

from backbone_models import as_hf_clip, as_open_clip, clip_tokenizer, save_open_clip, tiny_siglip

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip

PROMPTS = ["a red circle", "a person walking", "a tree"]


def smooth_frame(h, w, seed=0):
    """A non-square uint8 RGB frame: random blobs, smooth enough that resampling differences stay small."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 may return an output


def _cosine(image, text):
    return (F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T).numpy()


def _openai_reference(model, frame):
    pixels = clip.clip._transform(model.visual.input_resolution)(Image.fromarray(frame))[None]
    with torch.no_grad():
        return _cosine(model.encode_image(pixels), model.encode_text(clip.tokenize(PROMPTS)))


def _open_clip_reference(oc_model, preprocess, frame):
    with torch.no_grad():
        return _cosine(oc_model.encode_image(preprocess(Image.fromarray(frame))[None]),
                       oc_model.encode_text(clip.tokenize(PROMPTS)))


def _hf_reference(hf_model, processor, frame, length):
    ids = clip.tokenize(PROMPTS, context_length=length, truncate=True)
    with torch.no_grad():
        image = _features(hf_model.get_image_features(pixel_values=processor(images=Image.fromarray(frame),
                                                                               return_tensors="pt")["pixel_values"]))
        text = _features(hf_model.get_text_features(input_ids=ids))
    return _cosine(image, text)


@pytest.fixture(scope="module")
def open_clip_folders(model, tmp_path_factory):
    """The session model as open_clip folders, one with the default preprocessing (resize + centre crop) and one
    whose preprocess_cfg says squash with bilinear resampling."""
    root = tmp_path_factory.mktemp("oc")
    crop = save_open_clip(model, root / "crop")
    squash = save_open_clip(model, root / "squash")
    config = json.loads((root / "squash" / "open_clip_config.json").read_text())
    config["preprocess_cfg"] = {"resize_mode": "squash", "interpolation": "bilinear"}
    (root / "squash" / "open_clip_config.json").write_text(json.dumps(config))
    longest = save_open_clip(model, root / "longest")
    config["preprocess_cfg"] = {"resize_mode": "longest", "fill_color": 0}
    (root / "longest" / "open_clip_config.json").write_text(json.dumps(config))
    return {"crop": crop, "squash": squash, "longest": longest}


# a frame whose crop offset is x.5 (torchvision rounds half to even, transformers floors): 40 x 74
FRAME = smooth_frame(40, 74)


def test_library_cosine_is_openai_clips_own(model):
    """Bug caught: library mode resizing at native aspect (no crop), or cropping off-centre: openai-clip's own
    clip._transform + encode_image + encode_text gives another cosine."""
    cosine, _ = gradeclip.similarity(model, FRAME, PROMPTS, input="library")
    result = gradeclip.explain(model, FRAME, PROMPTS, input="library", progress=False)
    expected = _openai_reference(model, FRAME)
    np.testing.assert_allclose(cosine, expected, atol=1e-5)
    np.testing.assert_allclose(result.cosine, expected, atol=1e-5)
    native, _ = gradeclip.similarity(model, FRAME, PROMPTS, input="native")
    assert np.abs(native - expected).max() > 1e-3  # the frame really is one where the modes differ


@pytest.mark.parametrize("kind", ["crop", "squash", "longest"])
def test_library_cosine_is_open_clips_own(open_clip_folders, kind):
    """Bug caught: squash and crop swapped, or open_clip's preprocess_cfg (resize_mode, interpolation) ignored:
    the transform open_clip's own factory returns for the folder gives another cosine. With ``longest`` (resize
    the longer side, pad) the whole frame is seen and the map is cut from the padded input's rows 7..24 (40 x 74
    -> 17 x 32, padded by 7 above): a map taken from the whole padded square would be shifted."""
    import open_clip

    folder = open_clip_folders[kind]
    oc_model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
    oc_model.eval()
    backbone, _ = gradeclip.load_clip("open_clip:" + folder, device="cpu")
    backbone = gradeclip.backbones.base.backbone_of(backbone, clip_tokenizer(77))
    cosine, _ = gradeclip.similarity(backbone, FRAME, PROMPTS, input="library")
    np.testing.assert_allclose(cosine, _open_clip_reference(oc_model, preprocess, FRAME), atol=1e-5)
    result = gradeclip.explain(backbone, FRAME, PROMPTS, input="library", progress=False)
    assert result.seen.all() == (kind != "crop")  # squash and pad see the whole frame, crop only its centre
    if kind == "longest":
        assert result.view.window == (7.0, 0.0, 24.0, 32.0)
        padded = F.interpolate(torch.from_numpy(result.raw[0]).float()[:, None], size=(32, 32), mode="bilinear",
                               align_corners=False)[:, 0, 7:24]
        inner = F.interpolate(padded[:, None], size=(40, 74), mode="bilinear", align_corners=False)[:, 0].numpy()
        low, high = inner.min(axis=(1, 2), keepdims=True), inner.max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(result.maps[0], (inner - low) / (high - low), atol=1e-5)


def test_library_cosine_is_transformers_clips_own(model):
    """Bug caught: the transformers image processor replaced by torchvision's transform (crop offset rounded
    half-to-even instead of floored, PIL instead of tensor resize): CLIPImageProcessor + get_image_features gives
    another cosine."""
    from transformers import CLIPImageProcessor

    hf = as_hf_clip(model)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    cosine, _ = gradeclip.similarity(hf, FRAME, PROMPTS, input="library", tokenizer=clip_tokenizer(77))
    np.testing.assert_allclose(cosine, _hf_reference(hf, processor, FRAME, 77), atol=1e-5)


def test_library_cosine_is_transformers_siglips_own():
    """Bug caught: SigLIP centre-cropped instead of squashed, or normalised with CLIP's mean and std:
    SiglipImageProcessor + get_image_features gives another cosine."""
    from transformers import SiglipImageProcessor

    siglip = tiny_siglip()
    processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    cosine, _ = gradeclip.similarity(siglip, FRAME, PROMPTS, input="library", tokenizer=clip_tokenizer(16))
    np.testing.assert_allclose(cosine, _hf_reference(siglip, processor, FRAME, 16), atol=1e-5)
    result = gradeclip.explain(siglip, FRAME, PROMPTS, input="library", tokenizer=clip_tokenizer(16), progress=False)
    assert result.seen.all() and result.view.size == (32, 32)


def _expected_box(h, w, size, rounding):
    """The centre crop of a short-side resize, written from the two libraries' documented rules, in frame pixels."""
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    half = (lambda d: round(d / 2)) if rounding == "half-even" else (lambda d: d // 2)
    top, left = half(new_h - size), half(new_w - size)
    return (round(top * h / new_h), round(left * w / new_w), round((top + size) * h / new_h),
            round((left + size) * w / new_w))


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (40, 74)])
def test_library_map_lies_over_the_crop(model, shape):
    """Bugs caught: the crop box's rows and columns swapped (wide vs tall frames), the box placed at the frame's
    corner, the map stretched over the whole frame, or the unseen part left non-zero. For 64 x 128 the crop is
    exactly columns 32..96; ``maps`` inside it are the token grid resized onto the box and min-max normalised."""
    h, w = shape
    frame = smooth_frame(h, w, seed=1)
    result = gradeclip.explain(model, frame, PROMPTS, input="library", progress=False)
    top, left, bottom, right = _expected_box(h, w, 32, "half-even")
    if shape == (64, 128):
        assert (top, left, bottom, right) == (0, 32, 64, 96)
    expected_seen = np.zeros((h, w), bool)
    expected_seen[top:bottom, left:right] = True
    np.testing.assert_array_equal(result.seen, expected_seen)
    assert not result.maps[:, :, ~expected_seen].any()
    inner = F.interpolate(torch.from_numpy(result.raw[0]).float()[:, None], size=(bottom - top, right - left),
                          mode="bilinear", align_corners=False)[:, 0].numpy()
    low, high = inner.min(axis=(1, 2), keepdims=True), inner.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(result.maps[0][:, top:bottom, left:right], (inner - low) / (high - low), atol=1e-5)


def test_transformers_crop_box_floors_the_offset(model):
    """Bug caught: transformers' crop placed with torchvision's half-to-even offset (one resized pixel off, two
    frame pixels here): on a 40 x 74 frame its box is columns 16..56, openai-clip's 18..58."""
    hf = as_hf_clip(model)
    result = gradeclip.explain(hf, FRAME, PROMPTS, input="library", tokenizer=clip_tokenizer(77), progress=False)
    assert result.view.box == _expected_box(40, 74, 32, "floor") == (0, 16, 40, 56)
    assert gradeclip.explain(model, FRAME, PROMPTS, input="library", progress=False).view.box == \
        _expected_box(40, 74, 32, "half-even") == (0, 18, 40, 58)


def test_shapes_model_defaults_to_its_trained_size():
    """Bug caught: the shapes CLIP's sidecar default ignored (it would run at 192 x 192, a 24 x 24 grid for a
    model trained on 6 x 6): explain's default gives clip's own 48-px preprocessing + encode_image, as demo does."""
    from gradeclip.cli import DEMO_PROMPTS
    from gradeclip.eval.evaluate import shapes_model, shapes_video
    from gradeclip.io.frames import read_frames, video_info

    model, _ = gradeclip.load_clip(shapes_model(), device="cpu")
    video = shapes_video()
    frame = read_frames(video, [video_info(video).num_frames // 2])[0]
    result = gradeclip.explain(model, frame, DEMO_PROMPTS, progress=False)
    assert result.view.mode == "model" and result.view.size == (48, 48)
    pixels = clip.clip._transform(48)(Image.fromarray(frame))[None]
    with torch.no_grad():
        expected = _cosine(model.encode_image(pixels), model.encode_text(clip.tokenize(DEMO_PROMPTS, 16)))
    np.testing.assert_allclose(result.cosine, expected, atol=1e-5)
    assert result.cosine[0].argmax() == 0  # the red circle, as the README's demo says
    native = gradeclip.explain(model, frame, DEMO_PROMPTS, input="native", progress=False)
    assert native.view.size == (192, 192) and np.abs(native.cosine - expected).max() > 1e-2


def _warnings(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if "trained behaviour" in str(w.message)]


def test_token_warning_above_four_times_the_trained_grid(model):
    """Bugs caught: the warning at or below 4x (``>=`` for ``>``), never, or once per batch. The model is trained
    on a 4 x 4 grid (16 tokens): 64 x 64 px is 8 x 8 = 64 tokens (no warning), 64 x 72 is 8 x 9 = 72 (warns)."""
    at = smooth_frame(64, 64)
    above = np.stack([smooth_frame(64, 72, seed=s) for s in range(3)])
    assert _warnings(lambda: gradeclip.explain(model, at, "x", progress=False)) == []
    assert len(_warnings(lambda: gradeclip.explain(model, above, "x", batch_size=1, progress=False))) == 1
    assert len(_warnings(lambda: gradeclip.similarity(model, above, "x"))) == 1
    assert _warnings(lambda: gradeclip.explain(model, above, "x", input="model", progress=False)) == []
    assert _warnings(lambda: gradeclip.explain(model, at, "x", scale=1.1, progress=False))  # 72 x 72: 81 tokens


def test_model_mode_keeps_aspect_at_the_trained_side(model):
    """Bug caught: model mode squashing to the square, or fitting the shorter side: a 40 x 80 frame goes in at
    16 x 32 (longer side 32), and scale 2 doubles it."""
    frame = smooth_frame(40, 80)
    assert gradeclip.explain(model, frame, "x", input="model", progress=False).view.size == (16, 32)
    assert gradeclip.explain(model, frame, "x", input="model", scale=2, progress=False).view.size == (32, 64)
    assert gradeclip.explain(model, frame, "x", input="native", scale=0.5, progress=False).view.size == (24, 40)


def test_bad_input_and_scale_are_refused(model):
    """Bugs caught: a misspelt mode silently run as native; scale silently ignored in library mode."""
    with pytest.raises(ValueError, match="unknown input 'square'; allowed: native, model, library"):
        gradeclip.explain(model, FRAME, "x", input="square")
    with pytest.raises(ValueError, match="scale 2 cannot apply to input 'library'"):
        gradeclip.similarity(model, FRAME, "x", input="library", scale=2)
    assert INPUT_CHOICES == INPUT_MODES  # the CLI offers exactly the API's modes


def test_default_input_from_the_checkpoint_sidecar(model, tmp_path):
    """Bugs caught: the sidecar's default_input not read (or read from the wrong file name), or a wrong value
    accepted: a checkpoint NAME.pt with NAME.json saying library is explained in library mode by default."""
    path = tmp_path / "mine.pt"
    torch.save(model.state_dict(), path)
    plain, _ = gradeclip.load_clip(str(path), device="cpu")
    assert gradeclip.explain(plain, FRAME, "x", progress=False).view.mode == "native"
    (tmp_path / "mine.json").write_text(json.dumps({"default_input": "library"}))
    loaded, _ = gradeclip.load_clip(str(path), device="cpu")
    result = gradeclip.explain(loaded, FRAME, "x", progress=False)
    assert result.view.mode == "library" and result.view.size == (32, 32)
    assert gradeclip.explain(loaded, FRAME, "x", input="native", progress=False).view.mode == "native"
    (tmp_path / "mine.json").write_text(json.dumps({"default_input": "big"}))
    with pytest.raises(ValueError, match="default_input 'big' is not one of native, model, library"):
        gradeclip.load_clip(str(path), device="cpu")


def test_scores_sidecar_names_the_input(model, tmp_path):
    """Bug caught: the saved scores not saying which input produced them (mode and size in pixels)."""
    from gradeclip.viz.saving import save_explanation

    result = gradeclip.explain(model, FRAME, PROMPTS, input="library", progress=False)
    record = json.loads(save_explanation(result, "x", tmp_path)[1].read_text())
    assert record["input"]["mode"] == "library" and record["input"]["size_hw"] == [32, 32]
    assert record["input"]["seen_box_tlbr"] == [0, 18, 40, 58]


def test_figure_names_the_input_and_hatches_the_unseen_part(model):
    """``plot_explanation`` of a library-mode result says under the frame which input the model was fed and that
    the hatched part was not seen, and greys that part in each overlay; a native result names its size and hatches
    nothing. Bug caught: a figure that travels without its JSON and hides that the map covers only the crop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradeclip.viz.figures import plot_explanation

    def captions(fig):
        return [t.get_text() for ax in fig.axes for t in ax.texts]

    fig = plot_explanation(gradeclip.explain(model, FRAME, PROMPTS[:2], input="library", progress=False))
    assert "input library 32×32 px; hatched: not seen by the model" in captions(fig)
    overlays = [ax for ax in fig.axes if len(ax.get_images()) == 2]  # overlay + the grey unseen layer
    assert len(overlays) == 2
    grey = overlays[0].get_images()[1].get_array()
    assert grey[:, :18, 3].min() > 0 and grey[:, 18:58, 3].max() == 0 and grey[:, 58:, 3].min() > 0
    fig = plot_explanation(gradeclip.explain(model, FRAME, PROMPTS[:2], input="native", progress=False))
    assert "input native 40×72 px" in captions(fig)
    assert not [ax for ax in fig.axes if len(ax.get_images()) == 2]
    plt.close("all")


def test_compare_methods_perturbs_the_input_the_maps_were_made_on(model):
    """``compare_methods(..., input="library")``: the maps are the library crop's and the deletion curve starts at
    the library's own score (the unperturbed 32 x 32 crop, clip._transform + encode_image), not the native
    frame's. Bug caught: the maps made on one input and the deletion/insertion curves run on another."""
    from gradeclip.eval.compare import compare_methods
    from gradeclip.eval.metrics import clip_scorer, deletion_insertion

    rows, explanations = compare_methods(model, FRAME, PROMPTS[:2], methods=["grad_eclip"], steps=4, input="library")
    result = explanations["grad_eclip"]
    assert result.view.mode == "library" and result.raw.shape[-2:] == (4, 4)
    pixels = clip.clip._transform(32)(Image.fromarray(FRAME))[None]
    text = gradeclip.backbones.base.backbone_of(model).encode_prompts(PROMPTS[:2])
    curves = deletion_insertion(clip_scorer(model, text), pixels, torch.from_numpy(result.raw), steps=4)
    np.testing.assert_allclose(curves["deletion_curve"][0, :, 0], _openai_reference(model, FRAME)[0, :2], atol=1e-5)
    assert rows[0]["deletion_auc"] == pytest.approx(float(np.mean(curves["deletion_auc"])), abs=1e-5)
