"""Frame-exact reading through PyAV (FFmpeg's own decoders): frame i is FFmpeg's i-th decoded frame.

Random access seeks to the keyframe at or before the frame's presentation timestamp and decodes forward to it;
wanted frames are sorted and grouped by keyframe, each group decoded in one forward run, so a read never decodes
more than one sequential pass of the file. Frames decoded from packets before the first keyframe after a seek are
dropped (an open GOP's leading B-frames are not decodable there). Files whose timestamps the index could not
verify are read by counting frames from a keyframe whose frame index the index recorded, or else by one forward
decode from the start.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterator, Optional, Tuple, Union

import numpy as np

from .index import SKIPS_NONREF, FrameIndex, open_container, packets_to_decode, shape_after
_RETRIES = 3  # earlier keyframes tried (then the start) when a seek lands late or on a damaged keyframe


def to_rgb(frame, rotation: int = 0, max_side: Optional[int] = None) -> np.ndarray:
    """A PyAV VideoFrame as (H, W, 3) uint8 RGB, as FFmpeg displays it (rotation applied), reduced so that its
    longer side is at most ``max_side`` (area interpolation, in the same pass as the colour conversion). An
    interlaced frame is converted by FFmpeg's scale filter, which upsamples its chroma field by field as the
    ``ffmpeg`` command does (a plain conversion mixes the two fields' colours: up to 185 levels off)."""
    width, height = shape_after(frame.width, frame.height, max_side)
    if frame.interlaced_frame:
        rgb = _filtered_rgb(frame, width, height)
    elif (width, height) != (frame.width, frame.height):
        rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    else:
        rgb = frame.to_ndarray(format="rgb24")
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, rotation // 90))  # FFmpeg's angle is counter-clockwise
    return rgb


def _filtered_rgb(frame, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB of ``frame`` through a buffer -> scale -> rgb24 filter graph."""
    import av

    graph = av.filter.Graph()
    source = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                              time_base=frame.time_base or Fraction(1, 1000))
    size = f"{width}:{height}" + (":flags=area" if (width, height) != (frame.width, frame.height) else "")
    chain = [source, graph.add("scale", size), graph.add("format", "rgb24"), graph.add("buffersink")]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    graph.push(frame)
    return graph.pull().to_ndarray()


class PyAVVideo:
    """Reader over one file's ``FrameIndex``: ``num_frames``, ``fps`` (average), ``times`` (N,) seconds,
    ``width``/``height`` (as displayed), ``declared_frames``, ``scan`` and ``read``. ``concealed``: indices of the
    frames scanned so far that FFmpeg decoded only by concealing damage (flagged corrupt): their pictures are
    FFmpeg's, but not the file's data."""

    backend = "pyav"

    def __init__(self, index: FrameIndex, max_side: Optional[int] = None):
        self.index, self.path, self.max_side = index, index.path, max_side
        self.num_frames, self.fps, self.times = index.num_frames, index.avg_fps, index.times
        self.width, self.height = index.width, index.height
        self.declared_frames = index.declared
        self.concealed = set()  # indices of frames read so far that FFmpeg decoded with errors concealed

    def scan(self, wanted: np.ndarray) -> Iterator[Tuple[int, Union[np.ndarray, ValueError]]]:
        """``(index, frame)`` for each of the sorted unique ``wanted`` indices, in order, or ``(index,
        ValueError)`` for a frame that does not decode."""
        container, stream = open_container(self.path)
        try:
            if self.index.mode == "sequential":
                yield from self._counted(container, stream, wanted)
                return
            keys = self.index.keys
            targets = self.index.pts[wanted]
            group = np.searchsorted(keys, targets, side="right") - 1  # keyframe at or before each target
            start = 0
            while start < len(wanted):
                stop = start + int(np.sum(group[start:] == group[start]))
                yield from self._group(container, stream, wanted[start:stop], targets[start:stop],
                                       int(group[start]))
                start = stop
        finally:
            container.close()

    def _group(self, container, stream, indices, targets, key_pos: int):
        # Start at the keyframe at or before the first target. Step back one keyframe when the seek landed after
        # the target, or when the starting keyframe is damaged: FFmpeg conceals a damaged frame with the pictures
        # before it, so its result depends on what was decoded earlier; from the very start nothing does.
        pos, found = key_pos, {}
        while True:
            if pos < 0:
                container.seek(0, backward=True, any_frame=False)  # the very start, in AV_TIME_BASE
            else:
                container.seek(int(self.index.keys[pos]), stream=stream, backward=True, any_frame=False)
            status, found = self._decode_to(container, stream, targets, strict=pos >= 0)
            stream.codec_context.skip_frame = "DEFAULT"
            if status == "ok" or pos < 0:
                break
            pos = pos - 1 if key_pos - pos < _RETRIES else -1
        for index, pts in zip(indices.tolist(), targets.tolist()):
            if pts in found.get("concealed", ()):
                self.concealed.add(index)
            yield index, found[pts] if pts in found else self._failure(index, found.get("error"))

    def _decode_to(self, container, stream, targets, strict: bool):
        """Decode forward from the current seek position: ``("ok", {pts: frame, "error": last decoder error})``
        for the targets that came out, or ``("late", ...)``/``("damaged", ...)`` (with ``strict``) when the seek
        landed after the first target or the first keyframe does not decode cleanly."""
        pending, found, floor, started = targets.tolist(), {}, None, False
        wanted, context = set(pending), stream.codec_context
        skip = self.index.codec in SKIPS_NONREF
        if not strict:  # from the very start: every frame FFmpeg outputs counts, as in its sequential decode
            floor, started = float("-inf"), True
        for packet in packets_to_decode(container, stream):
            if skip:  # a frame that is neither wanted nor a reference for others need not be decoded at all
                context.skip_frame = "DEFAULT" if packet.pts in wanted or packet.pts is None else "NONREF"
            if floor is None:
                if packet.size and not packet.is_keyframe:
                    continue  # nothing before the first keyframe decodes correctly
                if packet.size:
                    floor = packet.pts
                    if strict and (floor is None or floor > pending[0]):
                        return "late", found
            try:
                frames = packet.decode()
            except Exception as err:  # damaged data: this packet's frame is missing, decoding goes on
                if strict and not started:
                    return "damaged", found
                found["error"] = err
                continue
            for frame in frames:
                if frame.pts is None or floor is None or frame.pts < floor:
                    continue
                if not started:
                    started = True
                    if strict and frame.is_corrupt:
                        return "damaged", found
                while pending and pending[0] < frame.pts:  # passed without coming out: it did not decode
                    pending.pop(0)
                if pending and pending[0] == frame.pts:
                    if frame.is_corrupt:
                        found.setdefault("concealed", set()).add(frame.pts)
                    found[pending.pop(0)] = to_rgb(frame, self.index.rotation, self.max_side)
                if not pending:
                    return "ok", found
        return "ok", found

    def _counted(self, container, stream, wanted):
        """Sequential-mode files: seek to the keyframe before each group of wanted frames and count the frames
        from its picture (whose index the index's full decode recorded); decode from the start where the index has
        no such anchors, where the seek lands on another keyframe, or where the counting cannot be checked."""
        anchors = self.index.key_frames
        if not len(anchors):
            yield from self._forward(container, stream, wanted)
            return
        group = np.maximum(np.searchsorted(anchors, wanted, side="right") - 1, 0)
        start = 0
        while start < len(wanted):
            stop = start + int(np.sum(group[start:] == group[start]))
            done = self._from_anchor(container, stream, wanted[start:stop], int(group[start]))
            if done is None:  # the seek cannot be trusted here: one forward decode for the rest
                container.seek(0, backward=True, any_frame=False)
                stream.codec_context.flush_buffers()
                yield from self._forward(container, stream, wanted[start:])
                return
            yield from done
            start = stop

    def _from_anchor(self, container, stream, indices, j: int):
        """``[(index, frame or ValueError)]`` for ``indices`` counted from keyframe ``j``'s picture, or None when
        the seek landed on another keyframe or no keyframe picture came out first."""
        key_pts, n = int(self.index.keys[j]), int(self.index.key_frames[j])
        container.seek(key_pts, stream=stream, backward=True, any_frame=False)
        wanted, last, out, started = set(indices.tolist()), int(indices[-1]), {}, False
        first = True
        for packet in packets_to_decode(container, stream):
            if first and packet.size:
                if not packet.is_keyframe or packet.pts != key_pts:
                    return None
                first = False
            try:
                frames = packet.decode()
            except Exception:
                return None  # the index found no failing packet here; something else is read: do not guess
            for frame in frames:
                if not started:
                    if not frame.key_frame:
                        continue  # an open GOP's leading frames, decoded without their references
                    started = True
                if n in wanted:
                    out[n] = to_rgb(frame, self.index.rotation, self.max_side)
                    if frame.is_corrupt:
                        self.concealed.add(n)
                n += 1
                if n > last:
                    return [(i, out[i]) for i in indices.tolist()]
        return [(i, out[i] if i in out else self._failure(i, None)) for i in indices.tolist()]

    def _forward(self, container, stream, wanted):
        """Decode from the start, numbering frames as the index did (a packet that fails takes one slot)."""
        wanted_set, last, n = set(wanted.tolist()), int(wanted[-1]), 0
        error = None
        for packet in packets_to_decode(container, stream):
            try:
                frames = packet.decode()
            except Exception as err:
                error = err
                if n in wanted_set:
                    yield n, self._failure(n, err)
                    wanted_set.discard(n)
                n += 1
                if n > last:
                    return
                continue
            for frame in frames:
                if n in wanted_set:
                    if frame.is_corrupt:
                        self.concealed.add(n)
                    yield n, to_rgb(frame, self.index.rotation, self.max_side)
                    wanted_set.discard(n)
                n += 1
                if n > last:
                    return
        for index in sorted(wanted_set):
            yield index, self._failure(index, error)

    def _failure(self, index: int, error) -> ValueError:
        # FFmpeg's own words ("Invalid data found when processing input"), without the C function's name
        reason = getattr(error, "strerror", None) or (str(error).splitlines()[0][:120] if error else "")
        detail = f": {reason.rstrip('.').lower()}" if reason else ""
        return ValueError(f"{self.path}: frame {index} could not be decoded (FFmpeg produced no picture for it; "
                          f"the file is damaged there{detail})")

    def read(self, indices: np.ndarray) -> np.ndarray:
        unique = np.unique(indices)
        frames = []
        for _, frame in self.scan(unique):
            if isinstance(frame, ValueError):
                raise frame
            frames.append(frame)
        return np.stack(frames)[np.searchsorted(unique, indices)]

    def close(self):
        pass
