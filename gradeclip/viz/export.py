"""What the commands write for an explained frame, a whole video and a prompt's words: figures (PNG, PDF), maps and
scores, each function one call that returns the paths it wrote. Matplotlib runs headless (Agg) here.

Every file is written under a temporary name and renamed when complete (``gradeclip.files``). ``written``: a list
the caller may pass, to which each path is appended as soon as that file is complete under its final name, so that a
command interrupted half-way can say which files exist.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..files import write_json


def _record(paths: list, written: Optional[list]) -> list:
    if written is not None:
        written.extend(paths)
    return paths


def frame_files(name: str, out) -> List[Path]:
    """The paths ``export_frame(result, name, out, ...)`` writes, in the order it writes them."""
    return [Path(out) / f"{name}{suffix}" for suffix in (".png", ".pdf", "_maps.npy", "_scores.json")]


def video_files(stem: str, out, *, gif: bool = True, timeline: Optional[str] = None) -> List[Path]:
    """The paths ``export_video(result, stem, out, gif=gif, timeline=timeline)`` writes, in the order it writes
    them."""
    out = Path(out)
    line = timeline or f"{stem}_timeline"
    return [out / f"{stem}_maps.npz", out / f"{stem}_maps.json", out / f"{stem}.mp4"] + \
        ([out / f"{stem}.gif"] if gif else []) + [out / f"{line}.png", out / f"{line}.pdf"]


def words_files(name: str, out, count: int) -> List[Path]:
    """The paths ``export_words`` writes for ``count`` prompts, in the order it writes them."""
    out = Path(out)
    return [out / f"{name}_words_{k}.{fmt}" for k in range(count) for fmt in ("png", "pdf")] + \
        [out / f"{name}_words.json"]


def export_frame(result, name: str, out, *, title, meta: dict, dpi=150, cmap="jet", alpha=0.5,
                 written: Optional[list] = None) -> list:
    """The files of one explained frame in ``out``: the figure (``NAME.png``/``.pdf``) and its raw maps and scores
    (``NAME_maps.npy``, ``NAME_scores.json`` with ``meta``); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import plot_explanation
    from .saving import save_explanation, save_figure

    fig = plot_explanation(result, cmap=cmap, alpha=alpha, title=title)
    try:
        paths = []
        for fmt in ("png", "pdf"):
            paths += _record(save_figure(fig, name, out, dpi=dpi, formats=(fmt,)), written)
    finally:
        plt.close(fig)
    return paths + _record(save_explanation(result, name, out, meta=meta), written)


def export_video(result, stem: str, out, *, scale="shared", cmap="jet", alpha=0.5, gif=True, dpi=150,
                 timeline: Optional[str] = None, written: Optional[list] = None) -> list:
    """The maps (.npz + JSON), the overlay MP4 (and GIF) and the timeline of a whole video; returns the paths (those
    of ``video_files``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .saving import save_figure
    from .maps_file import save_video_maps
    from .video_export import plot_timeline, write_overlay_video

    paths = _record(save_video_maps(result, out, stem), written)
    paths += _record(write_overlay_video(result, Path(out) / f"{stem}.mp4", scale=scale, cmap=cmap, alpha=alpha,
                                         gif=gif), written)
    fig = plot_timeline(result, scale=scale, cmap=cmap, alpha=alpha)
    try:
        for fmt in ("png", "pdf"):
            paths += _record(save_figure(fig, timeline or f"{stem}_timeline", out, dpi=dpi, formats=(fmt,)),
                             written)
    finally:
        plt.close(fig)
    return paths


def export_words(model, frame, prompts, name: str, out, *, dpi=150, written: Optional[list] = None) -> list:
    """Each prompt's word importance for ``frame``: a figure per prompt (``NAME_words_K``) and one JSON file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..explain import word_importance
    from .figures import plot_word_importance
    from .saving import save_figure

    paths, record = [], []
    for k, prompt in enumerate(prompts):
        pairs = word_importance(model, frame, prompt)
        record.append({"prompt": prompt, "words": [[word, round(float(weight), 6)] for word, weight in pairs]})
        fig = plot_word_importance(pairs, title=f"word importance · {prompt}")
        try:
            paths += _record(save_figure(fig, f"{name}_words_{k}", out, dpi=dpi), written)
        finally:
            plt.close(fig)
    path = write_json(Path(out) / f"{name}_words.json", {"frame_size": list(frame.shape[:2]), "prompts": record})
    return paths + _record([path], written)
