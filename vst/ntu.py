"""NTU RGB+D / NTU RGB+D 120 file names, the dataset reader and the four protocol splits.

A clip is named SsssCcccPpppRrrrAaaa_rgb.avi (setup, camera, performer, replication, action).
The reader walks a folder of real NTU videos or of synthetic ones (same layout, plus attributes
and skeletons) and splits it by protocol exactly as the NTU papers define them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

NAME_RE = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")
VIDEO_SUFFIXES = ("_rgb.avi", "_rgb.mp4")

XSUB60_TRAIN = frozenset({1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38})
XSUB120_TRAIN = XSUB60_TRAIN | frozenset(
    {
        45,
        46,
        47,
        49,
        50,
        52,
        53,
        54,
        55,
        56,
        57,
        58,
        59,
        70,
        74,
        78,
        80,
        81,
        82,
        83,
        84,
        85,
        86,
        89,
        91,
        92,
        93,
        94,
        95,
        97,
        98,
        100,
        103,
    }
)
XVIEW_TRAIN_CAMERAS = frozenset({2, 3})

PROTOCOLS = {
    "xsub": "NTU60 cross-subject: training performers 1, 2, 4, 5, 8, 9, 13-19, 25, 27, 28, 31, 34, 35, 38",
    "xview": "NTU60 cross-view: cameras 2 and 3 train, camera 1 tests",
    "xsub120": "NTU120 cross-subject: the 53 training performers of the NTU120 paper",
    "xset120": "NTU120 cross-setup: even setup ids train, odd setup ids test",
}


class DatasetError(ValueError):
    """A dataset problem a user can fix: one clear line naming the file."""


@dataclass(frozen=True, order=True)
class ClipName:
    setup: int
    camera: int
    performer: int
    replication: int
    action: int

    @property
    def stem(self) -> str:
        return f"S{self.setup:03d}C{self.camera:03d}P{self.performer:03d}R{self.replication:03d}A{self.action:03d}"

    @classmethod
    def parse(cls, filename: str) -> ClipName:
        base = os.path.basename(filename)
        stem = base
        for suffix in VIDEO_SUFFIXES + (".skeleton", ".npz", ".json"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        m = NAME_RE.match(stem)
        if not m:
            raise DatasetError(
                f"{base}: not an NTU RGB+D clip name; expected SsssCcccPpppRrrrAaaa_rgb.avi, e.g. S001C002P003R002A013_rgb.avi"
            )
        return cls(*(int(g) for g in m.groups()))


def split_of(name: ClipName, protocol: str) -> str:
    """'train' or 'test' for one clip under one protocol."""
    if protocol == "xsub":
        return "train" if name.performer in XSUB60_TRAIN else "test"
    if protocol == "xview":
        return "train" if name.camera in XVIEW_TRAIN_CAMERAS else "test"
    if protocol == "xsub120":
        return "train" if name.performer in XSUB120_TRAIN else "test"
    if protocol == "xset120":
        return "train" if name.setup % 2 == 0 else "test"
    raise DatasetError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def performer_of(clip: str) -> str:
    """The group a clip belongs to in a performer hold-out: its performer ('P004') by the NTU clip
    name; a clip without one is a group of its own."""
    try:
        return f"P{ClipName.parse(clip).performer:03d}"
    except DatasetError:
        return clip


def held_out_performers(clips, share: float) -> set[str]:
    """The performers (`performer_of` groups) a hold-out of `share` keeps back from the clips
    named: every 1/share-th of them in id order, starting halfway into the first stride (20
    training performers, 0.15: the 4th, 11th and 18th); with fewer groups than that, a stable
    hash picks them, and never all of them (one performer: nothing to spare). Whole performers, so
    that what is held back is as new as a test performer. The VST's training (`train vst
    --hold-out`) and the language model's calibration use it."""
    import zlib

    if share <= 0:
        return set()
    people = sorted({performer_of(c) for c in clips})
    every = max(2, round(1 / share))
    if len(people) >= every:
        return set(people[every // 2 :: every])
    held = {p for p in people if zlib.crc32(p.encode()) % every == 0}
    return held if len(held) < len(people) else set()


@dataclass(frozen=True)
class ClipRecord:
    name: ClipName
    video: str
    attributes: dict | None  # synthetic clips only


def scan(root: str, strict: bool = True) -> list[ClipRecord]:
    """Every clip video under root (recursively), sorted by name. A video file whose name does not
    parse raises DatasetError naming it (strict) or is skipped (not strict)."""
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder not found: {root}")
    records = []
    for folder, _dirs, files in os.walk(root):
        for f in files:
            if not f.endswith(VIDEO_SUFFIXES) and not f.endswith((".avi", ".mp4")):
                continue
            if ".part" in f:
                continue
            try:
                name = ClipName.parse(f)
            except DatasetError:
                if strict:
                    raise
                continue
            attrs = None
            attr_path = os.path.join(root, "attributes", name.stem + ".json")
            if os.path.exists(attr_path):
                with open(attr_path) as fh:
                    attrs = json.load(fh)
            records.append(ClipRecord(name, os.path.join(folder, f), attrs))
    if not records:
        raise DatasetError(f"no NTU RGB+D clips (SsssCcccPpppRrrrAaaa_rgb.avi) under {root}")
    records.sort(key=lambda r: r.name)
    return records


def split(records: list[ClipRecord], protocol: str) -> dict[str, list[ClipRecord]]:
    out = {"train": [], "test": []}
    for r in records:
        out[split_of(r.name, protocol)].append(r)
    return out


def class_names(root: str) -> dict[int, str]:
    """Action id -> name: from dataset.json (synthetic) or the built-in table."""
    from vst.actions import ACTIONS

    names = {a.ntu_id: a.name for a in ACTIONS}
    meta = os.path.join(root, "dataset.json")
    if os.path.exists(meta):
        with open(meta) as f:
            names.update({c["id"]: c["name"] for c in json.load(f).get("classes", [])})
    return names
