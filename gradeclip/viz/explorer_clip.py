"""The explorer's "clip" view: each sampled frame's share of the clip score as a bar under the frame slider;
clicking a bar moves the slider to that frame. Core ipywidgets only (a bar is a Button), like the explorer.

For a model that only scores whole clips (X-CLIP), the explorer's per-frame view is refused; on a sampled frame
the view then shows that frame's overlays from the clip explanation (the clip's shared scale) instead.
"""
from __future__ import annotations

from typing import Optional

import ipywidgets as widgets
import numpy as np

from ..clip_level import (GRADIENT_METHODS, SCORE_FREE_METHODS, ClipExplanation, check_pooling, default_frames,
                          explain_clip, explain_clip_video)
from ..io.frames import MAX_SIDE, resolve_indices
from ..xclip_methods import XCLIP_METHODS
from .clip_figures import clip_picture
from .explorer_view import jpeg_bytes, one_line


class ClipView(widgets.VBox):
    """Frame importance of a clip-level explanation of the explorer's video, drawn under its slider.

    ``explorer``: an ``Explorer``; ``frames``: the clip's frames (``"uniform:N"`` or indices; None: the model's
    own, ``"uniform:NUM_FRAMES"`` for X-CLIP, else ``"uniform:8"``); ``result``: a
    ``ClipExplanation`` of those frames, else computed with the explorer's model, prompts, method (Grad-ECLIP
    where the explorer's method cannot explain a clip score) and input. Parts: ``prompt`` (which prompt's shares
    the bars show), ``bars`` (one Button per sampled frame, its height the frame's share of the clip cosine, scaled
    to the largest share's magnitude; negative shares in orange), ``recompute`` (explain the clip again with the
    explorer's current settings), ``caption``."""

    def __init__(self, explorer, *, frames=None, result: Optional[ClipExplanation] = None,
                 height: int = 70):
        self.explorer, self.frames, self.height = explorer, frames, height
        self.prompt = widgets.Dropdown(description="clip", layout=widgets.Layout(width="260px"))
        self.recompute = widgets.Button(description="explain the clip", tooltip="the clip score with the current "
                                        "prompts, method and input")
        self.bars = widgets.HBox(layout=widgets.Layout(align_items="flex-end", height=f"{height + 4}px"))
        self.caption = widgets.HTML()
        super().__init__([widgets.HBox([self.prompt, self.recompute, self.caption]), self.bars])
        self.add_class("gc-clip")
        self.result = result if result is not None else self.compute()
        self.prompt.observe(lambda _: self.draw(), "value")
        self.recompute.on_click(lambda _: self._recompute())
        explorer.slider.observe(lambda _: self._follow(), "value")
        self._show_prompts()

    def compute(self) -> ClipExplanation:
        """A ``ClipExplanation`` of the explorer's video with its current prompts, method and input."""
        ex = self.explorer
        method = ex.method.value if ex.method.value in GRADIENT_METHODS + SCORE_FREE_METHODS else "grad_eclip"
        mode, scale = ex.size.value
        common = dict(method=method, input=mode, scale=scale, progress=False)
        frames = default_frames(ex.backbone) if self.frames is None else self.frames
        if ex.source.path is not None:
            return explain_clip_video(ex.backbone, ex.source.path, list(ex.prompts), frames=frames,
                                      max_side=MAX_SIDE, **common)
        wanted = resolve_indices(frames, ex.source.num_frames)
        result = explain_clip(ex.backbone, ex.source.array[wanted], list(ex.prompts), **common)
        result.indices = wanted
        return result

    def _recompute(self):
        """The button's action: a clip the current settings cannot explain (a method the model refuses, too few
        frames for X-CLIP) is said in the explorer's status line in one line; the bars keep the last result."""
        try:
            self.result = self.compute()
        except (ValueError, TypeError) as err:
            self.explorer._say(f"clip: {one_line(err)}", error=True)
            return
        self._show_prompts()

    def _show_prompts(self):
        self.prompt.options = [(f"{p} · cos {c:.3f}", k) for k, (p, c) in
                               enumerate(zip(self.result.prompts, self.result.cosine))]
        self.prompt.value = 0
        self.draw()

    def draw(self):
        """One bar per sampled frame for the selected prompt; clicking one moves the explorer's slider there."""
        result, k = self.result, self.prompt.value or 0
        shares = result.frame_importance[:, k]
        top = float(np.abs(shares).max()) or 1.0
        width = max(6, min(40, 640 // max(1, len(shares))))
        bars = []
        for n, (index, share) in enumerate(zip(result.indices, shares)):
            when = f" · {result.times[n]:.2f} s" if np.isfinite(result.times[n]) else ""
            bar = widgets.Button(tooltip=f"frame {int(index)}{when} · share {share:+.4f}",
                                 layout=widgets.Layout(width=f"{width}px", padding="0", margin="0 1px",
                                                       height=f"{max(3, round(self.height * abs(share) / top))}px"))
            bar.style.button_color = "#d9822b" if share < 0 else "#4a90d9"
            bar.on_click(lambda _, i=int(index): setattr(self.explorer.slider, "value", i))
            bars.append(bar)
        self.bars.children = bars
        self.caption.value = (f"{result.pooling} pooling · {result.method} · bars: each frame's share of the clip "
                              f"cosine {result.cosine[k]:.3f}; click one to show that frame")
        self._follow()

    def _follow(self):
        """Mark the shown frame's bar; where the explorer has no per-frame view of it (X-CLIP), show the frame's
        overlays from the clip explanation."""
        ex, shown = self.explorer, self.explorer.slider.value
        for index, bar in zip(self.result.indices, self.bars.children):
            bar.style.font_weight = "bold" if int(index) == shown else ""
            bar.description = "▲" if int(index) == shown else ""
        sampled = np.flatnonzero(np.asarray(self.result.indices) == shown)
        if ex.current is None and len(sampled):
            t = int(sampled[0])
            ex.image.value = jpeg_bytes(clip_picture(self.result, t, ex.source.read(shown), cmap=ex.cmap.value,
                                                     alpha=ex.opacity.value))
            ex.status.value = (f"frame {shown}: overlays of the clip explanation (sampled frame {t + 1} of "
                               f"{len(self.result.indices)}; {self.result.pooling} pooling, one scale per prompt "
                               f"over the clip)")


def add_clip_view(explorer, **kwargs) -> ClipView:
    """Put a ``ClipView`` of ``explorer``'s video (``kwargs`` go to ``ClipView``) right under its frame slider;
    returns it (also ``explorer.clip_view``). For X-CLIP, which is explained only at the clip level, the explorer's
    method menu keeps just the methods its video score can be explained with."""
    if check_pooling(None, explorer.backbone) == "xclip":
        chosen = explorer.method.value
        explorer.method.options = [(label, name) for label, name in explorer.method.options
                                   if name in XCLIP_METHODS]
        explorer.method.value = chosen if chosen in XCLIP_METHODS else "grad_eclip"
    view = ClipView(explorer, **kwargs)
    controls = explorer.children[0]
    controls.children = (controls.children[0], view, *controls.children[1:])
    explorer.clip_view = view
    return view


def with_clip_view(explorer, clip):
    """``explore(..., clip=...)``: ``explorer`` with a ``ClipView`` under its slider when ``clip`` is not None
    (True: the model's own frames; else the frames as ``ClipView`` takes them); returns the explorer."""
    if clip is not None and clip is not False:
        add_clip_view(explorer, frames=None if clip is True else clip)
    return explorer

