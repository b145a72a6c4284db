"""The saved progress of ``evaluate --shapes``: the scenes finished so far, so that an interrupted run resumes.

One JSON file in the output folder, ``shapes_scenes.json``: ``{"arguments": {...}, "scenes": [record, ...]}`` with
one ``evaluate.score_scene`` record per finished scene, in scene order. It is rewritten whole after every scene
through ``files.write_json`` (a temporary file renamed when complete), so a kill at any moment leaves either the
previous or the new version, never a broken file. A rerun with the same arguments continues after the last saved
scene; with other arguments it is refused unless ``overwrite`` starts over.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

from ..files import write_json

SCENES_FILE = "shapes_scenes.json"


class SceneLog:
    """The finished scenes of one ``evaluate --shapes`` run in folder ``out``, for ``arguments`` (a JSON-ready dict:
    model, n, methods, steps, seed). ``scenes``: the records loaded from an earlier run with equal arguments (empty
    for a new run). Raises ValueError (one line) when the folder holds a run with other arguments, unless
    ``overwrite``."""

    def __init__(self, out, arguments: dict, *, overwrite: bool = False):
        self.path = Path(out) / SCENES_FILE
        self.arguments = json.loads(json.dumps(arguments))  # as it reads back from the file
        self.scenes: List[dict] = []
        if self.path.is_file() and not overwrite:
            try:
                saved = json.loads(self.path.read_text())
                old, scenes = saved["arguments"], list(saved["scenes"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{self.path} is not a saved evaluate --shapes run ({err}); remove it or add "
                                 f"--overwrite") from None
            if old != self.arguments:
                diff = ", ".join(f"{k} {old.get(k)!r} there, {v!r} now" for k, v in self.arguments.items()
                                 if old.get(k) != v)
                raise ValueError(f"{self.path} holds {len(scenes)} scenes of a run with other arguments ({diff}); "
                                 f"rerun with the same arguments to resume, add --overwrite to start over, or "
                                 f"choose another --out")
            self.scenes = scenes

    def save(self, index: int, record: dict) -> None:
        """Add scene ``index``'s record (the scenes must arrive in order) and rewrite the file atomically."""
        if index != len(self.scenes):
            raise ValueError(f"scene {index} saved out of order: {len(self.scenes)} scenes are saved")
        self.scenes.append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"arguments": self.arguments, "scenes": self.scenes}, indent=None)
