"""X-CLIP (transformers ``XCLIPModel``): loading through ``hf:FOLDER``, the video-level score, Grad-ECLIP through
the video head, frame importance and windows. A random tiny X-CLIP (2 vision layers, width 32, 4 heads, patch 8 at
32 px, num_frames 4) is saved with an offline CLIP tokenizer and a VideoMAE image processor (what the published
X-CLIP checkpoints ship). References are the library's own forward (``XCLIPModel.__call__``), autograd through it,
and loops written here from the formulas."""
import warnings

import numpy as np
import pytest
import torch
import transformers

from backbone_models import save_tiny_xclip
from gradeclip.backbones.model import load_clip
from gradeclip.backbones.pixels import CLIP_MEAN, CLIP_STD
from gradeclip.clip_level import explain_clip
from gradeclip.xclip_level import explain_xclip

PROMPTS = ["a red circle", "a dog running on the grass"]
HEIGHT, WIDTH = 24, 40  # non-square frames: library crops them, native keeps 3x5 tokens


@pytest.fixture(scope="module")
def xclip_folder(tmp_path_factory):
    return save_tiny_xclip(tmp_path_factory.mktemp("xclip"))


@pytest.fixture(scope="module")
def xclip(xclip_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone, _ = load_clip(f"hf:{xclip_folder}", device="cpu")
    return backbone


def clip_frames(count, seed=1):
    """``count`` different non-square uint8 RGB frames: noise over a gradient that moves with the frame index."""
    rng = np.random.RandomState(seed)
    ramp = np.linspace(0, 200, WIDTH)[None, :, None]
    frames = [np.clip(rng.randint(0, 120, (HEIGHT, WIDTH, 3)) + np.roll(ramp, 7 * t, axis=1), 0, 255)
              for t in range(count)]
    return np.stack(frames).astype(np.uint8)


def logit_scale(backbone):
    return float(backbone.model.logit_scale.detach().exp())


def own_forward(backbone, frames, **kwargs):
    """The library's own path: its tokenizer, its image processor, ``XCLIPModel.__call__``."""
    processor = transformers.XCLIPProcessor(image_processor=backbone.image_processor, tokenizer=backbone.tokenizer)
    inputs = processor(text=PROMPTS, videos=list(frames), padding=True, return_tensors="pt")
    return backbone.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                          pixel_values=kwargs.pop("pixel_values", inputs["pixel_values"]), **kwargs)


def test_loads_from_folder_with_its_tokenizer_processor_and_frame_count(xclip):
    """hf:FOLDER gives the X-CLIP adapter with the folder's tokenizer, processor and num_frames (catches the loader
    falling back to the CLIP adapter, or a frame count read from the wrong config)."""
    assert type(xclip).__name__ == "XClipBackbone"
    assert xclip.num_frames == 4 and xclip.depth == 2 and xclip.patch_size == 8
    assert type(xclip.image_processor).__name__ == "VideoMAEImageProcessor"
    assert type(xclip.tokenizer).__name__ == "CLIPTokenizer"


def test_a_model_object_with_a_tokenizer_explains_as_the_loaded_folder(xclip):
    """A bare XCLIPModel (no processor kept) with tokenizer= gets X-CLIP's default processor and the same result;
    load_clip's preprocess is the processor on one frame (catches a default processor with another size, crop or
    normalisation, or a preprocess that squashes instead of cropping)."""
    from PIL import Image

    frames = clip_frames(4)
    loaded = explain_xclip(xclip, frames, PROMPTS, progress=False)
    bare = explain_xclip(xclip.model, frames, PROMPTS, tokenizer=xclip.tokenizer, progress=False)
    np.testing.assert_allclose(bare.cosine, loaded.cosine, atol=1e-6)
    np.testing.assert_allclose(bare.maps, loaded.maps, atol=1e-5)
    expected = xclip.image_processor([list(frames[:1])], return_tensors="pt")["pixel_values"][0, 0]
    torch.testing.assert_close(xclip.preprocess()(Image.fromarray(frames[0])), expected)


def test_scores_equal_the_models_own_logits_per_video(xclip):
    """cosine = logits_per_video / logit_scale and probs = its softmax over prompts, from the processor and the
    model's own forward (catches text features without the video-conditioned prompts generator, a video embedding
    from the class tokens without the MIT, or a softmax over the wrong axis)."""
    frames = clip_frames(4)
    result = explain_clip(xclip, frames, PROMPTS, progress=False)
    with torch.no_grad():
        out = own_forward(xclip, frames)
    logits = out.logits_per_video[0]
    assert result.pooling == "xclip" and result.input == "library 32x32"
    np.testing.assert_allclose(result.cosine, logits.numpy() / logit_scale(xclip), atol=1e-5)
    np.testing.assert_allclose(result.probs, logits.softmax(-1).numpy(), atol=1e-5)
    assert abs(result.cosine[0] - result.cosine[1]) > 1e-3  # the prompts differ, so a swapped K axis shows


def test_native_input_scores_equal_the_model_with_interpolated_positions(xclip):
    """input="native": the 24x40 frames as a 3x5 token grid, the model's own forward with interpolated positions
    (catches positions not interpolated, or the grid's height and width swapped)."""
    frames = clip_frames(4)
    result = explain_xclip(xclip, frames, PROMPTS, input="native", progress=False)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # 24x40 is on the patch grid: no resize
    pixels = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = own_forward(xclip, frames, pixel_values=pixels[None], interpolate_pos_encoding=True)
    np.testing.assert_allclose(result.cosine, out.logits_per_video[0].numpy() / logit_scale(xclip),
                               atol=1e-5)
    assert result.raw.shape == (4, 2, 3, 5) and result.maps.shape == (4, 2, HEIGHT, WIDTH)
    assert result.input == "native 40x24"


def naive_reference(backbone, frames, layers, spatial=True):
    """Grad-ECLIP maps (n, K, P) by loops: the video cosine of the library's own forward back-propagated with
    autograd to each decomposed layer's self-attention output (the input of its out_proj), the class-token row's
    gradient as channel weights, lambda from the cosine of the class query with each patch key min-max
    normalised over the patches (1 without ``spatial``), the message token (the last row) left out."""
    captured = {}
    hooks = []
    for i in range(backbone.depth - layers, backbone.depth):
        attn = backbone.model.vision_model.encoder.layers[i].self_attn
        for name in ("q_proj", "k_proj", "v_proj"):
            hooks.append(getattr(attn, name).register_forward_hook(
                lambda m, a, out, key=(i, name): captured.__setitem__(key, out)))
        hooks.append(attn.out_proj.register_forward_pre_hook(
            lambda m, a, key=(i, "o"): captured.__setitem__(key, a[0])))
    out = own_forward(backbone, frames)
    for h in hooks:
        h.remove()
    cosine = out.logits_per_video[0] / backbone.model.logit_scale.exp()
    n, rows, width = captured[(backbone.depth - 1, "v_proj")].shape
    maps = torch.zeros(n, len(PROMPTS), rows - 2)
    for k in range(len(PROMPTS)):
        outs = [captured[(i, "o")] for i in range(backbone.depth - layers, backbone.depth)]
        grads = torch.autograd.grad(cosine[k], outs, retain_graph=True)
        for j, i in enumerate(range(backbone.depth - layers, backbone.depth)):
            q, key, v = (captured[(i, s)].detach() for s in ("q_proj", "k_proj", "v_proj"))
            for t in range(n):
                w = grads[j][t, 0]
                cos = [float(q[t, 0] @ key[t, p] / (q[t, 0].norm() * key[t, p].norm())) for p in range(1, rows - 1)]
                low, high = min(cos), max(cos)
                for p in range(1, rows - 1):
                    lam = (cos[p - 1] - low) / (high - low) if spatial else 1.0
                    maps[t, k, p - 1] += torch.relu(sum(w[c] * v[t, p, c] for c in range(width)) * lam)
    return maps


@pytest.mark.parametrize("layers", [1, 2])
def test_maps_equal_a_naive_autograd_reference(xclip, layers):
    """The raw maps equal the loop reference (catches channel weights read at the message row or averaged over
    rows, the message token counted as a patch or in lambda's min-max, a missing ReLU, layers summed before the
    ReLU, or with layers=2 a gradient that skips the message tokens and the prompts generator)."""
    frames = clip_frames(4)
    result = explain_xclip(xclip, frames, PROMPTS, layers=layers, progress=False)
    expected = naive_reference(xclip, frames, layers)
    assert expected.abs().max() > 0
    np.testing.assert_allclose(result.raw.reshape(4, 2, -1), expected.numpy(), rtol=1e-4, atol=1e-6)


def test_frame_importance_is_the_additive_split_over_the_mit_tokens(xclip):
    """frame_importance[t, k] = <y_t, g_k> / (n |mean_t y_t| |g_k|) over the MIT's output tokens y_t (from the
    library's own mit_output) and sums to the cosine (catches dividing by T twice, using the class embeddings
    entering the MIT instead of its output, or a text embedding without the video conditioning)."""
    frames = clip_frames(4)
    result = explain_xclip(xclip, frames, PROMPTS, progress=False)
    with torch.no_grad():
        out = own_forward(xclip, frames)
    y = out.mit_output.last_hidden_state[0]  # (n, D)
    g = out.text_embeds[0]  # (K, D), normalised by the model
    expected = np.zeros((4, 2))
    for t in range(4):
        for k in range(2):
            expected[t, k] = float(y[t] @ g[k]) / (4 * float(y.mean(0).norm()))
    np.testing.assert_allclose(result.frame_importance, expected, atol=1e-5)
    np.testing.assert_allclose(result.frame_importance.sum(0), result.cosine, atol=1e-5)
    np.testing.assert_allclose(result.relevance_mass, result.raw.sum(axis=(2, 3)), rtol=1e-5)


def test_maps_are_frame_sized_non_constant_on_one_scale_per_prompt(xclip):
    """Maps finite, (T, K, H, W), in [0, 1], 0 outside the processor's centre crop, not constant on the crop,
    and normalised once per prompt over the clip (catches per-frame normalisation, which would make every
    frame's maximum 1, and a map stretched over the uncropped frame)."""
    frames = clip_frames(4)
    result = explain_xclip(xclip, frames, PROMPTS, progress=False)
    maps = result.maps
    assert maps.shape == (4, 2, HEIGHT, WIDTH) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    # the short side 24 -> 32 makes the frame 32x53; the 32-wide centre crop starts at column int(21 / 2) = 10,
    # i.e. frame columns 10 * 40 / 53 = 7.5 to 42 * 40 / 53 = 31.7
    assert (maps[..., :7] == 0).all() and (maps[..., 33:] == 0).all()
    seen = maps[..., 8:31]
    assert (seen.reshape(8, -1).std(axis=1) > 1e-3).all()
    per_frame_max = seen.max(axis=(2, 3))  # (T, K)
    np.testing.assert_allclose(per_frame_max.max(axis=0), 1, atol=1e-6)
    assert (per_frame_max.min(axis=0) < 0.99).all()


def test_longer_clips_are_explained_in_windows_each_scored_as_the_model_does(xclip):
    """T = 6 with num_frames 4: windows [0, 4) and [2, 6) (the last one overlapping), each window's cosine and
    probs those of the model's own forward on it; the clip's scores their means; importances still sum to the
    clip's cosine (catches a last window that reads past the clip, windows not counted 1/W each, or a window's
    frames misplaced in the concatenation)."""
    frames = clip_frames(6)
    result = explain_xclip(xclip, frames, PROMPTS, progress=False)
    assert [(w["start"], w["stop"]) for w in result.windows] == [(0, 4), (2, 6)]
    cosines, probs = [], []
    for w in result.windows:
        with torch.no_grad():
            logits = own_forward(xclip, frames[w["start"]:w["stop"]]).logits_per_video[0]
        np.testing.assert_allclose(w["cosine"], logits.numpy() / logit_scale(xclip), atol=1e-5)
        np.testing.assert_allclose(w["probs"], logits.softmax(-1).numpy(), atol=1e-5)
        cosines.append(w["cosine"])
        probs.append(w["probs"])
    np.testing.assert_allclose(result.cosine, np.mean(cosines, axis=0), atol=1e-6)
    np.testing.assert_allclose(result.probs, np.mean(probs, axis=0), atol=1e-6)
    np.testing.assert_allclose(result.frame_importance.sum(0), result.cosine, atol=1e-5)
    assert result.maps.shape == (6, 2, HEIGHT, WIDTH) and result.raw.shape == (6, 2, 4, 4)
    # frames 4, 5 come from the second window only: half its raw maps
    second = explain_xclip(xclip, frames[2:6], PROMPTS, progress=False)
    np.testing.assert_allclose(result.raw[4:], second.raw[2:] / 2, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.frame_importance[4:], second.frame_importance[2:] / 2, atol=1e-6)


def test_too_few_frames_and_undefined_methods_are_refused_in_one_line(xclip):
    """Fewer frames than num_frames, other methods, and the per-frame API are refused with one line naming the
    value and what is allowed (catches a silent padding, or an X-CLIP run through the image pipeline)."""
    import gradeclip

    with pytest.raises(ValueError, match=r"exactly 4 frames.*got 3 frames") as err:
        explain_xclip(xclip, clip_frames(3), PROMPTS, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"'rise' cannot explain X-CLIP's video score: it masks one image.*"
                                         r"use one of grad_eclip, grad_eclip_no_spatial, grad_cam") as err:
        explain_clip(xclip, clip_frames(4), PROMPTS, method="rise", progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="explain_clip") as err:
        gradeclip.explain(xclip, clip_frames(1), PROMPTS, progress=False)
    assert "\n" not in str(err.value)
