"""The interactive explorer: scrub a video, type prompts, switch methods and export, in one ipywidgets widget.

Core ipywidgets only (what Colab, JupyterLab, Jupyter Notebook and VS Code render without set-up). Explanations
are cached (bounded LRU, key: frame, prompts, method, options): opacity, colours, colour scale and the selected
prompt redraw without running the model. Frames are decoded when shown; Export writes the paper figure.
"""
from __future__ import annotations

import html
import inspect
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Union

import ipywidgets as widgets
import numpy as np

from ..backbones.base import backbone_of
from ..explain import explain_encoded, word_importance
from ..precision import check_precision
from ..methods.registry import get_method, method_names
from .explorer_view import (CMAPS, MAIN_OPTIONS, NO_WIDGETS, PLAY_INTERVAL_MS, SCALES, SLOW_METHODS, FrameSource,
                            LRUCache, compose_view, explanation_bytes, input_sizes, jpeg_bytes, one_line,
                            parse_prompts, scaled_maps, scores_html, words_html)
from .explorer_clip import with_clip_view
from .export import export_frame
from .figures import display_name
from .saving import DEFAULT_OUT


def _option_widget(name: str, default):
    if isinstance(default, bool):
        return widgets.Checkbox(value=default, description=name, indent=False,
                                layout=widgets.Layout(width="auto", margin="0 12px"))
    if isinstance(default, int):
        low = -64 if name == "start_layer" else 1
        return widgets.BoundedIntText(value=default, min=low, max=100_000, description=name,
                                      layout=widgets.Layout(width="170px"))
    return None


class Explorer(widgets.VBox):
    """The explorer widget (see ``explore``). Its parts are attributes (``slider``, ``prompts_box``, ``method``,
    ``size``, ``opacity``, ``cmap``, ``scale``, ``selected``, ``export_button``, ``image``, ``scores``, ``words``,
    ``status``), so code and tests can drive it as a user would. ``current`` is the shown frame's ``Explanation``;
    ``forwards`` counts explanations computed (cache misses)."""

    def __init__(self, model, video, prompts: Union[str, Sequence[str]], *, method: str = "grad_eclip",
                 tokenizer=None, out_dir=DEFAULT_OUT, frame: int = 0, input: Optional[str] = None,
                 scale: Union[float, str] = 1.0, cache_size: int = 32, panel_width: int = 320, words: bool = True,
                 precision: str = "fp32"):
        self.model, self.tokenizer, self.out_dir, self.panel_width = model, tokenizer, Path(out_dir), panel_width
        self.source = FrameSource(video)
        get_method(method)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.cache = LRUCache(cache_size, size=explanation_bytes)
        self.word_cache = LRUCache(256)
        self.text_cache = LRUCache(16)  # text features (K, D) per prompt set
        self.backbone = backbone_of(model, tokenizer)  # the model as every method sees it, with its tokenizer
        check_precision(precision, self.backbone, method)
        self.precision = precision  # fixed for the widget's life (gradeclip/precision.py)
        self.ranges = {}  # (prompts, method, options) -> per-prompt (low, high) of raw maps over the frames seen
        self.current, self.forwards = None, 0
        last = self.source.num_frames - 1
        if not -last - 1 <= frame <= last:
            raise IndexError(f"frame {frame} out of range: the video has {last + 1} frames, valid indices are "
                             f"{-last - 1}..{last}")
        frame = int(frame) % (last + 1)
        self.slider = widgets.IntSlider(value=frame, min=0, max=last, description="frame", continuous_update=False,
                                        layout=widgets.Layout(width="420px"))
        self.index_box = widgets.BoundedIntText(value=frame, min=0, max=last, layout=widgets.Layout(width="90px"))
        self.play = widgets.Play(value=frame, min=0, max=last, interval=PLAY_INTERVAL_MS, description="play")
        self.time_label = widgets.Label()
        step = widgets.Layout(width="36px")
        self.previous = widgets.Button(icon="step-backward", tooltip="previous frame", layout=step)
        self.next = widgets.Button(icon="step-forward", tooltip="next frame", layout=step)
        self.previous.on_click(lambda _: self._step(-1))
        self.next.on_click(lambda _: self._step(1))
        widgets.link((self.slider, "value"), (self.index_box, "value"))
        widgets.link((self.play, "value"), (self.slider, "value"))
        self.prompts_box = widgets.Textarea(value="\n".join(prompts), description="prompts",
                                            placeholder="one prompt per line", continuous_update=False,
                                            layout=widgets.Layout(width="420px", height="90px"))
        self.method = widgets.Dropdown(options=[(display_name(n) + (f" ({SLOW_METHODS[n]})" if n in SLOW_METHODS
                                                                     else ""), n) for n in method_names()],
                                       value=method, description="method")
        self.options_box = widgets.HBox()
        self.option_widgets = {}
        self.opacity = widgets.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="opacity",
                                           continuous_update=False)
        self.cmap = widgets.Dropdown(options=CMAPS, value="jet", description="colours")
        self.scale = widgets.Dropdown(options=[(v, k) for k, v in SCALES.items()], value="per map",
                                      description="scale", layout=widgets.Layout(width="420px"))
        self.selected = widgets.Dropdown(options=[(p, j) for j, p in enumerate(prompts)],
                                         value=0 if prompts else None, description="selected")
        sizes, chosen = input_sizes(self.backbone, self.source.height, self.source.width, input, scale)
        self.size = widgets.Dropdown(options=sizes, value=chosen, description="input",
                                     layout=widgets.Layout(width="300px"))  # values: (mode, scale)
        self.show_words = widgets.Checkbox(value=words, description="word importance", indent=False)
        self.export_button = widgets.Button(description="Export", icon="download", button_style="primary")
        self.image = widgets.Image(format="jpeg")
        self.scores, self.words, self.exported = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.status = widgets.HTML()
        self._build_options()
        for part, name in ((self.slider, "frame"), (self.prompts_box, "prompts"), (self.method, "method"),
                           (self.export_button, "export"), (self.image, "view"), (self.status, "status")):
            part.add_class(f"gc-{name}")  # stable hooks for the browser test and for user CSS
        self.add_class("gc-explorer")
        controls = widgets.VBox([
            widgets.HBox([self.play, self.previous, self.next, self.slider, self.index_box, self.time_label]),
            widgets.HBox([self.prompts_box, widgets.VBox([self.method, self.options_box, self.size])]),
            widgets.HBox([self.opacity, self.cmap, self.selected]),
            widgets.HBox([self.scale, self.show_words, self.export_button]),
        ])
        super().__init__([controls, self.status, self.image, self.scores, self.words, self.exported])
        self.slider.observe(lambda _: self.refresh(), "value")
        self.prompts_box.observe(self._prompts_changed, "value")
        self.method.observe(self._method_changed, "value")
        self.size.observe(lambda _: self.refresh(), "value")
        for control in (self.opacity, self.cmap, self.scale, self.selected, self.show_words):
            control.observe(lambda _: self.redraw(), "value")
        self.export_button.on_click(lambda _: self.export())
        self.refresh()

    # what is asked: the key of the cache
    @property
    def prompts(self):
        return tuple(parse_prompts(self.prompts_box.value))

    @property
    def options(self) -> dict:
        return {name: w.value for name, w in self.option_widgets.items()}

    def _key(self, index: int):
        return index, self.prompts, self.method.value, tuple(sorted(self.options.items())), self.size.value

    def _build_options(self):
        params = inspect.signature(get_method(self.method.value)).parameters.values()
        self.option_widgets = {}
        for p in params:
            if p.kind is p.KEYWORD_ONLY and p.name in MAIN_OPTIONS:
                control = _option_widget(p.name, p.default)
                if control is not None:
                    control.observe(lambda _: self.refresh(), "value")
                    self.option_widgets[p.name] = control
        self.options_box.children = list(self.option_widgets.values())

    def _prompts_changed(self, _):
        prompts = self.prompts
        keep = min(self.selected.value or 0, max(len(prompts) - 1, 0))
        with self.selected.hold_trait_notifications():
            self.selected.options = [(p, j) for j, p in enumerate(prompts)]
            if prompts:
                self.selected.value = keep
        self.refresh()

    def _method_changed(self, _):
        self._build_options()
        self.refresh()

    def _step(self, by: int):
        self.slider.value = int(np.clip(self.slider.value + by, self.slider.min, self.slider.max))

    def _say(self, text: str, error: bool = False):
        colour = "#b00020" if error else "#333"
        self.status.value = f'<span style="color:{colour}">{text}</span>'

    # work: compute (cache misses only), then draw
    def explanation(self, index: int):
        """The one-frame ``Explanation`` of frame ``index`` for the current prompts, method and options (cached)."""
        key = self._key(index)
        result = self.cache.get(key)
        if result is None:
            if not key[1]:
                raise ValueError("no prompts: type at least one prompt, one per line")
            frame = self.source.read(index)
            text = self.text_cache.get(key[1])
            if text is None:  # a prompt set is encoded once, not again for every frame
                text = self.backbone.encode_prompts(list(key[1]))
                self.text_cache.put(key[1], text)
            result = explain_encoded(self.backbone, frame, list(key[1]), text, method=key[2], input=key[4][0],
                                     scale=key[4][1], progress=False, precision=self.precision,
                                     **self.options)
            self.forwards += 1
            self.cache.put(key, result)
            low, high = result.raw[0].reshape(len(key[1]), -1).min(1), result.raw[0].reshape(len(key[1]), -1).max(1)
            seen = self.ranges.get(key[1:])
            self.ranges[key[1:]] = (low, high) if seen is None else (np.minimum(seen[0], low),
                                                                     np.maximum(seen[1], high))
        return result

    def refresh(self):
        """Show the slider's frame: compute its explanation if it is not cached, then redraw."""
        index = self.slider.value
        self.time_label.value = f"t = {self.source.time(index)}" if self.source.times is not None else ""
        cost = SLOW_METHODS.get(self.method.value, "")
        self._say(f"computing {display_name(self.method.value)} for frame {index} ({len(self.prompts)} prompts)…"
                  + (f" [{cost}]" if cost else ""))
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.current = self.explanation(index)
        except Exception as err:  # shown in the widget as one line; the explorer keeps working
            self.current = None
            self._say(f"frame {index}: {one_line(err)}", error=True)
            return
        note = f"; warning: {str(caught[0].message).splitlines()[0]}" if caught else ""
        # play no faster than frames are explained, or slider moves queue up behind the model
        self.play.interval = max(PLAY_INTERVAL_MS, 100 * round(12.5 * (time.perf_counter() - start)))
        self.redraw(then=lambda: self._say(f"frame {index} · {display_name(self.method.value)} · "
                                           f"{time.perf_counter() - start:.2f} s ({len(self.cache)} cached){note}"))

    def displayed_maps(self) -> np.ndarray:
        """The shown frame's maps (K, h, w) in [0, 1] on the chosen colour scale (with input library, placed over
        the part of the frame the model saw, 0 elsewhere)."""
        maps = scaled_maps(self.current, self.scale.value, self.ranges.get(self._key(0)[1:]))
        view = self.current.view
        if view is None or view.mode != "library" or maps.shape[-2:] == tuple(view.frame_size):
            return maps
        import torch

        return view.place(view.fit(torch.from_numpy(maps)[None]))[0].numpy()

    def redraw(self, then=None):
        """Draw the view from the cached explanation: no model call. ``then`` runs once the image and the scores
        are shown, before the word importance (which may need computing) is drawn."""
        result = self.current
        if result is None:
            return
        selected = self.selected.value if self.selected.value is not None else 0
        selected = selected if selected < len(result.prompts) else 0  # prompts edited, not yet recomputed
        try:
            scored = zip(result.prompts, result.cosine[0], result.probs[0])
            titles = [f"frame {self.slider.value}"] + [f"{p} · cos {c:.3f} · p {q:.2f}" for p, c, q in scored]
            view = compose_view(result.frames[0], self.displayed_maps(), titles, cmap=self.cmap.value,
                                alpha=self.opacity.value, panel_width=self.panel_width, selected=selected)
            self.image.value = jpeg_bytes(view)
            self.scores.value = scores_html(result.prompts, result.cosine[0], result.probs[0], selected)
            if then is not None:
                then()
            self.words.value = self._words(selected) if self.show_words.value else ""
        except Exception as err:
            self._say(f"view: {one_line(err)}", error=True)

    def _words(self, selected: int) -> str:
        prompt = self.current.prompts[selected]
        key = (self.slider.value, prompt)
        pairs = self.word_cache.get(key)
        if pairs is None:  # the view above is already shown; the words follow (one more forward and backward)
            self.words.value = f"<div>word importance for <i>{html.escape(prompt)}</i>: computing…</div>"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "layers exceeds the text blocks" on small models
                    pairs = word_importance(self.backbone, self.current.frames[0], prompt)
            except Exception as err:
                return f"<div>word importance unavailable for this model or prompt: {one_line(err)}</div>"
            self.word_cache.put(key, pairs)
        return words_html(pairs, prompt)

    def export(self):
        """Write the shown view as the paper figure (PNG, PDF), the raw maps (.npy) and the scores (JSON) to
        ``out_dir``; returns the paths (also listed in the widget)."""
        if self.current is None:
            self._say("export: nothing to export (fix the error above first)", error=True)
            return []
        index, result = self.slider.value, self.current
        name = f"{self.source.name}_frame{index:06d}_{result.method}"
        try:
            shown = replace(result, maps=self._frame_size_maps()[None])  # the colour scale shown
            meta = {"video": self.source.path, "frame": index, "time_s": self.source.seconds(index),
                    "options": self.options, "input_mode": self.size.value[0], "scale": self.size.value[1],
                    "colour_scale": self.scale.value}
            paths = export_frame(shown, name, self.out_dir, cmap=self.cmap.value, alpha=self.opacity.value, meta=meta,
                                 title=f"{self.source.name} · frame {index} · {self.source.time(index)}")
        except Exception as err:
            self._say(f"export: {one_line(err)}", error=True)
            return []
        self.exported.value = "exported: " + ", ".join(f"<code>{p}</code>" for p in paths)
        self._say(f"exported {len(paths)} files to {self.out_dir}")
        return paths

    def _frame_size_maps(self) -> np.ndarray:
        from PIL import Image

        h, w = self.current.frames.shape[1:3]
        return np.stack([np.asarray(Image.fromarray(m.astype(np.float32)).resize((w, h), Image.BILINEAR))
                         if m.shape != (h, w) else m for m in self.displayed_maps()])

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        bundle["text/plain"] = NO_WIDGETS
        return bundle


def explore(model, video, prompts: Union[str, Sequence[str]] = ("a person walking", "a tree"), *,
            method: str = "grad_eclip", tokenizer=None, out_dir=DEFAULT_OUT, frame: int = 0,
            input: Optional[str] = None, scale: Union[float, str] = 1.0, clip=None, **kwargs) -> Explorer:
    """An interactive explorer of ``model``'s explanations over ``video``, as an ipywidgets widget.

    ``video``: a path (frames decoded on demand, one at a time) or uint8 RGB frames (N, H, W, 3). ``prompts``: a
    string or a list (editable in the widget, one per line). ``method``: a name in ``method_names()``;
    ``tokenizer`` goes to ``explain`` when given. ``frame``: the first frame shown (negative counts from the end).
    ``input`` and ``scale``: the model input as for ``explain`` (None: the model's default; native, model or
    library; ``scale="model"`` is read as ``input="model"``); also a menu in the widget, each entry naming the
    size in pixels fed to the model. ``clip``: open with the clip view under the slider (``ClipView``: each
    sampled frame's share of the clip score): ``"uniform:N"`` or indices, True for the model's own (X-CLIP, which
    has no per-frame view: its clip length). Export writes to ``out_dir``. Display the returned widget (last
    expression of a cell); ``kwargs``: ``cache_size`` (explanations kept, default 32), ``panel_width`` (pixels per
    panel, default 320), ``words`` (show word importance, default True), ``precision`` (``"fp32"``, ``"bf16"`` or
    ``"fp16"`` as for ``explain``, named in exports; default fp32).
    """
    return with_clip_view(Explorer(model, video, prompts, method=method, tokenizer=tokenizer, out_dir=out_dir,
                                   frame=frame, input=input, scale=scale, **kwargs), clip)
