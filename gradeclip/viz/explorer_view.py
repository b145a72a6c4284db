"""The explorer's state without widgets: frames decoded on demand, a bounded cache of explanations, colour scales,
and the fast view (overlays composed with numpy and PIL, scores and word importance as HTML).

``explorer.py`` wires these into ipywidgets; everything here is plain Python and testable without a front end.
"""
from __future__ import annotations

import html
import io
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable, List, Optional, Sequence, Tuple

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io.frames import MAX_SIDE, read_frames, video_info
from ..io.index import shape_after

SCALES = {"per map": "per map (each map 0–1)", "per frame": "per frame (all prompts share one)",
          "shared": "shared over the frames seen (per prompt)"}

# Expected cost on a CPU at ViT-B/32 size (README, "Explanation methods"), shown in the method menu
SLOW_METHODS = {"rise": "slow: ~1 min per frame", "scorecam": "slow: ~1 min per frame",
                "eigencam": "~1 s per frame"}
# Options offered as controls when the chosen method takes them (other options keep their defaults)
MAIN_OPTIONS = ("layers", "single_head", "spatial_weight", "start_layer", "n_masks")
PLAY_INTERVAL_MS = 700  # the play button's step, longer when frames take longer to explain
CMAPS = ("jet", "viridis", "inferno", "magma", "turbo", "gray")
NO_WIDGETS = ("gradeclip explorer: this front end cannot show Jupyter widgets. Open the notebook in Jupyter, "
              "JupyterLab, Colab or VS Code (with ipywidgets >= 8), or use gradeclip.explain and "
              "gradeclip.plot_explanation for a static figure.")


class FrameSource:
    """Frames of a video file (decoded one at a time, on demand) or of an in-memory uint8 RGB array (N, H, W, 3)."""

    def __init__(self, video):
        if isinstance(video, (str, Path)):
            self.path: Optional[str] = str(video)
            self.array = None
            info = video_info(self.path)
            self.num_frames, self.fps, self.times = info.num_frames, info.fps, info.times
            self.width, self.height = shape_after(info.width, info.height, MAX_SIDE)  # as read: 4K at 1920 px
            self.name = Path(self.path).stem
        else:
            array = np.asarray(video)
            if array.ndim == 3:
                array = array[None]
            if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or len(array) == 0:
                raise ValueError(f"video must be a path or uint8 RGB frames (N, H, W, 3), got {array.dtype} "
                                 f"{array.shape}")
            self.path, self.array, self.num_frames, self.fps, self.name = None, array, len(array), 0.0, "frames"
            self.times = None
            self.height, self.width = array.shape[1:3]

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as uint8 RGB (H, W, 3)."""
        if self.array is not None:
            return self.array[index]
        return read_frames(self.path, [int(index)], max_side=MAX_SIDE)[0]

    def seconds(self, index: int) -> Optional[float]:
        """The frame's presentation time in seconds (from the container), or None for in-memory frames."""
        return None if self.times is None else float(self.times[index])

    def time(self, index: int) -> str:
        """The frame's time stamp as text ("1.240 s"), or "" when it has none."""
        seconds = self.seconds(index)
        return "" if seconds is None else f"{seconds:.3f} s"


def input_sizes(model, height: int, width: int, input: Optional[str] = None, scale=1.0) -> Tuple[list, tuple]:
    """The input menu of the explorer, ``([(label, (mode, scale)), ...], chosen (mode, scale))``: each input mode
    (native, model, library; see ``backbones/inputs.py``) at scale 1, native at half and double size, and the
    chosen ``(input, scale)`` itself; each label names the mode and the size in pixels fed to the model (height ×
    width). ``input``: a mode or None (the model's default); ``scale``: a number in (0, 8] (``"model"`` is read as
    ``input="model"``). ``model``: any model ``explain`` accepts."""
    from ..backbones.base import backbone_of
    from ..backbones.inputs import INPUT_MODES, input_view, resolve_input

    backbone = backbone_of(model)
    if scale == "model":
        input, scale = "model", 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 8:
        raise ValueError(f"scale must be a number in (0, 8] or 'model', got {scale!r}")
    chosen = (resolve_input(backbone, input, scale), float(scale))
    entries = [(mode, 1.0) for mode in INPUT_MODES] + [("native", 0.5), ("native", 2.0)]
    entries += [] if chosen in entries else [chosen]
    sizes = []
    for mode, factor in entries:
        try:
            view = input_view(backbone, height, width, mode, factor)
        except ValueError:  # a library transform gradeclip cannot reproduce: not offered
            continue
        times = "" if factor == 1 else f" ×{factor:g}"
        crop = " crop" if mode == "library" and not view.seen().all() else ""
        sizes.append((f"{mode}{times} · {view.size[0]}×{view.size[1]} px{crop}", (mode, factor)))
    return sizes, chosen


class LRUCache:
    """A least-recently-used cache bounded by entry count and by the bytes ``size(value)`` reports.

    The newest entry is always kept, even alone over ``max_bytes``.
    """

    def __init__(self, max_entries: int = 32, max_bytes: int = 512 * 2 ** 20,
                 size: Callable[[object], int] = lambda value: 0):
        self.max_entries, self.max_bytes, self.size = max_entries, max_bytes, size
        self.data: "OrderedDict[Hashable, object]" = OrderedDict()
        self.bytes = 0

    def get(self, key):
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        return None

    def put(self, key, value) -> None:
        if key in self.data:
            self.bytes -= self.size(self.data.pop(key))
        self.data[key] = value
        self.bytes += self.size(value)
        while len(self.data) > 1 and (len(self.data) > self.max_entries or self.bytes > self.max_bytes):
            _, old = self.data.popitem(last=False)
            self.bytes -= self.size(old)

    def __len__(self) -> int:
        return len(self.data)


def explanation_bytes(result) -> int:
    """Memory held by an ``Explanation`` (its arrays)."""
    return sum(getattr(result, name).nbytes for name in ("maps", "raw", "cosine", "probs", "frames"))


def scaled_maps(result, scale: str, shared: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """The maps of a one-frame ``Explanation`` on the chosen colour scale: (K, h, w) float32 in [0, 1].

    ``"per map"``: ``result.maps[0]`` (frame size, each map min-max normalised). ``"per frame"``: the raw token-grid
    maps over one range shared by all prompts. ``"shared"``: each prompt's raw map over ``shared`` = (low, high),
    arrays (K,), the range of that prompt's raw maps over the frames seen. Token-grid maps are resized when drawn.
    """
    if scale == "per map":
        return result.maps[0]
    raw = result.raw[0].astype(np.float32)
    if scale == "per frame":
        low, high = np.full(len(raw), raw.min()), np.full(len(raw), raw.max())
    elif scale == "shared":
        if shared is None:
            raise ValueError("the shared colour scale needs the range over the frames seen")
        low, high = shared
    else:
        raise ValueError(f"unknown colour scale {scale!r}; allowed: {', '.join(SCALES)}")
    span = np.where(high - low > 0, high - low, 1.0)
    return np.clip((raw - low[:, None, None]) / span[:, None, None], 0, 1).astype(np.float32)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _fit(text: str, draw, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def compose_view(frame: np.ndarray, maps: np.ndarray, titles: Sequence[str], *, cmap: str = "jet",
                 alpha: float = 0.5, panel_width: int = 320, selected: Optional[int] = None) -> np.ndarray:
    """The frame beside one overlay per map, each under its title, with a colour bar: uint8 RGB (H', W', 3).

    ``frame``: uint8 RGB (H, W, 3). ``maps``: (K, h, w) float in [0, 1], resized bilinearly to the panel.
    ``titles``: K + 1 strings (the frame's first). Panels are ``panel_width`` pixels wide at the frame's aspect;
    the ``selected`` map's panel is outlined.
    """
    h, w = frame.shape[:2]
    pw, ph = panel_width, max(1, round(panel_width * h / w))
    small = np.asarray(Image.fromarray(frame).resize((pw, ph), Image.BILINEAR), dtype=np.float32)
    colours = matplotlib.colormaps[cmap]
    lut = colours(np.linspace(0, 1, 256))[:, :3].astype(np.float32) * 255  # 256 levels: a table, not a call per pixel
    panels = [small]
    for heat in maps:
        heat = np.asarray(Image.fromarray(np.asarray(heat, np.float32)).resize((pw, ph), Image.BILINEAR))
        levels = np.rint(np.clip(np.nan_to_num(heat), 0, 1) * 255).astype(np.uint8)
        panels.append(small * (1 - alpha) + lut[levels] * alpha)
    font = _font(13)
    top, gap, bar = 22, 6, 14
    canvas = Image.new("RGB", (len(panels) * (pw + gap) - gap, top + ph + bar + 18), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, title) in enumerate(zip(panels, titles)):
        x = i * (pw + gap)
        canvas.paste(Image.fromarray(np.clip(panel, 0, 255).astype(np.uint8)), (x, top))
        draw.text((x + 2, 3), _fit(title, draw, font, pw - 4), fill="black", font=font)
        if selected is not None and i == selected + 1:
            draw.rectangle((x, top, x + pw - 1, top + ph - 1), outline=(0, 0, 0), width=3)
    ramp = (colours(np.linspace(0, 1, pw))[:, :3] * 255).astype(np.uint8)  # the colour bar under the last panel
    x = (len(panels) - 1) * (pw + gap)
    canvas.paste(Image.fromarray(np.repeat(ramp[None], bar - 4, axis=0)), (x, top + ph + 4))
    draw.text((x, top + ph + bar + 2), "low", fill="black", font=_font(11))
    draw.text((x + pw - 26, top + ph + bar + 2), "high", fill="black", font=_font(11))
    return np.asarray(canvas)


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG encoding of a uint8 RGB image: about 10x faster to encode and 3x smaller to send than PNG, which
    matters when the view is redrawn on every slider move and travels to a remote front end (Colab)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def scores_html(prompts: Sequence[str], cosine: Sequence[float], probs: Sequence[float],
                selected: Optional[int] = None) -> str:
    """An HTML table: per prompt its cosine, its probability and a bar of that probability."""
    rows = []
    for j, (prompt, c, p) in enumerate(zip(prompts, cosine, probs)):
        weight = "bold" if j == selected else "normal"
        rows.append(
            f'<tr style="font-weight:{weight}"><td class="gc-prompt">{html.escape(prompt)}</td>'
            f'<td class="gc-cos">{c:.4f}</td><td class="gc-prob">{p:.4f}</td>'
            f'<td style="width:220px"><div style="background:#f28e2b;height:12px;width:{200 * p:.1f}px"></div>'
            '</td></tr>')
    return ('<table class="gc-scores"><tr><th>prompt</th><th>cosine</th><th>probability</th><th></th></tr>'
            + "".join(rows) + "</table>")


def words_html(pairs: Sequence[Tuple[str, float]], prompt: str) -> str:
    """The words of ``prompt`` shaded by their Grad-ECLIP weight (``pairs`` from ``word_importance``)."""
    top = max((weight for _, weight in pairs), default=0.0) or 1.0
    colours = matplotlib.colormaps["Reds"]
    spans = []
    for word, weight in pairs:
        r, g, b = (int(255 * v) for v in colours(0.85 * weight / top)[:3])
        ink = "white" if weight / top > 0.6 else "black"
        spans.append(f'<span class="gc-word" title="{weight:.3f}" style="background:rgb({r},{g},{b});color:{ink};'
                     f'padding:2px 4px;margin:1px;border-radius:3px">{html.escape(word)} {weight:.2f}</span>')
    return f"<div>word importance for <i>{html.escape(prompt)}</i>: {''.join(spans)}</div>"


def parse_prompts(text: str) -> List[str]:
    """One prompt per non-empty line of ``text``, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    message = str(err).strip().splitlines()
    return f"{type(err).__name__}: {message[0] if message else ''}"
