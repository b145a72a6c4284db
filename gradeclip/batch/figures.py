"""The figures of a batch run, rebuilt from the per-video records at the end of every run (a resumed one too).

Per group column (``--group-by`` named group or manifest column), over the videos included in the group statistics:

* ``mean_maps_<column>.png``: each prompt's mean map in normalised frame coordinates, drawn at the frames' aspect,
  one colour scale per prompt, n videos and frames in each panel title;
* with masks, ``aligned_maps_<column>.png``: the silhouette-aligned mean maps beside the mean silhouettes
  (``aligned``);
* with masks, ``galleries/gallery_<column>-<value>_<method>_<prompt>.png``: the ``k`` frames with the lowest and
  the ``k`` with the highest energy in the mask (``viz.gallery``), and ``galleries/gallery_<column>.csv`` listing
  them.

``figures.json`` lists the files this step wrote; files of an earlier run's list (or named by these patterns) that
this run does not write again (a grouping no longer asked for) are removed, and nothing else is.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List


from ..files import atomic_path, write_json
from .aligned import RecordMaps, cached_aligned, group_aligned, plot_aligned, share_values
from .summary import included

MANIFEST = "figures.json"
PATTERNS = ("mean_maps_*.png", "aligned_maps_*.png", "galleries/gallery_*.png", "galleries/gallery_*.csv")


def _records(out: Path, rows: List[dict], prompt: str, include_partial: bool) -> Dict[str, dict]:
    """id -> record.json of the included videos (one per video: the rows of ``prompt``)."""
    found = {}
    for row in rows:
        if row["prompt"] == prompt and included(row["status"], include_partial):
            found[row["id"]] = json.loads((Path(out) / "videos" / row["id"] / "record.json").read_text())
    return found


def add_band_shares(out: Path, rows: List[dict], prompts: List[str]) -> List[dict]:
    """Add ``head_share``, ``torso_share``, ``legs_share`` (``aligned``) to the summary rows of videos with masks
    (NaN for the others, and for failed videos); returns ``rows``."""
    cache: Dict[str, object] = {}
    for row in rows:
        if row.get("masks") is None:
            continue
        if row["id"] not in cache:
            path = Path(out) / "videos" / row["id"] / "record.json"
            cache[row["id"]] = cached_aligned(out, json.loads(path.read_text())) if path.is_file() else None
        row.update(share_values(cache[row["id"]], prompts.index(row["prompt"])))
    return rows


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        fig.savefig(temp, dpi=150, bbox_inches="tight", format=path.suffix[1:])
    plt.close(fig)
    return path


def _safe(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")[:60] or "_"


def write_figures(out: Path, rows: List[dict], columns: list, prompts: List[str], method: str,
                  include_partial: bool = False, k: int = 6) -> List[Path]:
    """Write every figure of the run (see the module docstring) and ``figures.json``; remove the figures of the
    earlier list not written now. ``columns``: group column names, or tuples of names for their cross (cells
    ``bg × 090``, files ``..._condition_view...``). Returns the paths written."""
    from ..eval.annotations import write_csv
    from ..viz.gallery import gallery_csv_rows
    from .mean_maps import group_mean_maps, plot_group_maps

    out = Path(out)
    records = _records(out, rows, prompts[0], include_partial)
    written: List[Path] = []
    for entry in columns:
        names = [entry] if isinstance(entry, str) else list(entry)
        column = " × ".join(names)
        members: Dict[str, List[str]] = {}
        for row in rows:
            if row["prompt"] == prompts[0] and row["id"] in records and all(n in row for n in names):
                members.setdefault(" × ".join(str(row[n]) for n in names), []).append(row["id"])
        if not members:
            continue
        members = dict(sorted(members.items()))
        means = group_mean_maps(out, members, records)
        written.append(_save(plot_group_maps(means, prompts, column), out / f"mean_maps_{_safe(column)}.png"))
        masked = {value: [i for i in ids if records[i].get("masks")] for value, ids in members.items()}
        aligned = {value: group_aligned([cached_aligned(out, records[i]) for i in ids])
                   for value, ids in masked.items()}
        aligned = {value: found for value, found in aligned.items() if found is not None}
        if aligned:
            written.append(_save(plot_aligned(aligned, prompts, column), out / f"aligned_maps_{_safe(column)}.png"))
        listing = []
        for value, ids in masked.items():
            for j, prompt in enumerate(prompts):
                found = _gallery(out, ids, records, prompt, method, k,
                                 f"{column} = {value} · {method} · “{prompt}” · lowest / highest energy in mask")
                if found is None:
                    continue
                fig, lowest, highest = found
                name = f"gallery_{_safe(column)}-{_safe(value)}_{_safe(method)}_{_safe(prompt)}.png"
                written.append(_save(fig, out / "galleries" / name))
                listing += gallery_csv_rows(lowest, highest, group=column, value=value, method=method, prompt=prompt,
                                            figure=name)
        if listing:
            path = out / "galleries" / f"gallery_{_safe(column)}.csv"
            with atomic_path(path) as temp:
                write_csv(listing, temp)
            written.append(path)
    _forget_stale(out, written)
    return written


def _gallery(out: Path, ids: List[str], records: Dict[str, dict], prompt: str, method: str, k: int, title: str):
    """``(figure, lowest, highest)`` over the annotated frames of videos ``ids`` for ``prompt``; None without any."""
    import csv

    from ..io.frames import read_frames
    from ..viz.gallery import extremes, plot_gallery

    rows = []
    for vid in ids:
        path = out / "videos" / vid / "frames.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            rows += [{**r, "video": vid} for r in csv.DictReader(f) if r["prompt"] == prompt and r["method"] == method]
    if not rows:
        return None
    lowest, highest = extremes(rows, k)
    chosen = {(r["video"], int(r["frame"])) for r in lowest + highest}
    drawn: Dict[tuple, dict] = {}
    for vid in sorted({v for v, _ in chosen}):
        maps = RecordMaps(out / "videos" / vid, records[vid])
        frames = sorted(f for v, f in chosen if v == vid)
        images = read_frames(records[vid]["path"], frames)  # frame-exact: the frames the maps were made on
        where = {int(i): n for n, i in enumerate(maps.indices.tolist())}
        j = maps.prompts.index(prompt)
        for frame, image in zip(frames, images):
            drawn[(vid, frame)] = {"image": image, "map": maps.map(where[frame])[j], "mask": maps.mask(frame)}
    lowest = [{**r, **drawn[(r["video"], int(r["frame"]))]} for r in lowest]
    highest = [{**r, **drawn[(r["video"], int(r["frame"]))]} for r in highest]
    return plot_gallery(lowest, highest, title), lowest, highest


def _forget_stale(out: Path, written: List[Path]) -> None:
    """Remove the files listed in the earlier ``figures.json``, or named by this step's patterns (``PATTERNS``, for
    folders of runs made before the list existed), that were not written now; write the new list."""
    manifest = out / MANIFEST
    now = sorted({p.relative_to(out).as_posix() for p in written})
    before = json.loads(manifest.read_text()).get("files", []) if manifest.is_file() else []
    before += [p.relative_to(out).as_posix() for pattern in PATTERNS for p in out.glob(pattern)]
    for name in sorted(set(before) - set(now)):
        path = out / name
        if ".." not in Path(name).parts and path.is_file():
            path.unlink()
    write_json(manifest, {"files": now})
