"""Video exports: an MP4 (and GIF) of frame and overlays with timecode, scores and colorbar; a score timeline with
thumbnails at keyframes."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from .figures import overlay
from ..io.frames import read_frames
from ..io.stream import stream_frames
from ..video import VideoExplanation

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img, text, org, scale=0.45, colour=(255, 255, 255)):
    cv2.putText(img, text, org, _FONT, scale, colour, 1, cv2.LINE_AA)  # on the dark header and footer bands


def _colorbar(height: int, cmap: str) -> np.ndarray:
    """A vertical colour bar (height, 46, 3) uint8 RGB, 1 at the top, with its end labels."""
    ramp = matplotlib.colormaps[cmap](np.linspace(1, 0, height - 24))[:, :3] * 255
    bar = np.full((height, 46, 3), 255, np.uint8)
    bar[12:height - 12, 4:16] = ramp[:, None, :].astype(np.uint8)
    cv2.putText(bar, "1", (20, 20), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(bar, "0", (20, height - 10), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def compose_frame(frame, maps, prompts, cosine, probs, time_s, index, *, scale_label, cmap="jet", alpha=0.5,
                  panel_height: Optional[int] = None) -> np.ndarray:
    """One video frame of the export: the frame beside an overlay per prompt (maps (K, h, w) in [0, 1]), each
    titled with its cosine and probability, a timecode and a colorbar. Returns uint8 RGB (H', W', 3)."""
    h, w = frame.shape[:2]
    ph = panel_height or min(h, 360)
    pw = max(2, round(w * ph / h))
    small = cv2.resize(frame, (pw, ph), interpolation=cv2.INTER_AREA)
    panels = [small] + [overlay(small, m, cmap=cmap, alpha=alpha) for m in maps]
    body = np.concatenate(panels, axis=1)
    header = np.full((34, body.shape[1], 3), 30, np.uint8)
    _text(header, "frame", (6, 22))
    for j, prompt in enumerate(prompts):
        label = prompt if len(prompt) <= 24 else prompt[:23] + "~"
        _text(header, f"{label}  cos {cosine[j]:.3f} p {probs[j]:.2f}", (6 + (j + 1) * pw, 22), scale=0.4)
    footer = np.full((24, body.shape[1], 3), 30, np.uint8)
    _text(footer, f"t = {time_s:7.2f} s   frame {index}   colour scale: {scale_label}", (6, 17), scale=0.42)
    picture = np.concatenate([header, body, footer], axis=0)
    return np.concatenate([picture, _colorbar(picture.shape[0], cmap)], axis=1)


class _Mp4Writer:
    """H.264 MP4 through imageio-ffmpeg (plays in browsers and notebooks); OpenCV's mp4v where it is missing."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer, self.cv = path, fps, None, None

    def append(self, rgb: np.ndarray):
        rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]  # yuv420p needs even sides
        if self.writer is None and self.cv is None:
            try:
                import imageio.v2 as imageio

                self.writer = imageio.get_writer(self.path, fps=self.fps, codec="libx264", quality=7,
                                                 pixelformat="yuv420p", macro_block_size=2)
            except ImportError:
                self.cv = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (rgb.shape[1], rgb.shape[0]))
        if self.writer is not None:
            self.writer.append_data(rgb)
        else:
            self.cv.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.cv is not None:
            self.cv.release()


def write_overlay_video(result: VideoExplanation, out_path, *, scale: str = "shared", cmap: str = "jet",
                        alpha: float = 0.5, gif: bool = True, gif_fps: float = 8.0, gif_width: int = 720,
                        batch_size: int = 16, fps: Optional[float] = None) -> List[Path]:
    """Write ``out_path`` (MP4) and, with ``gif=True``, a GIF beside it (at most ``gif_fps`` frames per second and
    ``gif_width`` pixels wide). Frames are decoded again batch by batch. ``fps``: of the MP4 (default: the
    video's rate divided by the frame step, so that the export runs in real time). Returns the paths written."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    maps = result.normalized(scale)
    label = "shared over the video" if scale == "shared" else "per frame"
    step = float(np.median(np.diff(result.indices))) if len(result.indices) > 1 else 1.0
    fps = fps or max(1.0, result.fps / step)
    gif_step = max(1, round(fps / gif_fps))
    position = {int(i): n for n, i in enumerate(result.indices)}
    writer, gif_frames = _Mp4Writer(out_path, fps), []
    try:
        for batch in stream_frames(result.video, indices=result.indices, batch_size=batch_size):
            for index, frame in zip(batch.indices.tolist(), batch.frames):
                n = position[index]
                picture = compose_frame(frame, maps[n], result.prompts, result.cosine[n], result.probs[n],
                                        result.times[n], index, scale_label=label, cmap=cmap, alpha=alpha)
                writer.append(picture)
                if gif and n % gif_step == 0:
                    image = Image.fromarray(picture)
                    if image.width > gif_width:
                        image = image.resize((gif_width, round(image.height * gif_width / image.width)),
                                             Image.BILINEAR)
                    gif_frames.append(image)
    finally:
        writer.close()
    paths = [out_path]
    if gif and gif_frames:
        gif_path = out_path.with_suffix(".gif")
        gif_frames[0].save(gif_path, save_all=True, append_images=gif_frames[1:], loop=0,
                           duration=round(1000 * gif_step / fps))
        paths.append(gif_path)
    return paths


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
    thumbs = read_frames(result.video, [int(result.indices[n]) for n, _ in marks]) if marks else []
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
    ax.set_title(f"{Path(result.video).name} · {result.method} · colour scale "
                 f"{'shared over the video' if scale == 'shared' else 'per frame'}", fontsize=10)
    if stable:
        from ..eval.stability import plot_stability, temporal_stability

        panel = fig.add_subplot(grid[1, :], sharex=ax)
        plot_stability(panel, temporal_stability(result))
    for c, ((n, label), frame) in enumerate(zip(marks, thumbs)):
        best = int(result.cosine[n].argmax())
        sub = fig.add_subplot(grid[-1, c])
        sub.imshow(overlay(frame, maps[n, best], cmap=cmap, alpha=alpha))
        sub.set_title(f"{result.times[n]:.2f} s\n{label}"[:60], fontsize=7)
        sub.axis("off")
    return fig
