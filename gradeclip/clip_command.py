"""The ``clip`` command: explain a clip-level score (which frames, and where in them) of frames sampled from a video.

    python -m gradeclip clip VIDEO --prompt P [--prompt P2 ...] [--frames uniform:8] [--pooling mean|xclip]
                                   [--model NAME] [--method grad_eclip] [--input native|model|library] [--out DIR]

Writes into ``--out``, every file complete or absent (``files.atomic_path``): ``STEM.mp4`` and ``STEM.gif`` (each
sampled frame beside its overlays on one scale per prompt shared over the clip), ``STEM_PROMPT-K.png`` per prompt
(frame strip, overlays, frame-importance curve against true times), ``STEM.npz`` (raw maps, scores, importance)
and ``STEM.json`` (what was explained, how, and the numbers). STEM is ``VIDEONAME_clip_METHOD``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from .checks import output_folder, positive_int_arg
from .files import Interrupted, atomic_path, write_json
from .input_args import add_input_options, add_precision_option, check_input_options, check_precision_option

EXPORT_FPS = 2.0  # the sampled frames are far apart in time: the export shows each for half a second


def _selection(text: str):
    """``--frames``: ``uniform:N``, ``middle``, or comma-separated frame indices."""
    if text.startswith("uniform:") or text == "middle":
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid frames {text!r}: give 'uniform:N', 'middle' or indices such as "
                                         f"0,10,20") from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``clip`` on an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "clip", help="explain a clip-level score: which sampled frames, and where in them, made the clip match",
        description="Explain the score of a whole clip (mean-pooled frame embeddings, or X-CLIP's video score): "
                    "writes an MP4 and a GIF of the overlays on one colour scale per prompt shared over the clip, a "
                    "figure per prompt with the frame strip, the overlays and each frame's share of the clip score "
                    "against its true time, and the maps and scores (.npz) with a JSON sidecar.")
    p.add_argument("video", metavar="VIDEO", help="path of the video file")
    p.add_argument("--prompt", "-p", action="append", required=True, metavar="TEXT", help="text prompt; repeatable")
    p.add_argument("--frames", type=_selection, default=None, metavar="uniform:N|I,J,...",
                   help="frames that make the clip: N evenly spaced or a list of indices (default uniform:8; for "
                        "an X-CLIP model uniform:NUM_FRAMES, its clip length; more frames are explained in windows "
                        "of NUM_FRAMES, each window's score reported)")
    p.add_argument("--pooling", choices=("mean", "xclip"), default=None,
                   help="how frames make the clip score: mean of the frame embeddings (CLIP4Clip) or X-CLIP's video "
                        "head (default: the model's own, xclip for an X-CLIP model (hf:FOLDER), else mean)")
    p.add_argument("--model", "-m", default=os.environ.get("GRADECLIP_MODEL", "ViT-B/32"), metavar="NAME|PATH",
                   help="model as for the other commands (default: $GRADECLIP_MODEL or ViT-B/32)")
    p.add_argument("--method", default="grad_eclip", metavar="NAME",
                   help="grad_eclip (default), grad_eclip_no_spatial, grad_cam, game, self_attention or rollout")
    p.add_argument("--batch-size", type=positive_int_arg, default=16, metavar="B", help="frames per forward")
    p.add_argument("--out", "-o", default="outputs/clip", metavar="DIR", help="output folder (default: outputs/clip)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    p.add_argument("--dpi", type=positive_int_arg, default=150, help="resolution of the PNG figures (default: 150)")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity, 0..1 (default: 0.5)")
    p.add_argument("--cmap", default="jet", metavar="NAME", help="matplotlib colour map (default: jet)")
    p.add_argument("--no-gif", action="store_true", help="write the MP4 only")
    add_input_options(p)
    add_precision_option(p)
    return p


def run(args) -> int:
    """Run the ``clip`` command; returns the exit status (errors are raised as one-line exceptions)."""
    import matplotlib

    if not 0 <= args.alpha <= 1:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.cmap not in matplotlib.colormaps:
        raise ValueError(f"unknown colour map {args.cmap!r}; any name of matplotlib.colormaps works, e.g. jet")
    if any(not p.strip() for p in args.prompt):
        raise ValueError("empty --prompt: every prompt needs some text")
    check_input_options(args)
    check_precision_option(args, args.device)
    out = output_folder(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from .clip_level import check_clip_method

    from .xclip_methods import check_xclip_method

    # before the model loads: the pooling asked for, or (the model's own pooling known only once it has loaded) a
    # method that neither pooling can explain
    if args.pooling == "mean":
        check_clip_method(args.method, {})
    elif args.pooling == "xclip":
        check_xclip_method(args.method, {})
    else:
        try:
            check_xclip_method(args.method, {})
        except ValueError:
            check_clip_method(args.method, {})
    from .backbones.model import load_clip
    from .clip_level import explain_clip_video
    from .io.frames import MAX_SIDE, read_frames

    model, _ = load_clip(args.model, device=args.device)
    result = explain_clip_video(model, args.video, args.prompt, frames=args.frames, pooling=args.pooling,
                                method=args.method, input=args.input, scale=args.scale, batch_size=args.batch_size,
                                max_side=MAX_SIDE, precision=args.precision)
    frames = read_frames(args.video, result.indices, max_side=MAX_SIDE)
    stem = f"{Path(args.video).stem}_clip_{args.method}"
    written = []
    try:
        write_clip_outputs(result, frames, out, stem, video=args.video, model=args.model, cmap=args.cmap,
                           alpha=args.alpha, dpi=args.dpi, gif=not args.no_gif, written=written)
    except KeyboardInterrupt:
        done = ", ".join(p.name for p in written) or "nothing"
        raise Interrupted(f"clip {args.video}: finished {done} in {out}; run the same command again to write the "
                          f"rest") from None
    _report(result, args)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def write_clip_outputs(result, frames, out, stem: str, *, video: str = "", model: str = "", cmap: str = "jet",
                       alpha: float = 0.5, dpi: int = 150, gif: bool = True, written: Optional[list] = None) -> list:
    """Write a ``ClipExplanation``'s files into the folder ``out``: ``STEM.npz`` and ``STEM.json`` (maps, scores,
    importance, indices, times), ``STEM_prompt-K.png`` per prompt (``plot_clip``), ``STEM.mp4`` and, with ``gif``,
    ``STEM.gif`` (overlays on the clip's shared scale). ``frames``: the clip's frames, uint8 RGB (T, H, W, 3).
    ``video``, ``model``: recorded in the JSON. Each file is complete or absent; ``written`` (a list) collects the
    paths as they are finished. Returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [] if written is None else written
    options = argparse.Namespace(video=video, model=model or result.model, cmap=cmap, alpha=alpha, dpi=dpi,
                                 no_gif=not gif)
    for step in (_write_data, _write_figures, _write_overlays):
        for path in step(result, frames, out, stem, options):
            written.append(path)
    return written


def _write_data(result, frames, out: Path, stem: str, args) -> list:
    import numpy as np

    npz = out / f"{stem}.npz"
    with atomic_path(npz) as temp:
        np.savez_compressed(temp, raw=result.raw.astype(np.float32), cosine=result.cosine, probs=result.probs,
                            frame_importance=result.frame_importance, relevance_mass=result.relevance_mass,
                            indices=result.indices, times=result.times)
    record = {
        "video": str(args.video), "model": args.model, "library": result.library, "method": result.method,
        "pooling": result.pooling, "input": result.input, "precision": result.precision, "prompts": result.prompts,
        "cosine": [round(float(c), 6) for c in result.cosine], "probs": [round(float(p), 6) for p in result.probs],
        "score": ("cos(mean_t f_t/|f_t|, g_k): the cosine of the mean of the unit frame embeddings with each prompt"
                  if result.pooling == "mean" else "X-CLIP's own video-text score, logits_per_video / logit_scale "
                  "(the video embedding against each prompt conditioned on the video); over several windows of "
                  "num_frames frames, the mean of the windows' cosines"),
        "frame_indices": [int(i) for i in result.indices],
        "timestamps_s": [None if not np.isfinite(t) else round(float(t), 6) for t in result.times],
        "frame_importance": np.round(result.frame_importance, 6).tolist(),
        "frame_importance_axes": "frame, prompt; each frame's additive share of the clip cosine",
        "relevance_mass": np.round(result.relevance_mass, 6).tolist(),
        "raw_maps": {"file": npz.name, "key": "raw", "shape": list(result.raw.shape),
                     "axes": "frame, prompt, grid row, grid column", "values": "raw, not normalised"},
        "display_normalisation": "min-max with one scale per prompt over all frames of the clip",
        "windows": result.windows,
        "windows_fields": ("X-CLIP: start/stop (stop exclusive) count the sampled frames, indices are the video's "
                           "frame indices, cosine/probs that window's own scores per prompt" if result.windows
                           else "none: mean pooling scores all sampled frames at once"),
    }
    return [npz, write_json(out / f"{stem}.json", record)]


def _write_figures(result, frames, out: Path, stem: str, args) -> list:
    import matplotlib.pyplot as plt

    from .viz.clip_figures import plot_clip

    paths = []
    for k in range(len(result.prompts)):
        fig = plot_clip(result, k, frames=frames, cmap=args.cmap, alpha=args.alpha)
        path = out / f"{stem}_prompt-{k}.png"
        try:
            with atomic_path(path) as temp:
                fig.savefig(temp, dpi=args.dpi, bbox_inches="tight", format="png")
        finally:
            plt.close(fig)
        paths.append(path)
    return paths


def _write_overlays(result, frames, out: Path, stem: str, args) -> list:
    from .viz.clip_figures import clip_picture
    from .viz.video_export import _GifWriter, _Mp4Writer

    targets = [out / f"{stem}.mp4"] + ([] if args.no_gif else [out / f"{stem}.gif"])
    written = []
    for path in targets:
        with atomic_path(path) as temp:
            writer = (_Mp4Writer if path.suffix == ".mp4" else _GifWriter)(temp, EXPORT_FPS)
            try:
                for t, frame in enumerate(frames):
                    writer.append(clip_picture(result, t, frame, cmap=args.cmap, alpha=args.alpha))
            except BaseException:  # Ctrl-C included: stop the encoder without finishing the file
                getattr(writer, "abort", writer.close)()
                raise
            writer.close()
        written.append(path)
    return written


def _report(result, args) -> None:
    import numpy as np

    print(f"{Path(args.video).name}: {len(result.indices)} frames, {result.pooling} pooling; model {args.model} "
          f"({result.library}); method {result.method}; input {result.input}")
    width = max(6, *(len(p) for p in result.prompts))
    print(f"  {'prompt':<{width}}  clip cos  prob  top frame")
    for k, prompt in enumerate(result.prompts):
        top = int(np.argmax(result.frame_importance[:, k]))
        when = f" ({result.times[top]:.2f} s)" if np.isfinite(result.times[top]) else ""
        print(f"  {prompt:<{width}}  {result.cosine[k]:8.3f}  {result.probs[k]:4.2f}  {result.indices[top]}{when}",
              file=sys.stdout)
    if len(result.windows) > 1:
        for w in result.windows:
            print(f"  window frames {w['indices'][0]}-{w['indices'][-1]}: cos "
                  + " ".join(f"{c:.3f}" for c in w["cosine"]))
