"""Where a batch video's masks are: found by one of three rules, or said not found (with the places looked at).

Rules, for a video found under an input folder at ``a/b/NAME.avi`` and ``--masks-root ROOT``:

* mirror: ``ROOT/a/b/NAME`` (a folder of mask images, or a mask video ``ROOT/a/b/NAME.<video suffix>``);
* CASIA-B: a name ``SUBJECT-COND-SEQ-VIEW`` (e.g. ``001-bg-01-090``) has its silhouettes in
  ``ROOT/SUBJECT/COND-SEQ/VIEW/`` (``SILHOUETTES/001/bg-01/090/001-bg-01-090-001.png``);
* template (``--masks-template``, replaces the two above): ``ROOT/<template>`` with ``{field}`` filled from the
  named groups of ``--group-by``, the manifest's columns, ``{stem}`` (the file name without suffix) and ``{rel}``
  (the path under the input folder without suffix), e.g. ``"{subject}/{condition}-{seq}/{view}"``.

A manifest's own ``masks`` column wins over all of them.
"""
from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..io.frames import VIDEO_SUFFIXES

CASIA_NAME = re.compile(r"^(?P<subject>[^-/]+)-(?P<condition>[^-/]+)-(?P<seq>[^-/]+)-(?P<view>[^-/]+)$")
BUILT_IN_FIELDS = ("stem", "rel")


def template_fields(template: str) -> List[str]:
    """The ``{field}`` names of ``template``; ValueError (one line) for a malformed template."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"--masks-template {template!r} is not a valid template: {err}") from None
    if any(not name.isidentifier() for name in names):
        raise ValueError(f"--masks-template {template!r}: fields are plain names in braces, e.g. {{subject}}")
    return names


def check_template(template: str, known: List[str]) -> None:
    """Refuse (ValueError, one line) a template naming a field that no ``--group-by`` group or built-in gives."""
    allowed = list(dict.fromkeys([*known, *BUILT_IN_FIELDS]))
    unknown = [n for n in template_fields(template) if n not in allowed]
    if unknown:
        raise ValueError(f"--masks-template names {', '.join(unknown)}, not a --group-by group nor a built-in; "
                         f"allowed: {', '.join(allowed)}")


def _existing(candidate: Path) -> Optional[Path]:
    """``candidate`` as a folder, or as a mask video with a video suffix; None if neither exists."""
    if candidate.is_dir():
        return candidate
    for suffix in VIDEO_SUFFIXES:
        video = candidate.with_name(candidate.name + suffix)
        if video.is_file():
            return video
    return None


def locate_masks(rel: Path, masks_root, fields: Dict[str, str], template: Optional[str] = None
                 ) -> Tuple[Optional[str], List[str]]:
    """``(masks path or None, places looked at)`` for the video at ``rel`` (its path under its input folder, with
    suffix). ``fields``: the video's group values (regex groups, manifest columns). Paths are absolute."""
    root = Path(masks_root).resolve()
    stem = rel.name[:-len(rel.suffix)] if rel.suffix else rel.name
    values = {**fields, "stem": stem, "rel": rel.with_suffix("").as_posix()}
    if template is not None:
        missing = [n for n in template_fields(template) if n not in values]
        if missing:
            return None, [f"{root}/{template} (no {', '.join(missing)} in this video's path)"]
        candidates = [root / template.format(**values)]
    else:
        candidates = [root / rel.with_suffix("")]
        casia = CASIA_NAME.match(stem)
        if casia:
            g = casia.groupdict()
            candidates.append(root / g["subject"] / f"{g['condition']}-{g['seq']}" / g["view"])
    for candidate in candidates:
        found = _existing(candidate)
        if found is not None:
            return str(found), []
    return None, [str(c) for c in candidates]
