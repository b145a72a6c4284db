"""Per-file frame index from a packet demux with PyAV: frame i is the i-th frame FFmpeg decodes, with its time.

The index lists every frame's presentation timestamp (from the container, in presentation order) and the
keyframes, so that a frame is found by seeking to the keyframe at or before it and decoding forward (see
``pyav.py``). Whether a file's timestamps can be trusted for that is *checked* by decoding its first keyframe
groups and its last one: where the decoder's frames do not come out with exactly the demuxed timestamps in order
(H.264 or packed-B-frame Xvid in AVI, where AVI stores decode-order times), the index is built from one full
sequential decode instead ("sequential" mode), which also records the frame index of each keyframe's picture, so
that reads can seek to a keyframe and count from there. Formats whose keyframe flags cannot be trusted (APNG, GIF:
a "keyframe" picture may be blended onto the one before it) are always read forward from the start.

Times are presentation times relative to the stream's first presented frame (edit lists applied: packets the
container marks as discarded are not frames), as ffprobe lists them minus the first; they are never negative.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from .structure import declared_count, has_open_gop

_HEAD_GROUPS = 2  # keyframe groups decoded at the start to check the timestamps
_HEAD_MAX = 16  # at most this many frames for that check: scrambled AVI timestamps show within a few frames
_PLACEHOLDER = 16  # bytes: a "keyframe" packet this small is a packed-B-frame placeholder, not a picture
_TAIL = 16  # frames at the end whose decoding is checked (a truncated file loses its last ones)
_CACHE = 8  # indices kept per process, keyed by path, inode, size and modification/change times
_FORWARD = {"apng", "gif"}  # keyframe flags not to be trusted: a seek there returns a picture blended on nothing
# decoders measured to return the same frames with non-reference frames skipped (AV_DISCARD_NONREF)
SKIPS_NONREF = {"h264", "hevc", "mpeg4"}
_cache: "OrderedDict[tuple, FrameIndex]" = OrderedDict()


@dataclass(frozen=True)
class FrameIndex:
    """Where each frame of a video is. ``pts`` (N,) int64 presentation timestamps in ``time_base`` units, in
    presentation order; ``times`` (N,) float64 seconds; ``keys`` (K,) int64 sorted pts of keyframes; ``mode``
    "seek" (pts verified, random access by seeking) or "sequential" (reads decode from the start); ``rotation``
    degrees counter-clockwise that FFmpeg applies for display (0, 90, 180, 270); ``width``/``height`` as displayed
    (after rotation); ``codec``/``container`` FFmpeg's names; ``failed``: in sequential mode, the slots of packets
    that did not decode (reported as failed frames, so that later frames keep their places); ``key_frames``: in
    sequential mode, the frame index of each keyframe packet's picture (``keys`` then holds those packets' pts in
    decode order), so that a read can seek to a keyframe and count frames from it; empty where that does not hold
    (reads then decode forward from the start); ``interlaced``: the first frame is interlaced; ``dropped``: empty
    packets with a timestamp (frames dropped by the encoder, which FFmpeg does not output); ``declared``: the frame
    count the container declares (see ``declared_count``), None where it declares none; ``open_gop``: some
    keyframe is followed in decode order by a frame shown before it (leading pictures that reference the previous
    group: decord's seek is not exact there).
    """

    path: str
    pts: np.ndarray
    times: np.ndarray
    keys: np.ndarray
    time_base: float
    mode: str
    rotation: int
    width: int
    height: int
    codec: str
    container: str
    avg_fps: float
    failed: frozenset = frozenset()
    key_frames: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    declared: Optional[int] = None
    open_gop: bool = False
    interlaced: bool = False
    dropped: int = 0

    @property
    def num_frames(self) -> int:
        return len(self.pts)


def _plain(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def open_container(path: str):
    """``(container, stream)`` of the first video stream, or ValueError in plain words."""
    import av

    try:
        container = av.open(path)
    except Exception as err:  # av.error.InvalidDataError and friends
        raise ValueError(f"{path} is not a decodable video (FFmpeg cannot open it: {_plain(err)})") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} is not a decodable video (it has no video stream)")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        name = (getattr(stream.codec, "name", None) or "its video codec").upper()
        container.close()
        raise ValueError(f"{path}: {name} is not supported by the installed decoders")
    stream.thread_type = "AUTO"  # frame threading: same frames, faster
    return container, stream


def packets_to_decode(container, stream):
    """The stream's packets as FFmpeg's own decode feeds them to the decoder: an empty packet that carries a
    timestamp (Theora's "same picture as before", a dropped frame) is left out, as the ``ffmpeg`` command does;
    sent to the decoder it would read as end of stream and fail the packets after it. The final empty packet
    without a timestamp, which drains the decoder, is kept."""
    for packet in container.demux(stream):
        if packet.size or packet.pts is None:
            yield packet


def _rotation(frame) -> int:
    try:
        angle = float(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        return 0
    return int(round(angle / 90.0)) % 4 * 90


def _decode_labels(container, stream, limit: Optional[int] = None, start: Optional[int] = None,
                   keep_from: Optional[int] = None, key_positions: Optional[list] = None):
    """pts of frames decoded in output order (from ``start`` pts by seeking, else from the beginning), at most
    ``limit``; the first frame's ``(rotation, interlaced)``; and the first keyframe pts demuxed after the seek. With
    ``keep_from``, only frames from that pts on are listed (non-reference frames before it are not decoded, where
    the decoder allows it). ``key_positions`` collects the output positions of frames the decoder marks as keyframes."""
    if start is not None:
        container.seek(int(start), stream=stream, backward=True, any_frame=False)
    labels, first, floor = [], None, None
    skip = keep_from is not None and stream.codec_context.name in SKIPS_NONREF
    for packet in packets_to_decode(container, stream):
        if packet.size and floor is None and packet.is_keyframe:
            floor = packet.pts
        early = keep_from is not None and packet.pts is not None and packet.pts < keep_from
        if skip:
            stream.codec_context.skip_frame = "NONREF" if early else "DEFAULT"
        try:
            frames = packet.decode()
        except Exception:  # a damaged packet: its frame is missing (None keeps its slot), the others still come
            if not early:
                labels.append(None)
            continue
        for frame in frames:
            if keep_from is not None and frame.pts is not None and frame.pts < keep_from:
                continue
            if first is None:
                first = (_rotation(frame), bool(frame.interlaced_frame))
            if key_positions is not None and frame.key_frame:
                key_positions.append(len(labels))
            labels.append(frame.pts)
            if limit is not None and len(labels) >= limit:
                return labels, first, floor
    return labels, first, floor


def build_index(path: str) -> FrameIndex:
    """The index of the video at ``path`` (cached per process while the file is unchanged). ValueError for a
    file FFmpeg cannot open or decode, naming the codec where the decoders lack it."""
    stat = os.stat(path)  # a file rewritten in place or replaced by a rename changes one of these
    key = (os.path.abspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    index = _build(path)
    _cache[key] = index
    while len(_cache) > _CACHE:
        _cache.popitem(last=False)
    return index


def _build(path: str) -> FrameIndex:
    container, stream = open_container(path)
    try:
        codec = stream.codec_context.name
        # (pts, keyframe, size) in decode order; packets an edit list marks as discarded are decoded (they may be
        # references) but never shown, so they are not frames
        demuxed, dropped = [], 0
        for p in container.demux(stream):
            if p.size:
                demuxed.append((p.pts, p.is_keyframe, p.size, p.is_discard))
            dropped += not p.size and p.pts is not None  # an empty packet: a dropped frame (Theora)
        packets = [(p, k, n) for p, k, n, discard in demuxed if not discard]
        tb = float(stream.time_base) if stream.time_base else 0.0
        pts = [p for p, _, _ in packets]
        trusted = bool(pts) and None not in pts and len(set(pts)) == len(pts) and bool(stream.time_base) \
            and codec not in _FORWARD
        order = np.sort(np.array(pts, dtype=np.int64)) if trusted else np.zeros(0, np.int64)
        keys = np.array(sorted(p for p, k, _, _ in demuxed if k and p is not None), dtype=np.int64)
        if not packets:
            raise ValueError(f"{path} contains no decodable frames (no video data)")
        declared = declared_count(stream, container, packets, len(demuxed) - len(packets))
        open_gop = has_open_gop(demuxed)
        container.close()
        container, stream = open_container(path)  # back to the start without a seek (not every file seeks)
        rotation, interlaced = 0, False
        if trusted and len(keys):
            head_end = keys[_HEAD_GROUPS] if len(keys) > _HEAD_GROUPS else None
            want = order[order < head_end] if head_end is not None else order
            want = want[:_HEAD_MAX]
            labels, first, _ = _decode_labels(container, stream, limit=len(want))
            rotation, interlaced = first or (0, False)
            trusted = labels == want.tolist()
        if trusted and len(keys):
            try:
                order = _check_tail(container, stream, order, keys)
            except Exception:  # the file does not seek: read it forward
                order = None
            trusted = order is not None
        if not trusted:  # one full decode: the frames that really come out, in output order
            container.close()
            container, stream = open_container(path)
            key_positions = []
            labels, first, _ = _decode_labels(container, stream, key_positions=key_positions)
            while labels and labels[-1] is None:  # nothing decodes after these: the file ends there
                labels.pop()
            rotation, interlaced = first or (0, False)
            order = np.arange(len(labels), dtype=np.int64)
            failed = frozenset(i for i, label in enumerate(labels) if label is None)
            times = _sequential_times(labels, pts, stream)
            keys, key_frames = _anchors(packets, key_positions, failed)
            if codec in _FORWARD:
                keys, key_frames = np.zeros(0, np.int64), np.zeros(0, np.int64)
        else:
            times = (order - order[0]).astype(np.float64) * tb if len(order) else np.zeros(0)
            failed, key_frames = frozenset(), np.zeros(0, np.int64)
        if not len(order):
            raise ValueError(f"{path} contains no decodable frames")
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        avg = float(stream.average_rate or stream.guessed_rate or 0)
        if len(times) > 1 and times[-1] > times[0]:
            avg = (len(times) - 1) / (times[-1] - times[0])
        return FrameIndex(path, order, times, keys, tb, "seek" if trusted else "sequential", rotation, width,
                          height, codec, container.format.name, avg, failed, key_frames, declared, open_gop,
                          interlaced, dropped)
    finally:
        container.close()


def _check_tail(container, stream, order: np.ndarray, keys: np.ndarray) -> Optional[np.ndarray]:
    """Decode the last keyframe group: the frames that come out must be the index's last ones, in order. Frames
    missing at the very end (a truncated file) are dropped from the index; anything else is distrusted (None). A
    seek that lands on an earlier keyframe is trusted (reads then decode one group more): FFmpeg's MP4 demuxer does
    that on files cut by stream copy, whose edit list shifts its seek by one group."""
    last_key = keys[-1]
    tail = order[order >= last_key][-_TAIL:]  # the last frames are checked; the others are decoded as needed
    labels, _, floor = _decode_labels(container, stream, start=last_key, keep_from=int(tail[0]))
    stream.codec_context.skip_frame = "DEFAULT"
    if floor is None or floor > last_key or labels != tail[:len(labels)].tolist():
        return None
    return order[: len(order) - (len(tail) - len(labels))]


def _anchors(packets, key_positions, failed) -> Tuple[np.ndarray, np.ndarray]:
    """For a file read in sequential mode: ``(keys, key_frames)``, the pts of each keyframe packet (decode order)
    and the frame index of its picture, when the decoder marked exactly one output frame per keyframe packet and
    nothing failed; else empty arrays (reads then decode from the start)."""
    # an Xvid/DivX AVI with packed B-frames has a few-byte placeholder packet after each keyframe's B-frames that
    # the AVI index also marks as a keyframe; it holds no picture
    key_pts = [p for p, is_key, size in packets if is_key and size >= _PLACEHOLDER]
    usable = not failed and key_pts and None not in key_pts and len(key_pts) == len(key_positions) \
        and all(a < b for a, b in zip(key_pts, key_pts[1:]))
    if not usable:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.array(key_pts, dtype=np.int64), np.array(key_positions, dtype=np.int64)


def _sequential_times(labels, pts, stream) -> np.ndarray:
    """Seconds of the frames a full decode gave (``labels``: their pts in output order, None for a frame that
    failed), relative to the first: the decoder's own timestamps where they rise through the file (frames that
    failed placed between their neighbours); else the sorted demuxed timestamps when there is one per frame (AVI,
    which stores decode-order times); else frame slots at the average rate."""
    tb, count = float(stream.time_base or 0), len(labels)
    known = np.array([i for i, label in enumerate(labels) if label is not None], dtype=np.int64)
    values = np.array([labels[i] for i in known], dtype=np.float64) * tb
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    if tb and len(known) and np.all(np.diff(values) > 0):
        slots = np.arange(count, dtype=np.float64)
        times = np.interp(slots, known, values)  # frames that failed: between their neighbours
        times[: known[0]] = values[0] - (known[0] - slots[: known[0]]) / rate
        times[known[-1] + 1:] = values[-1] + (slots[known[-1] + 1:] - known[-1]) / rate
        return times - times[0]
    clean = [p for p in pts if p is not None]
    if len(clean) == count and len(set(clean)) == count and tb:
        order = np.sort(np.array(clean, dtype=np.float64))
        return (order - order[0]) * tb
    return np.arange(count, dtype=np.float64) / rate


def fps_is_variable(times: np.ndarray) -> bool:
    """True when frame intervals differ by more than 1 ms (a variable frame rate)."""
    if len(times) < 3:
        return False
    steps = np.diff(times)
    return bool(steps.max() - steps.min() > 1e-3)


def shape_after(width: int, height: int, max_side: Optional[int]) -> Tuple[int, int]:
    """(width, height) scaled so that the longer side is at most ``max_side`` (aspect kept, even numbers not
    required), or unchanged."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))
