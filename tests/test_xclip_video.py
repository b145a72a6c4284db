"""X-CLIP end to end: ``explain_clip_video`` (true frame indices and times, windows), the ``clip`` command with
``--model hf:FOLDER``, and the explorer's clip view, on a random tiny X-CLIP folder (``save_tiny_xclip``,
num_frames 4) and a generated non-square video whose frames carry their index (a bright bar at column 2 * index),
so that a frame read or reported at the wrong index shows. References: the library's own
``XCLIPModel.__call__`` on the decoded frames, and the container's presentation times (frame i at i / 10 s)."""
import json

import numpy as np
import pytest
import torch
import transformers

from backbone_models import clip_tokenizer
from conftest import tiny_clip, write_video
from test_xclip import xclip, xclip_folder  # noqa: F401 (fixtures: the tiny X-CLIP folder and its loaded model)
from gradeclip.clip_level import explain_clip, explain_clip_video
from gradeclip.methods.registry import method_names
from gradeclip.xclip_methods import XCLIP_METHODS
from gradeclip.io.frames import read_frames
from gradeclip.xclip_level import explain_xclip

PROMPTS = ["a white bar on the left", "a grey wall"]
FPS = 10
SUBSET = [2, 5, 9, 11, 17, 23]  # 6 frames for num_frames 4: windows [2, 5, 9, 11] and [9, 11, 17, 23]


@pytest.fixture(scope="module")
def bar_video(tmp_path_factory):
    """24 frames 36 x 52 at 10 fps: grey noise, frame i has a white bar 3 columns wide at column 2 * i."""
    rng = np.random.RandomState(4)
    frames = (60 + rng.randint(0, 60, (24, 36, 52, 3))).astype(np.uint8)
    for i in range(24):
        frames[i, :, 2 * i:2 * i + 3] = 255
    return write_video(tmp_path_factory.mktemp("bars") / "bars.avi", frames, fps=FPS)


def own_cosine(backbone, frames):
    """X-CLIP's own cosine (K,) of exactly num_frames frames: its processor and ``XCLIPModel.__call__``."""
    processor = transformers.XCLIPProcessor(image_processor=backbone.image_processor, tokenizer=backbone.tokenizer)
    inputs = processor(text=PROMPTS, videos=list(frames), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = backbone.model(**inputs)
    return out.logits_per_video[0].numpy() / float(backbone.model.logit_scale.detach().exp())


def bar_index(frame):
    """The index the frame carries: its white bar spans columns 2i..2i+2, so the centre of the bright columns
    is 2i + 1."""
    bright = np.flatnonzero(frame.mean(axis=(0, 2)) > 200)
    return int(round((bright.mean() - 1) / 2))


def test_video_subset_keeps_true_indices_times_and_windows(xclip, bar_video):
    """A subset of frames of 6 (windows [0, 4) and [2, 6) of the sample): indices are the video's, times the
    container's, each window names its video frames and its cosine is the model's own on those decoded frames.
    Catches: indices reported as positions in the sample (0..5) instead of video indices, times looked up at the
    positions, windows' frames not remapped, frames decoded at the wrong indices (the bar moves with the index)."""
    result = explain_clip_video(xclip, bar_video, PROMPTS, frames=SUBSET, progress=False)
    assert result.pooling == "xclip" and result.indices.tolist() == SUBSET
    np.testing.assert_allclose(result.times, np.array(SUBSET) / FPS, atol=1e-6)
    assert [w["indices"] for w in result.windows] == [[2, 5, 9, 11], [9, 11, 17, 23]]
    for window in result.windows:
        decoded = read_frames(bar_video, window["indices"])
        assert [bar_index(f) for f in decoded] == window["indices"]  # the frames are the named ones
        np.testing.assert_allclose(window["cosine"], own_cosine(xclip, decoded), atol=1e-5)
    np.testing.assert_allclose(result.cosine, np.mean([w["cosine"] for w in result.windows], axis=0), atol=1e-6)
    # the same numbers as explaining the decoded frames in memory: maps in the sample's order
    same = explain_xclip(xclip, read_frames(bar_video, SUBSET), PROMPTS, progress=False)
    np.testing.assert_allclose(result.raw, same.raw, rtol=1e-5, atol=1e-8)
    assert result.frames is None and result.maps.shape == (6, 2, 36, 52)


def test_mean_pooling_subset_keeps_true_indices_and_times(bar_video):
    """The same remapping under mean pooling (a tiny openai CLIP, library input): indices and times of the subset,
    and each row of frame importance that of the frame at its index, from ``encode_image`` of each frame decoded
    alone and the formula <f_t/|f_t|, g_k> / (T |v| |g_k|) in loops. Catches the remapping mutation for mean
    pooling too (positions reported as indices, times at the positions), and rows permuted against the indices."""
    import clip as openai_clip
    from PIL import Image

    from gradeclip.backbones.base import backbone_of

    model = tiny_clip(seed=6)
    result = explain_clip_video(model, bar_video, PROMPTS, frames=SUBSET, input="library", progress=False)
    assert result.pooling == "mean" and result.indices.tolist() == SUBSET and not result.windows
    np.testing.assert_allclose(result.times, np.array(SUBSET) / FPS, atol=1e-6)
    transform = backbone_of(model).preprocess()
    with torch.no_grad():
        feats = [model.encode_image(transform(Image.fromarray(read_frames(bar_video, [i])[0]))[None])[0].double()
                 for i in SUBSET]
        text = model.encode_text(openai_clip.tokenize(PROMPTS)).double()
    units = [f / f.norm() for f in feats]
    v = sum(units) / len(units)
    for t in range(len(SUBSET)):
        for k in range(len(PROMPTS)):
            expected = float(units[t] @ text[k]) / (len(SUBSET) * float(v.norm()) * float(text[k].norm()))
            assert abs(result.frame_importance[t, k] - expected) < 2e-5, (t, k)
    assert np.ptp(result.frame_importance[:, 0]) > 1e-3  # rows differ, so a permutation shows


def test_default_frames_are_the_models_clip_length_and_other_counts_as_documented(xclip, bar_video):
    """frames left out: uniform:num_frames (4 frames, one window); uniform:6: two windows of 4; 3 frames, a
    pooling X-CLIP lacks, and X-CLIP pooling for a CLIP: refused in one line naming the value and what is
    allowed. Catches: the mean-pooling default of 8 frames used for X-CLIP, silent padding of a short clip, an
    explicit pooling='mean' silently replaced by X-CLIP's head."""
    result = explain_clip_video(xclip, bar_video, PROMPTS, progress=False)
    assert result.indices.tolist() == [0, 8, 15, 23] and len(result.windows) == 1
    six = explain_clip_video(xclip, bar_video, PROMPTS, frames="uniform:6", progress=False)
    assert [w["indices"] for w in six.windows] == [[0, 5, 9, 14], [9, 14, 18, 23]]
    with pytest.raises(ValueError, match=r"exactly 4 frames.*got 3 frames") as err:
        explain_clip_video(xclip, bar_video, PROMPTS, frames=[1, 2, 3], progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"pooling 'mean' is not defined for XCLIPModel.*pooling='xclip'") as err:
        explain_clip_video(xclip, bar_video, PROMPTS, pooling="mean", progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"pooling 'xclip' is not defined for CLIP.*pooling='mean'") as err:
        explain_clip(tiny_clip(seed=6), read_frames(bar_video, [0, 1]), PROMPTS, pooling="xclip", progress=False)
    assert "\n" not in str(err.value)


# ----- the clip command with --model hf:FOLDER

def test_clip_command_with_an_xclip_folder(xclip, xclip_folder, bar_video, tmp_path, capsys):
    """``python -m gradeclip clip`` (via ``cli.main``) on 6 frames of the bar video: every output, the JSON naming
    pooling xclip, the video's frame indices and times, and each window's frames and cosine (the model's own on the
    decoded window); the clip cosine their mean; MP4 with one frame per sampled frame; the figure marks each
    window's cosine of the prompt drawn. Catches: the mean-pooling default applied to X-CLIP, windows written
    with sample positions instead of video indices, a window label read from the wrong prompt, a missing
    figure or export."""
    import cv2

    from gradeclip.cli import main
    from gradeclip.viz.clip_figures import plot_clip

    out = tmp_path / "out"
    code = main(["clip", bar_video, "-p", PROMPTS[0], "-p", PROMPTS[1], "--model", f"hf:{xclip_folder}",
                 "--frames", ",".join(map(str, SUBSET)), "--out", str(out), "--device", "cpu", "--dpi", "40"])
    printed = capsys.readouterr().out
    assert code == 0
    stem = "bars_clip_grad_eclip"
    for name in (".npz", ".json", ".mp4", ".gif", "_prompt-0.png", "_prompt-1.png"):
        assert (out / f"{stem}{name}").is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial file left
    record = json.loads((out / f"{stem}.json").read_text())
    assert record["pooling"] == "xclip" and record["frame_indices"] == SUBSET
    np.testing.assert_allclose(record["timestamps_s"], np.array(SUBSET) / FPS, atol=1e-6)
    assert [w["indices"] for w in record["windows"]] == [[2, 5, 9, 11], [9, 11, 17, 23]]
    cosines = [own_cosine(xclip, read_frames(bar_video, w["indices"])) for w in record["windows"]]
    for window, expected in zip(record["windows"], cosines):
        np.testing.assert_allclose(window["cosine"], expected, atol=1e-5)
    np.testing.assert_allclose(record["cosine"], np.mean(cosines, axis=0), atol=1e-5)
    assert "window frames 9-23" in printed and "xclip pooling" in printed
    data = np.load(out / f"{stem}.npz")
    assert data["raw"].shape[:2] == (6, 2) and data["indices"].tolist() == SUBSET
    capture = cv2.VideoCapture(str(out / f"{stem}.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    capture.release()
    result = explain_clip_video(xclip, bar_video, PROMPTS, frames=SUBSET, progress=False)
    fig = plot_clip(result, 1, frames=read_frames(bar_video, SUBSET))
    labels = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sorted(labels) == sorted(f"window cos {w['cosine'][1]:.3f}" for w in result.windows)
    assert abs(result.windows[0]["cosine"][0] - result.windows[0]["cosine"][1]) > 1e-3  # prompt 0's would differ
    # the overlays' colour scale is shown: one colour bar from 0 to 1 in the figure's colour map (catches a figure
    # whose overlays have no legend for their colours, or a bar in another colour map than the overlays)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "relevance" in bars[0].get_ylabel()
    assert bars[0].get_ylim() == (0.0, 1.0) and bars[0]._colorbar.cmap.name == "jet"


def test_clip_command_refuses_in_one_line_for_xclip(xclip_folder, bar_video, tmp_path, capfd):
    """--pooling mean with an X-CLIP folder, and fewer frames than its clip length: exit 1, one line on stderr
    naming the value and what is allowed, no output file (catches a traceback, a silent switch to X-CLIP's
    head, or a short clip padded)."""
    from gradeclip.cli import main

    def error_lines():  # transformers' own "Loading weights" bar is switched off while gradeclip loads a folder
        return [line for line in capfd.readouterr().err.splitlines() if line.strip()]

    common = [bar_video, "-p", "x", "--model", f"hf:{xclip_folder}", "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert main(["clip", *common, "--pooling", "mean"]) == 1
    err = error_lines()
    assert len(err) == 1 and "pooling 'mean' is not defined for XCLIPModel" in err[0]
    assert main(["clip", *common, "--frames", "3,4,5"]) == 1
    err = error_lines()
    assert len(err) == 1 and "exactly 4 frames" in err[0] and "got 3 frames" in err[0]
    assert not list((tmp_path / "o").glob("*.*"))


def test_clip_command_refuses_a_method_before_the_model_loads(bar_video, tmp_path, capfd):
    """A method that the pooling asked for cannot explain (rise under --pooling xclip; maskclip under mean), or
    that neither pooling can (rise without --pooling), is refused in one line before the model loads: the model
    path does not exist, so a check made after loading would report the missing model instead (catches the
    X-CLIP check skipped before loading, or the default pooling's check dropped)."""
    from gradeclip.cli import main

    common = [bar_video, "-p", "x", "--model", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "o")]
    for extra, named in ((["--pooling", "xclip", "--method", "rise"], "X-CLIP's video score"),
                         (["--pooling", "mean", "--method", "maskclip"], "a clip score"),
                         (["--method", "rise"], "'rise' cannot explain")):
        assert main(["clip", *common, *extra]) == 1
        err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and named in err[0] and "absent.pt" not in err[0], (extra, err)
    # a method X-CLIP can explain but mean pooling cannot (none today) or both can: passes to the model's loading
    assert main(["clip", *common, "--method", "grad_cam"]) == 1
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "absent.pt" in err[0]


# ----- the explorer's clip view, and explore(clip=...)

def test_explorer_opens_with_the_clip_view_of_an_xclip_model(xclip, bar_video):
    """explore(xclip, video, prompts, clip=SUBSET): the clip view right under the slider, one bar per sampled
    frame with heights following the selected prompt's importance, a click moving the slider to the bar's video
    index; on a sampled frame the explorer (which has no per-frame view of X-CLIP) shows that frame's clip
    overlays, elsewhere the one-line refusal. Catches: a bar that moves the slider to its position, bars of the
    wrong prompt, the overlays of another sampled frame, an explore() that ignores clip=, clip=True sampling
    X-CLIP with the mean-pooling default of 8 frames."""
    from gradeclip.viz.clip_figures import clip_picture
    from gradeclip.viz.explorer import explore
    from gradeclip.viz.explorer_view import jpeg_bytes

    explorer = explore(xclip, bar_video, PROMPTS, clip=SUBSET, words=False)
    view = explorer.clip_view
    # its method menu offers only what X-CLIP's video score can be explained with (catches maskclip, rise... left
    # in the menu of a model that refuses them)
    assert [name for _, name in explorer.method.options] == [n for n in method_names() if n in XCLIP_METHODS]
    assert explorer.method.value == "grad_eclip" and "rise" in method_names()
    assert explorer.children[0].children[1] is view
    result = view.result
    assert result.pooling == "xclip" and result.indices.tolist() == SUBSET
    for k in (0, 1):
        view.prompt.value = k
        heights = np.array([int(bar.layout.height[:-2]) for bar in view.bars.children])
        shares = np.abs(result.frame_importance[:, k])
        np.testing.assert_allclose(heights, np.maximum(3, np.round(70 * shares / shares.max())), atol=1)
    assert not np.allclose(np.abs(result.frame_importance[:, 0]) / np.abs(result.frame_importance[:, 0]).max(),
                           np.abs(result.frame_importance[:, 1]) / np.abs(result.frame_importance[:, 1]).max(),
                           atol=0.03)  # the prompts' bars differ, so drawing the wrong column shows
    view.bars.children[3].click()
    assert explorer.slider.value == 11
    frame = read_frames(bar_video, [11])[0]
    assert explorer.image.value == jpeg_bytes(clip_picture(result, 3, frame, alpha=explorer.opacity.value))
    assert "sampled frame 4 of 6" in explorer.status.value
    explorer.slider.value = 12  # not sampled: the per-frame refusal, in one line
    assert "frame 12:" in explorer.status.value and "scores whole clips" in explorer.status.value
    own = explore(xclip, bar_video, PROMPTS, clip=True, words=False)  # the model's own clip: 4 frames
    assert own.clip_view.result.indices.tolist() == [0, 8, 15, 23] and len(own.clip_view.result.windows) == 1


def test_explore_clip_keyword_for_a_mean_pooled_model(bar_video):
    """clip="uniform:5" opens the clip view of mean pooling over those frames; clip=True the default
    (uniform:8); no clip= gives no clip view; the per-frame view stays (catches the keyword dropped, the frames
    not passed on, or the clip's overlays drawn over a model that has per-frame explanations)."""
    from gradeclip.viz.explorer import explore

    model = tiny_clip(seed=6)
    plain = explore(model, bar_video, PROMPTS, input="native", words=False)
    assert getattr(plain, "clip_view", None) is None and len(plain.children[0].children) == 4
    five = explore(model, bar_video, PROMPTS, input="native", words=False, clip="uniform:5")
    assert five.clip_view.result.pooling == "mean" and five.clip_view.result.indices.tolist() == [0, 6, 12, 17, 23]
    assert five.children[0].children[1] is five.clip_view
    # an image CLIP keeps every method in its menu (catches the X-CLIP menu applied to every model)
    assert [name for _, name in five.method.options] == method_names()
    # a model with per-frame explanations keeps its per-frame view on a sampled frame (frame 0 is sampled)
    assert five.current is not None and "overlays of the clip explanation" not in five.status.value
    default = explore(model, bar_video, PROMPTS, input="native", words=False, clip=True)
    assert default.clip_view.result.indices.tolist() == np.round(np.linspace(0, 23, 8)).astype(int).tolist()


def test_clip_view_says_a_refusal_in_the_status_line():
    """The clip view's "explain the clip" button with a method the model refuses for a clip (rollout on SigLIP,
    which has no class token) shows one red line in the explorer's status and keeps the bars of the last result
    (catches the exception escaping into the widget callback, or the bars cleared by a failed recompute)."""
    from backbone_models import tiny_siglip
    from gradeclip.viz.explorer import explore

    frames = np.random.default_rng(3).integers(0, 255, (6, 40, 56, 3), dtype=np.uint8)
    explorer = explore(tiny_siglip(seed=2), frames, ["a red bar", "a tree"], tokenizer=clip_tokenizer(16),
                       input="native", words=False, clip="uniform:3")
    view, before = explorer.clip_view, explorer.clip_view.result
    explorer.method.value = "rollout"
    view.recompute.click()
    assert "clip: " in explorer.status.value and "#b00020" in explorer.status.value
    assert "\n" not in explorer.status.value and "class token" in explorer.status.value
    assert view.result is before and len(view.bars.children) == 3
