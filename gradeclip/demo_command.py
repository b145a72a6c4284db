"""The ``demo`` command: the shipped shapes CLIP explains the moving-shapes video, with no network.

    python -m gradeclip demo [--out DIR] [--device D] [--input MODE] [--scale S]

Writes the middle frame's figure, maps and scores, then every frame as MP4, GIF and timeline, keeping the CLI's
``Progress`` up to date so that Ctrl-C can say what was finished. Imports nothing heavy until it runs (``--help``
stays free of torch).
"""
from __future__ import annotations

from pathlib import Path

from .checks import output_folder
from .input_args import add_input_options, check_input_options
from .interrupts import frames_bar

DEMO_PROMPTS = ["a red circle", "a blue square", "a yellow triangle", "a green circle"]


def add_parser(subparsers):
    """Register ``demo`` on an argparse subparsers object; returns its parser."""
    demo = subparsers.add_parser("demo", help="offline demo: the shipped shapes CLIP on the moving-shapes video",
                                 description="Runs with no network: the small CLIP trained on synthetic shapes "
                                             "(data/shapes_clip.pt) explains data/shapes_demo.avi: scores and "
                                             "Grad-ECLIP overlays of the middle frame, then every frame as MP4, GIF "
                                             "and timeline.")
    demo.add_argument("--out", "-o", default="outputs/demo", metavar="DIR", help="output folder (default: outputs/demo)")
    demo.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    add_input_options(demo)
    return demo


def run(args) -> int:
    """Run ``demo`` for parsed ``args`` (with ``args.progress``, the CLI's ``interrupts.Progress``); returns 0."""
    output_folder(args.out)
    check_input_options(args)
    from .eval.evaluate import shapes_model, shapes_video
    from .explain import explain
    from .viz.figures import format_scores
    from .io.frames import read_frames, video_info
    from .backbones.model import load_clip
    from .io.stream import select_indices
    from .video import explain_video
    from .viz.export import export_frame, export_video, frame_files, video_files

    progress = args.progress
    progress.begin("loading the shapes model")
    model, _ = load_clip(shapes_model(), device=args.device)
    video = shapes_video()
    info = video_info(video)
    index = info.num_frames // 2  # input: the model's own default (its size: "model"), unless --input says
    progress.begin(f"explaining frame {index}")
    result = explain(model, read_frames(video, [index]), DEMO_PROMPTS, input=args.input, scale=args.scale)
    print(f"{Path(video).name}, frame {index} of {info.num_frames}; model {Path(shapes_model()).name} (offline)")
    print(f"{result.view.label()}")
    print(format_scores(result.prompts, result.cosine[0], result.probs[0]))
    progress.begin(f"writing the files of frame {index}", expected=frame_files("demo_frame", args.out))
    paths = export_frame(result, "demo_frame", args.out, title=f"shapes CLIP · frame {index}",
                         meta={"model": shapes_model(), "video": video, "frame_index": index,
                               "input": result.view.as_json()},
                         written=progress.written)
    progress.finish(f"frame {index}")
    bar = frames_bar(len(select_indices(info.num_frames)), f"{Path(video).name} (grad_eclip)")
    progress.begin(f"explaining every frame of {Path(video).name}", bar=bar)
    whole = explain_video(model, video, DEMO_PROMPTS, input=args.input, scale=args.scale, model_name=shapes_model(),
                          progress=bar)
    bar.close()
    progress.begin(f"writing the files of {Path(video).name}",
                   expected=video_files("demo_video", args.out, timeline="demo_timeline"))
    paths += export_video(whole, "demo_video", args.out, timeline="demo_timeline", written=progress.written)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
