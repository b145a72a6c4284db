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
