"""What a video file's header and packets say before anything is decoded: the frame count the container declares
(so that a damaged file, which decodes fewer, can be told from a complete one) and whether its keyframe groups are
open (leading pictures that reference the group before: decord's seek is not exact there). Used by ``index.py``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

_TAIL_SLACK = 1.5  # frames: a declared duration this far past the last frame held is rounding, not lost frames
# MPEG program and transport streams carry MPEG-1/2 or H.264 at the fixed rate their headers state: a gap of two
# or more frame slots between frames held is frames lost (a corrupt stretch destroys whole packets). Soft telecine's
# steps are at most 1.5 slots.
_FIXED_RATE_CONTAINERS = {"mpegts", "mpeg"}
_GAP = 1.9  # frame slots: a step at least this long between frames held in such a stream holds lost frames


def declared_count(stream, container, packets, discarded: int = 0) -> Optional[int]:
    """The frame count the container declares: its header's count (less the ``discarded`` packets an edit list
    hides); where it has none (MKV, WebM, TS, FLV, APNG), the frames it holds (``packets``: (pts, ...) of the
    packets shown) plus those its declared duration runs past the last of them at the average rate, when that is
    more than ``_TAIL_SLACK`` frames (declared durations are rounded, and demuxers differ on whether the file's
    duration counts from 0 or from its start: the earlier end is taken). None where it declares neither. Duration
    times rate alone would count a variable-rate file's gaps as frames (61 for a 40-frame MKV); frames lost between
    those held (B-frames stored after the last frame held) are not seen, so a truncated MKV declares at least its
    decoded count plus its lost tail. In MPEG-TS/PS, frames lost between those held are counted from the gaps in
    their timestamps at the rate the stream's headers state (a corrupt stretch in an H.264 TS: 37 held, 40
    declared)."""
    if stream.frames:
        return max(int(stream.frames) - discarded, 0)
    tb, rate = float(stream.time_base or 0), float(stream.average_rate or stream.guessed_rate or 0)
    shown = [p * tb for p, *_ in packets if p is not None]
    if not shown or not tb or rate <= 0:
        return None
    if stream.duration:
        end = (stream.duration + (stream.start_time or 0)) * tb
    elif container.duration:
        span, start = container.duration / 1_000_000, (container.start_time or 0) / 1_000_000  # AV_TIME_BASE
        end = min(span, start + span) if span > min(shown) else start + span
    else:
        return len(shown)
    missing = (end - (max(shown) + 1 / rate)) * rate  # frames declared after the last frame held
    return len(shown) + (int(round(missing)) if missing > _TAIL_SLACK else 0) + _gaps(stream, container, shown)


def _gaps(stream, container, shown) -> int:
    """Frames missing between the frames held (``shown``: seconds), in a fixed-rate MPEG-TS/PS stream; else 0."""
    nominal = float(stream.guessed_rate or 0)
    if nominal <= 0 or not set(container.format.name.split(",")) & _FIXED_RATE_CONTAINERS or len(shown) < 2:
        return 0
    steps = np.diff(np.sort(np.array(shown))) * nominal  # in frame slots
    return int(np.sum(np.round(steps[steps >= _GAP]) - 1))


def has_open_gop(demuxed) -> bool:
    """True when a keyframe is followed, in decode order, by a frame presented before it (before the next
    keyframe): an open GOP's leading pictures, which reference the previous group. ``demuxed``: (pts, keyframe,
    ...) tuples in decode order."""
    key_pts = None
    for pts, is_key, *_ in demuxed:
        if pts is None:
            continue
        if is_key:
            key_pts = pts
        elif key_pts is not None and pts < key_pts:
            return True
    return False
