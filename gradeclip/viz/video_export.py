"""Video exports: an MP4 (and GIF) of frame and overlays with timecode, scores and colorbar; a score timeline with
thumbnails at keyframes."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from .ffmpeg_pipe import FfmpegWriter
from .figures import mark_constant, display_name, is_constant_map, overlay
from ..files import atomic_path
from ..io.frames import read_frames
from ..io.stream import stream_frames
from ..video import VideoExplanation

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img, text, org, scale=0.45, colour=(255, 255, 255)):
    cv2.putText(img, text, org, _FONT, scale, colour, 1, cv2.LINE_AA)  # on the dark header and footer bands


def _colorbar(height: int, cmap: str, label: str = "relevance") -> np.ndarray:
    """A vertical colour bar (height, 62, 3) uint8 RGB, 1 at the top, with its end labels and ``label`` written
    bottom to top beside it."""
    ramp = matplotlib.colormaps[cmap](np.linspace(1, 0, height - 24))[:, :3] * 255
    bar = np.full((height, 62, 3), 255, np.uint8)
    bar[12:height - 12, 4:16] = ramp[:, None, :].astype(np.uint8)
    cv2.putText(bar, "1", (20, 20), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(bar, "0", (20, height - 10), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    scale = 0.4
    while scale > 0.2 and cv2.getTextSize(label, _FONT, scale, 1)[0][0] > height - 8:
        scale -= 0.05  # shrink a long label until it fits the bar's height
    (width, text_h), _ = cv2.getTextSize(label, _FONT, scale, 1)
    strip = np.full((16, height, 3), 255, np.uint8)  # written horizontally, then turned to read bottom to top
    cv2.putText(strip, label, (max(0, (height - width) // 2), 8 + text_h // 2), _FONT, scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    bar[:, 44:60] = np.rot90(strip)
    return bar


def _constant_panel(small: np.ndarray) -> np.ndarray:
    """The frame faded, with "constant map" written across: a map with one value everywhere, which the colour map
    would paint as uniform low relevance."""
    panel = (small * 0.35 + 255 * 0.65).astype(np.uint8)
    scale = 0.4
    (width, height), _ = cv2.getTextSize("constant map", _FONT, scale, 1)
    org = (max(0, (panel.shape[1] - width) // 2), (panel.shape[0] + height) // 2)
    cv2.putText(panel, "constant map", org, _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def compose_frame(frame, maps, prompts, cosine, probs, time_s, index, *, scale_label, cmap="jet", alpha=0.5,
                  panel_height: Optional[int] = None, method: str = "", constant=None) -> np.ndarray:
    """One video frame of the export: the frame beside an overlay per prompt (maps (K, h, w) in [0, 1]), each
    titled with its cosine and probability, a timecode and a colorbar labelled with ``method``'s relevance.
    ``constant``: K bools, True for a prompt whose raw map has one value everywhere; its panel says so instead of
    showing a uniform colour. Panels are ``panel_height`` pixels high at the frame's aspect. Returns uint8 RGB
    (H', W', 3)."""
    h, w = frame.shape[:2]
    ph = panel_height or min(h, 360)
    pw = max(2, round(w * ph / h))
    small = cv2.resize(frame, (pw, ph), interpolation=cv2.INTER_AREA)
    constant = [False] * len(maps) if constant is None else list(constant)
    panels = [small] + [_constant_panel(small) if flat else overlay(small, m, cmap=cmap, alpha=alpha)
                        for m, flat in zip(maps, constant)]
    body = np.concatenate(panels, axis=1)
    header = np.full((34, body.shape[1], 3), 30, np.uint8)
    _text(header, "frame", (6, 22))
    for j, prompt in enumerate(prompts):
        label = prompt if len(prompt) <= 24 else prompt[:23] + "~"
        _text(header, f"{label}  cos {cosine[j]:.3f} p {probs[j]:.2f}", (6 + (j + 1) * pw, 22), scale=0.4)
    footer = np.full((24, body.shape[1], 3), 30, np.uint8)
    _text(footer, f"t = {time_s:7.2f} s   frame {index}   colour scale: {scale_label}", (6, 17), scale=0.42)
    picture = np.concatenate([header, body, footer], axis=0)
    label = f"{display_name(method)} relevance" if method else "relevance"
    return np.concatenate([picture, _colorbar(picture.shape[0], cmap, label)], axis=1)


class _Mp4Writer(FfmpegWriter):
    """H.264 MP4 (crf 15, yuv420p: plays in browsers and notebooks) through FFmpeg; OpenCV's mp4v where
    imageio-ffmpeg is missing."""

    def __init__(self, path: Path, fps: float):
        super().__init__(path, fps, "mp4", ["-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", "15"])
        self.cv = None

    def append(self, rgb: np.ndarray):
        rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]  # yuv420p needs even sides
        if self.process is None and self.cv is None:
            try:
                import imageio_ffmpeg  # noqa: F401
            except ImportError:
                self.cv = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (rgb.shape[1], rgb.shape[0]))
        if self.cv is not None:
            self.cv.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        else:
            super().append(rgb)

    def close(self):
        super().close()
        if self.cv is not None:
            self.cv.release()

    def abort(self):
        super().abort()
        if self.cv is not None:
            self.cv.release()


class _GifWriter(FfmpegWriter):
    """A GIF written frame by frame as the frames are made (FFmpeg), every frame kept at full size, each with its
    own 256-colour palette and error-diffusion dithering, so that a heatmap's smooth ramp is not posterised into
    bands as one global palette would do."""

    FILTER = ("split[a][b];[a]palettegen=stats_mode=single[p];"
              "[b][p]paletteuse=new=1:dither=sierra2_4a")

    def __init__(self, path: Path, fps: float):
        super().__init__(path, fps, "gif", ["-vcodec", "gif", "-pix_fmt", "pal8", "-vf", self.FILTER, "-loop", "0"])


def write_overlay_video(result: VideoExplanation, out_path, *, scale: str = "shared", cmap: str = "jet",
                        alpha: float = 0.5, gif: bool = True, batch_size: int = 16, fps: Optional[float] = None,
                        panel_height: int = 360) -> List[Path]:
    """Write ``out_path`` (MP4) and, with ``gif=True``, a GIF beside it with the same frames at the same rate
    (every exported frame, one palette per frame with dithering). Frames are decoded again batch by batch, reduced
    while decoding to about the size they are shown at, and written to both files as they are made. ``fps``: of the
    exports (default: the video's average rate divided by the frame step, so that the export runs in real time);
    each picture's timecode is the frame's presentation time. ``panel_height``: the height in pixels of the frame
    and of each overlay panel (at most the frame's own), which bounds the export's size whatever the video's.
    Each file is written under a temporary name (same folder and suffix) and renamed when both are complete, so an
    interrupted export leaves neither under its final name. Returns the paths written."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    maps = result.normalized(scale)
    label = "shared over the video" if scale == "shared" else "per frame"
    step = float(np.median(np.diff(result.indices))) if len(result.indices) > 1 else 1.0
    fps = fps or max(1.0, result.fps / step)
    position = {int(i): n for n, i in enumerate(result.indices)}
    height, width = result.frame_size
    panel = min(height, panel_height)
    decode_side = 2 * max(panel, round(width * panel / height))  # area reduction from 2x keeps it sharp
    gif_path = out_path.with_suffix(".gif")
    finals = [out_path] + ([gif_path] if gif else [])
    with contextlib.ExitStack() as stack:  # both written under temporary names, renamed once both are complete
        temps = [stack.enter_context(atomic_path(path)) for path in finals]
        writers = [_Mp4Writer(temps[0], fps)] + ([_GifWriter(temps[1], fps)] if gif else [])
        try:
            for batch in stream_frames(result.video, indices=result.indices, batch_size=batch_size,
                                       max_side=decode_side):
                for index, frame in zip(batch.indices.tolist(), batch.frames):
                    n = position[index]
                    picture = compose_frame(frame, maps[n], result.prompts, result.cosine[n], result.probs[n],
                                            result.times[n], index, scale_label=label, cmap=cmap, alpha=alpha,
                                            method=result.method, panel_height=panel,
                                            constant=[is_constant_map(m) for m in result.raw[n]])
                    for writer in writers:
                        writer.append(picture)
        except BaseException:
            for writer in writers:  # the temporary files are removed; an error here must not hide the first
                writer.abort()
            raise
        for writer in writers:
            writer.close()
    return [out_path] + ([gif_path] if gif else [])


def keyframes(result: VideoExplanation, max_count: int = 8) -> List[Tuple[int, str]]:
    """Positions (into the explained frames) worth a thumbnail, with a label, in time order: each prompt's peak and
    valley of the cosine, and the moments where the best-scoring prompt changes (at most ``max_count``)."""
    marks = {}
    for j, prompt in enumerate(result.prompts):
        marks.setdefault(int(result.cosine[:, j].argmax()), f"peak: {prompt}")
        marks.setdefault(int(result.cosine[:, j].argmin()), f"valley: {prompt}")
    best = result.cosine.argmax(axis=1)
    for n in np.flatnonzero(np.diff(best)) + 1:
        marks.setdefault(int(n), f"best → {result.prompts[best[n]]}")
    chosen = sorted(marks)
    if len(chosen) > max_count:  # keep an even spread over time
        chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, max_count).round().astype(int)]
    return [(n, marks[n]) for n in chosen]


def plot_timeline(result: VideoExplanation, *, max_thumbnails: int = 8, scale: str = "shared", cmap: str = "jet",
                  alpha: float = 0.5):
    """Each prompt's cosine over time, with keyframes marked and shown below as thumbnails (the frame with the
    overlay of the best prompt at that moment); between them, with two or more frames, the temporal stability
    (``eval.stability``). Returns a matplotlib Figure."""
    marks = keyframes(result, max_thumbnails)
    maps = result.normalized(scale)
    thumbs = read_frames(result.video, [int(result.indices[n]) for n, _ in marks], max_side=640) if marks else []
    cols = max(1, len(marks))
    stable = len(result.indices) > 1  # a panel of temporal stability below the scores
    fig = plt.figure(figsize=(max(8.0, 1.9 * cols), 8.0 if stable else 6.0), layout="constrained")
    grid = fig.add_gridspec(3 if stable else 2, cols, height_ratios=[1.6, 0.9, 1] if stable else [1.6, 1])
    ax = fig.add_subplot(grid[0, :])
    for j, prompt in enumerate(result.prompts):
        ax.plot(result.times, result.cosine[:, j], label=prompt, lw=1.5)
    for n, _ in marks:
        ax.axvline(result.times[n], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("cosine similarity")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{Path(result.video).name} · {display_name(result.method)} · colour scale "
                 f"{'shared over the video' if scale == 'shared' else 'per frame'}", fontsize=10)
    if stable:
        from ..eval.stability import plot_stability, temporal_stability

        panel = fig.add_subplot(grid[1, :], sharex=ax)
        plot_stability(panel, temporal_stability(result))
    thumbnails = []
    for c, ((n, label), frame) in enumerate(zip(marks, thumbs)):
        best = int(result.cosine[n].argmax())
        sub = fig.add_subplot(grid[-1, c])
        if is_constant_map(result.raw[n, best]):
            mark_constant(sub, frame, "constant map")
        else:
            sub.imshow(overlay(frame, maps[n, best], cmap=cmap, alpha=alpha))
        shown = result.prompts[best] if len(result.prompts[best]) <= 24 else result.prompts[best][:23] + "…"
        sub.set_title(f"{result.times[n]:.2f} s · {label[:28]}\nmap: {shown}", fontsize=7)
        sub.axis("off")
        thumbnails.append(sub)
    if thumbnails:
        mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=cmap)
        fig.colorbar(mappable, ax=thumbnails, shrink=0.9, label=f"{display_name(result.method)} relevance\n"
                     f"(thumbnails: the best prompt's map)").ax.tick_params(labelsize=7)
    return fig
