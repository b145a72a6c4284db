"""Overlays, figures and export files."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

from gradeclip import (explain, overlay, plot_explanation, plot_frame_strip, plot_scores, plot_word_importance,
                       save_explanation, save_figure)

PROMPTS = ["a person", "a tree"]


@pytest.fixture(scope="module")
def result(model):
    frames = np.random.default_rng(1).integers(0, 256, size=(2, 24, 40, 3), dtype=np.uint8)
    return explain(model, frames, PROMPTS)


def test_overlay_blends():
    frame = np.full((4, 6, 3), 100, np.uint8)
    heat = np.zeros((4, 6), np.float32)
    assert np.array_equal(overlay(frame, heat, alpha=0.0), frame)
    pure = overlay(frame, heat, alpha=1.0, cmap="gray")
    assert pure.dtype == np.uint8 and pure.shape == (4, 6, 3) and pure.max() == 0
    hot = overlay(frame, np.ones((2, 3), np.float32), alpha=1.0, cmap="gray")  # resized to the frame
    assert hot.shape == (4, 6, 3) and hot.min() == 255
    half = overlay(frame, np.ones((4, 6)), alpha=0.5, cmap="gray")
    assert np.all(np.abs(half.astype(int) - 177) <= 1)


def test_overlay_bad_input():
    frame = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay(frame, np.zeros((4, 6)), alpha=2)
    with pytest.raises(ValueError, match="uint8 RGB"):
        overlay(frame.astype(float), np.zeros((4, 6)))
    with pytest.raises(ValueError, match="2-D"):
        overlay(frame, np.zeros((1, 4, 6)))


def test_explanation_figure(result):
    fig = plot_explanation(result, 1, title="clip")
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == 3  # frame + one overlay per prompt
    titles = [ax.get_title() for ax in images[1:]]
    for title, prompt, cos, p in zip(titles, PROMPTS, result.cosine[1], result.probs[1]):
        assert prompt in title and f"{cos:.3f}" in title and f"{p:.2f}" in title
    assert any("relevance" in ax.get_ylabel() for ax in fig.axes)  # the colorbar
    # provenance under the frame; catches a figure that no longer says which library's model made it
    assert images[0].get_title(loc="left") == f"{result.model} · openai-clip"
    with pytest.raises(IndexError, match="out of range"):
        plot_explanation(result, 5)
    plt.close("all")


def test_other_figures(result):
    fig = plot_scores(PROMPTS, result.cosine[0], result.probs[0])
    assert len(fig.axes) == 2 and len(fig.axes[0].patches) == 2
    fig = plot_word_importance([("a", 0.2), ("person", 0.8)], title="a person")
    texts = fig.axes[0].texts
    assert [t.get_text() for t in texts] == ["a", "person"]
    shades = [t.get_bbox_patch().get_facecolor() for t in texts]
    assert sum(shades[0][:3]) > sum(shades[1][:3])  # the heavier word is darker
    fig = plot_frame_strip(result.frames, ["0", "1"])
    assert len(fig.axes) == 2
    plt.close("all")


def test_save_figure(tmp_path, result):
    fig = plot_explanation(result)
    paths = save_figure(fig, "fig 1/x", tmp_path / "out", dpi=40)
    assert [p.name for p in paths] == ["fig_1_x.png", "fig_1_x.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="dpi must be positive"):
        save_figure(fig, "x", tmp_path, dpi=0)
    plt.close("all")


def test_save_explanation(tmp_path, result):
    maps_path, scores_path = save_explanation(result, "run", tmp_path, meta={"model": "tiny"})
    maps = np.load(maps_path)
    assert maps.dtype == np.float32 and np.array_equal(maps, result.raw)
    record = json.loads(scores_path.read_text())
    assert record["prompts"] == PROMPTS and record["model"] == "tiny" and record["method"] == "grad_eclip"
    np.testing.assert_allclose(record["cosine"], result.cosine, atol=1e-6)
    np.testing.assert_allclose(record["probs"], result.probs, atol=1e-6)
    assert record["raw_maps"]["shape"] == list(result.raw.shape)


def test_method_grid_is_a_paper_figure(model):
    """Six methods for two prompts at 4 panels a row: 2 rows per prompt (the frame + 6 panels = 7), display names
    as titles, the prompt beside each row, one labelled colorbar, an all-zero map marked. Catches a grid that does
    not wrap (the old 13 columns), code names as titles, a colorbar per panel or none."""
    import copy

    from gradeclip import plot_method_grid
    from gradeclip.viz.figures import ZERO_LABEL

    frames = np.random.default_rng(2).integers(0, 256, size=(1, 24, 40, 3), dtype=np.uint8)
    names = ["grad_eclip", "grad_cam", "gradcam_pp", "scorecam", "game", "self_attention"]
    base = explain(model, frames, PROMPTS)
    explanations = {}
    for name in names:  # the same maps under six names: the layout, not the methods, is tested here
        explanations[name] = copy.deepcopy(base)
    explanations["game"].raw[0, 1] = 0  # an all-zero map for the second prompt
    fig = plot_method_grid(explanations, columns=4)
    colorbars = [ax for ax in fig.axes if "relevance" in ax.get_ylabel()]
    panels = [ax for ax in fig.axes if ax not in colorbars]
    assert len(colorbars) == 1 and len(panels) == 2 * 2 * 4
    titles = [ax.get_title() for ax in panels]
    for display in ("Grad-ECLIP", "Grad-CAM", "Grad-CAM++", "Score-CAM", "GAME", "Self-attention"):
        assert titles.count(display) == 2, display
    assert not set(titles) & set(names)
    row_labels = [ax.get_ylabel() for ax in panels if ax.get_ylabel()]
    assert row_labels == ["a person", "a person", "a tree", "a tree"]  # beside every row, not only the first
    zero = [ax for ax in panels if any(t.get_text() == ZERO_LABEL for t in ax.texts)]
    assert len(zero) == 1 and zero[0].get_title() == "GAME" and panels.index(zero[0]) >= 8  # second prompt
    assert fig.get_size_inches()[0] == pytest.approx(7.0)
    plt.close("all")


class _StopWhenDrawn(matplotlib.artist.Artist):
    """An artist whose drawing into the file is interrupted (Ctrl-C while matplotlib writes it). savefig draws
    twice: a dry run that lays the figure out (no file yet), then into the opened file; the second is stopped."""

    def __init__(self):
        super().__init__()
        self.draws = 0

    def draw(self, renderer):
        self.draws += 1
        if self.draws % 2 == 0:
            raise KeyboardInterrupt


def test_an_interrupted_pdf_leaves_no_file_and_keeps_the_older_one(tmp_path, result):
    """Ctrl-C while the PDF is drawn (matplotlib has already opened the file and written its header): no file of
    that name appears, and an older complete figure of the same name is kept byte for byte. The bug this replaced
    left ``…_timeline.pdf`` at 2,689 bytes without ``%%EOF`` under its final name. Catches ``savefig`` writing to
    the final name, and a temporary file left behind."""
    import os

    fig = plot_explanation(result)
    png, pdf = save_figure(fig, "fig", tmp_path, dpi=30)
    before = pdf.read_bytes()
    assert before.rstrip().endswith(b"%%EOF")
    fig.add_artist(_StopWhenDrawn())
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, "fig", tmp_path, dpi=30, formats=("pdf",))
    assert pdf.read_bytes() == before
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, "new", tmp_path, dpi=30, formats=("pdf",))
    assert sorted(os.listdir(tmp_path)) == ["fig.pdf", "fig.png"]
    plt.close("all")


def test_constant_maps_are_marked_and_varying_negative_maps_are_not(result):
    """A map with one non-zero value everywhere (0.3) is labelled a constant map, an all-zero one an all-zero map,
    and a map that varies below zero (max 0) is drawn as a map, not labelled zero. Catches the old rule "no value
    above 0" (it called the negative map all-zero and drew the flat 0.3 map as uniform low relevance), and a
    label on the wrong prompt's panel."""
    import copy

    from gradeclip.viz.figures import CONSTANT_LABEL, ZERO_LABEL

    shown = copy.deepcopy(result)
    grid = shown.raw.shape[-2:]
    shown.raw[0, 0] = 0.3
    shown.raw[0, 1] = -np.arange(grid[0] * grid[1], dtype=np.float32).reshape(grid)
    fig = plot_explanation(shown)
    panels = [ax for ax in fig.axes if ax.get_images()][1:]
    assert [[t.get_text() for t in ax.texts] for ax in panels] == [[CONSTANT_LABEL], []]
    shown.raw[0, 1] = 0
    fig = plot_explanation(shown)
    panels = [ax for ax in fig.axes if ax.get_images()][1:]
    assert [[t.get_text() for t in ax.texts] for ax in panels] == [[CONSTANT_LABEL], [ZERO_LABEL]]
    plt.close("all")


@pytest.mark.parametrize("height,width", [(60, 100), (100, 60)])
def test_explorer_panels_keep_the_frames_aspect(height, width):
    """compose_view on a landscape and a portrait frame: each panel is ``panel_width`` wide and
    round(panel_width * H / W) high, and the frame's panel is PIL's own bilinear resize of the frame to that size.
    Catches the panel aspect inverted (W / H), which a square frame cannot see."""
    from PIL import Image

    from gradeclip.viz.explorer_view import compose_view

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    maps = rng.random((2, 3, 5)).astype(np.float32)
    view = compose_view(frame, maps, ["frame", "a", "b"], panel_width=200)
    panel_height = round(200 * height / width)
    top, gap, below = 22, 6, 14 + 18  # title row, gap between panels, colour bar and its labels
    assert view.shape == (top + panel_height + below, 3 * 200 + 2 * gap, 3)
    expected = np.asarray(Image.fromarray(frame).resize((200, panel_height), Image.BILINEAR))
    np.testing.assert_array_equal(view[top:top + panel_height, :200], expected)


@pytest.mark.parametrize("height,width", [(60, 100), (100, 60)])
def test_video_export_panels_keep_the_frames_aspect(height, width):
    """compose_frame at panel height 30: every panel is round(30 * W / H) wide, and the frame's panel is OpenCV's
    own area resize of the frame. Catches the width computed as H / W, which a square frame cannot see."""
    import cv2

    from gradeclip.viz.video_export import compose_frame

    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    maps = rng.random((2, 3, 5)).astype(np.float32)
    picture = compose_frame(frame, maps, ["a", "b"], [0.1, 0.2], [0.4, 0.6], 1.0, 3, scale_label="shared",
                            panel_height=30)
    panel_width = round(30 * width / height)
    header, footer, colorbar = 34, 24, 62
    assert picture.shape == (header + 30 + footer, 3 * panel_width + colorbar, 3)
    np.testing.assert_array_equal(picture[header:header + 30, :panel_width],
                                  cv2.resize(frame, (panel_width, 30), interpolation=cv2.INTER_AREA))


def test_video_export_marks_a_constant_map():
    """compose_frame with ``constant`` [True, False] on a grey frame and all-zero maps: the constant prompt's panel
    is grey (the frame faded, black text, no colour), the other is the colour map's low end (blue in jet). Catches
    the flag ignored (a uniform blue panel that reads as "low relevance everywhere") or applied to the wrong
    prompt."""
    from gradeclip.viz.video_export import compose_frame

    frame = np.full((40, 60, 3), 128, np.uint8)
    maps = np.zeros((2, 4, 6), np.float32)
    picture = compose_frame(frame, maps, ["a", "b"], [0.1, 0.2], [0.4, 0.6], 1.0, 3, scale_label="per frame",
                            panel_height=40, constant=[True, False]).astype(int)
    flat, coloured = picture[34:74, 60:120], picture[34:74, 120:180]
    assert np.all(flat[..., 0] == flat[..., 1]) and np.all(flat[..., 1] == flat[..., 2])
    assert (flat < 100).any()  # the text
    assert (coloured[..., 2] - coloured[..., 0] > 50).all()  # blue


@pytest.mark.parametrize("writer", ["save", "write_text"])
def test_interrupted_maps_and_scores_leave_no_file_under_their_names(tmp_path, result, monkeypatch, writer):
    """save_explanation interrupted half-way through the .npy maps or the scores JSON: neither name holds half a
    file, and no temporary is left. Catches np.save or write_text aimed at the final name."""
    import os
    import pathlib

    def half_then_ctrl_c(path, *args, **kwargs):
        pathlib.Path(path).write_bytes(b"\x93NUMPY half a file")
        raise KeyboardInterrupt

    if writer == "save":
        monkeypatch.setattr(np, "save", half_then_ctrl_c)
    else:
        monkeypatch.setattr(pathlib.Path, "write_text", lambda self, *a, **k: half_then_ctrl_c(self))
    with pytest.raises(KeyboardInterrupt):
        save_explanation(result, "run", tmp_path)
    left = sorted(os.listdir(tmp_path))
    assert left == ([] if writer == "save" else ["run_maps.npy"]), left


def test_score_chart_names_how_the_probabilities_were_made():
    """Softmax probabilities (summing to 1) are labelled "softmax over prompts"; SigLIP's per-prompt sigmoids (here
    0.9 and 0.7) are not given that label; an explicit ``kind`` wins. Catches the fixed softmax label that the chart
    put on sigmoid scores."""
    fig = plot_scores(PROMPTS, [0.3, 0.1], [0.75, 0.25])
    assert fig.axes[1].get_xlabel() == "probability (softmax over prompts)"
    fig = plot_scores(PROMPTS, [0.3, 0.1], [0.9, 0.7])
    assert fig.axes[1].get_xlabel() == "probability (sigmoid, each prompt on its own)"
    fig = plot_scores(PROMPTS, [0.3, 0.1], [0.5, 0.5], kind="sigmoid")
    assert fig.axes[1].get_xlabel() == "probability (sigmoid)"
    plt.close("all")
