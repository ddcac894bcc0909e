"""The prepared frame cache: every clip of a protocol decoded once, through the runtime's own
GStreamer conversion, into one memory-mappable uint8 file.

    CACHE/frames.u8     uint8 [total_frames, H, W, 3], clips back to back
    CACHE/index.json    conversion (size, fps, crop, conversion version), protocol, and per clip:
                        name, action, split, offset, frames, attributes (synthetic)

Because `streams.pipeline.Conversion` is the only preprocessing, a cached frame is bit-identical
to the frame the runtime's `Source` yields for the same file.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import numpy as np

from vst.ntu import PROTOCOLS, ClipName, DatasetError, class_names, scan, split_of

FORMAT_VERSION = 1
NTU60_MAX_SETUP = 17  # NTU RGB+D 60 is setups S001-S017; NTU120 adds S018-S032


def decode_clip(video: str, width: int, height: int, fps: int, crop: bool = True) -> np.ndarray:
    """All frames of one file through the runtime conversion: uint8 [N, H, W, 3]."""
    from streams.pipeline import Conversion
    from streams.source import Source

    src = Source(video, Conversion(width, height, fps, crop), stream_id=os.path.basename(video))
    with src:
        frames = [f.rgb for f in src.frames()]
    if not frames:
        raise DatasetError(f"{video}: decoded to zero frames")
    return np.stack(frames)


def _decode_job(args):
    video, w, h, fps, crop = args
    try:
        return decode_clip(video, w, h, fps, crop), None
    except Exception as exc:  # reported per clip, the rest of the cache is still built
        return None, str(exc)


def write_index(
    out: str,
    conversion: dict,
    protocol: str,
    data: str,
    clips: list[dict],
    classes: dict[int, str],
    failed: list[str] | None = None,
) -> None:
    """CACHE/index.json for frames already in CACHE/frames.u8 (clips back to back, in `clips` order);
    written last, so a cache without it is incomplete."""
    index = {
        "format_version": FORMAT_VERSION,
        "conversion": conversion,
        "protocol": protocol,
        "data": os.path.abspath(data),
        "total_frames": sum(c["frames"] for c in clips),
        "classes": {str(k): v for k, v in sorted(classes.items()) if k in {c["action"] for c in clips}},
        "clips": clips,
        "failed": failed or [],
    }
    with open(os.path.join(out, "index.json.tmp"), "w") as f:
        json.dump(index, f)
    os.replace(os.path.join(out, "index.json.tmp"), os.path.join(out, "index.json"))


@dataclass
class Cache:
    root: str
    index: dict
    frames: np.ndarray  # memmap uint8 [total, H, W, 3]

    @classmethod
    def open(cls, root: str) -> Cache:
        path = os.path.join(root, "index.json")
        if not os.path.exists(path):
            raise DatasetError(f"no prepared cache at {root}; run `lvlm-var data prepare --data DIR --out {root}`")
        with open(path) as f:
            index = json.load(f)
        if index.get("format_version") != FORMAT_VERSION:
            raise DatasetError(
                f"{root}: cache format {index.get('format_version')} is not {FORMAT_VERSION}; prepare it again"
            )
        c = index["conversion"]
        total = index["total_frames"]
        frames = np.memmap(os.path.join(root, "frames.u8"), np.uint8, "r", shape=(total, c["height"], c["width"], 3))
        return cls(root, index, frames)

    @property
    def clips(self) -> list[dict]:
        return self.index["clips"]

    def clip_frames(self, clip: dict) -> np.ndarray:
        return self.frames[clip["offset"] : clip["offset"] + clip["frames"]]

    def _skeleton_path(self, clip: dict) -> str | None:
        path = os.path.join(self.index.get("data", ""), "skeletons", clip["name"] + ".npz")
        return path if clip.get("attributes") and os.path.exists(path) else None

    def has_skeleton(self, clip: dict) -> bool:
        return self._skeleton_path(clip) is not None

    def skeleton(self, clip: dict, key: str) -> np.ndarray | None:
        """A synthetic clip's skeleton array (`joints2d`, `joints3d`, `joints_world`), or None."""
        path = self._skeleton_path(clip)
        return None if path is None else np.load(path)[key]

    @staticmethod
    def source_index(clip: dict, frames, length: int) -> np.ndarray:
        """Cached frame indices -> indices into a per-source-frame array of `length` (the skeleton),
        which may run at another frame rate than the cache."""
        return np.clip(np.round(np.asarray(frames) * length / clip["frames"]).astype(int), 0, length - 1)

    def split(self, name: str, protocol: str | None = None) -> list[dict]:
        protocol = protocol or self.index["protocol"]
        return [c for c in self.clips if split_of(ClipName.parse(c["name"]), protocol) == name]


def spread(clips: list[dict], n: int, seed: int = 0) -> list[dict]:
    """A seeded random subset of n items (clips, windows), in their original order (a stride over name-sorted
    clips would pick a few classes only: the action id varies fastest in NTU names)."""
    if len(clips) <= n:
        return list(clips)
    keep = np.sort(np.random.default_rng(seed).choice(len(clips), n, replace=False))
    return [clips[i] for i in keep]


def prepare(
    data: str,
    protocol: str,
    out: str,
    size: int = 112,
    fps: int = 15,
    crop: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Decode every clip the protocol uses into a cache at `out`; returns a summary."""
    from tqdm import tqdm

    from streams.pipeline import CONVERSION_VERSION

    if protocol not in PROTOCOLS:
        raise DatasetError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    records = scan(data)
    if protocol in ("xsub", "xview"):
        records = [r for r in records if r.name.setup <= NTU60_MAX_SETUP]
    os.makedirs(out, exist_ok=True)
    tmp_frames = os.path.join(out, "frames.u8.part")
    jobs = [(r.video, size, size, fps, crop) for r in records]
    clips, failed, offset = [], [], 0
    workers = workers or os.cpu_count() or 1
    t0 = time.monotonic()
    bar = tqdm(total=len(jobs), unit="clip", desc=f"prepare {protocol}", disable=not progress)
    with open(tmp_frames, "wb") as fh:

        def consume(rec, result):
            nonlocal offset
            arr, err = result
            bar.update()
            if err is not None:
                failed.append(err)
                return
            fh.write(arr.tobytes())
            clips.append(
                {
                    "name": rec.name.stem,
                    "action": rec.name.action,
                    "split": split_of(rec.name, protocol),
                    "offset": offset,
                    "frames": int(arr.shape[0]),
                    "video": os.path.relpath(rec.video, data),
                    "attributes": rec.attributes,
                }
            )
            offset += int(arr.shape[0])

        if workers == 1:
            for rec, job in zip(records, jobs):
                consume(rec, _decode_job(job))
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for rec, result in zip(records, pool.imap(_decode_job, jobs, chunksize=2)):
                    consume(rec, result)
    bar.close()
    if not clips:
        raise DatasetError(f"no clip of {data} could be decoded: {failed[0] if failed else 'none found'}")
    os.replace(tmp_frames, os.path.join(out, "frames.u8"))
    write_index(
        out,
        {"width": size, "height": size, "fps": fps, "crop": crop, "version": CONVERSION_VERSION},
        protocol,
        data,
        clips,
        class_names(data),
        failed,
    )
    return {
        "clips": len(clips),
        "failed": len(failed),
        "frames": offset,
        "bytes": offset * size * size * 3,
        "seconds": round(time.monotonic() - t0, 1),
    }
