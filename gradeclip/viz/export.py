"""What the commands write for an explained frame, a whole video and a prompt's words: figures (PNG, PDF), maps and
scores, each function one call that returns the paths it wrote. Matplotlib runs headless (Agg) here."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional


def export_frame(result, name: str, out, *, title, meta: dict, dpi=150, cmap="jet", alpha=0.5) -> list:
    """The files of one explained frame in ``out``: the figure (``NAME.png``/``.pdf``) and its raw maps and scores
    (``NAME_maps.npy``, ``NAME_scores.json`` with ``meta``); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import plot_explanation, save_explanation, save_figure

    fig = plot_explanation(result, cmap=cmap, alpha=alpha, title=title)
    paths = save_figure(fig, name, out, dpi=dpi)
    plt.close(fig)
    return paths + save_explanation(result, name, out, meta=meta)


def export_video(result, stem: str, out, *, scale="shared", cmap="jet", alpha=0.5, gif=True, dpi=150,
                 timeline: Optional[str] = None) -> list:
    """The maps (.npz + JSON), the overlay MP4 (and GIF) and the timeline of a whole video; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_figure
    from ..video import save_video_maps
    from .video_export import plot_timeline, write_overlay_video

    paths = save_video_maps(result, out, stem)
    paths += write_overlay_video(result, Path(out) / f"{stem}.mp4", scale=scale, cmap=cmap, alpha=alpha, gif=gif)
    fig = plot_timeline(result, scale=scale, cmap=cmap, alpha=alpha)
    paths += save_figure(fig, timeline or f"{stem}_timeline", out, dpi=dpi)
    plt.close(fig)
    return paths


def export_words(model, frame, prompts, name: str, out, *, dpi=150) -> list:
    """Each prompt's word importance for ``frame``: a figure per prompt (``NAME_words_K``) and one JSON file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..explain import word_importance
    from .figures import plot_word_importance, save_figure

    paths, record = [], []
    for k, prompt in enumerate(prompts):
        pairs = word_importance(model, frame, prompt)
        record.append({"prompt": prompt, "words": [[word, round(float(weight), 6)] for word, weight in pairs]})
        fig = plot_word_importance(pairs, title=f"word importance · {prompt}")
        paths += save_figure(fig, f"{name}_words_{k}", out, dpi=dpi)
        plt.close(fig)
    path = Path(out) / f"{name}_words.json"
    path.write_text(json.dumps({"frame_size": list(frame.shape[:2]), "prompts": record}, indent=2) + os.linesep)
    return paths + [path]
