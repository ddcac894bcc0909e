"""`lvlm-var eval real`: a bundle on real videos of real people, read as the runtime reads them.

Each clip goes through the runtime's own pieces: GStreamer decode of the whole view (letterboxed
to the bundle's pose frame), the pose front end with its person tracks, the token engine every S
frames of a track, and the language model's label pooled with the head's as the LLM worker reads
it (llama.cpp on the bundle's GGUF). A clip's label is read from its main person, the track whose
joints move most (an action clip's actor; a bystander who sits still is another track):

    head    the mean of the VST head's label probabilities over the track's windows
    pooled  the label the worker gives most often over those windows (ties: the higher mean probability)

The manifest is a TSV with at least the columns `file` and `ntu_class_id` (`A043`; `none`: no
class of the table). Clips whose class the bundle lacks are reported, not scored. Writes
OUT/metrics.json (per clip, top-1, per class), OUT/confusion.png and OUT/contact_sheet.png
(the skeletons drawn on frames of each clip, to see that the pose follows the body).
"""

from __future__ import annotations

import csv
import json
import os
import time

import numpy as np

# BlazePose's limbs for drawing
EDGES = (
    (11, 12),
    (11, 13),
    (13, 15),
    (12, 14),
    (14, 16),
    (11, 23),
    (12, 24),
    (23, 24),
    (23, 25),
    (25, 27),
    (24, 26),
    (26, 28),
    (27, 31),
    (28, 32),
    (0, 11),
    (0, 12),
)
SHEET_FRAMES = 4


class RealClipsError(ValueError):
    """A missing folder or manifest, or a manifest without the needed columns: one line."""


def read_manifest(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise RealClipsError(f"{path}: no such manifest")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not {"file", "ntu_class_id"} <= set(rows[0]):
        raise RealClipsError(f"{path}: a TSV with the columns file and ntu_class_id is expected")
    return rows


def _main_track(windows: dict[int, list]) -> int | None:
    """The track whose joints move most over its windows (summed frame-to-frame joint motion)."""

    def motion(ws):
        return sum(float(np.abs(np.diff(w["features"][:, :, :2], axis=0)).sum()) for w in ws)

    return max(windows, key=lambda t: motion(windows[t])) if windows else None


def read_clip(path: str, manifest: dict, engines, mirror: bool, smoothing: bool = False) -> dict:
    """Every window of every person of one clip through the VST: {track: [window dict]}, the
    sampled frames and the people drawn on them, and the frame count. The language model reads
    the main person's windows only (`evaluate_real`)."""
    from edge_runtime.ingest import read_window
    from streams.pipeline import Conversion
    from streams.source import Source
    from vst.joints import mirror_pose

    v = manifest["vst"]
    W, S = v["W"], v["S"]
    width, height = manifest["pose"]["frame"]
    from edge_runtime.pose import PoseSettings

    front = engines.pose_front_end(PoseSettings(smoothing=smoothing, fps=v["fps"]))
    source = Source(path, Conversion(width=width, height=height, fps=v["fps"], crop=False), stream_id="clip")
    rings: dict[int, list] = {}
    windows: dict[int, list] = {}
    frames, people_seen = [], []
    with source:
        for frame in source.frames():
            people = front.process([("clip", frame.rgb)], [frame.pts_ns / 1e9])[0]
            frames.append(frame.rgb)
            people_seen.append([(p.track, p.landmarks, p.visibility) for p in people])
            for p in people:
                ring = rings.setdefault(p.track, [])
                ring.append(p.feature)
                if len(ring) >= W and (len(ring) - W) % S == 0:
                    feats = np.stack(ring[-W:])
                    out, probs = read_window(engines, feats, mirror_pose(feats) if mirror else None)
                    windows.setdefault(p.track, []).append(
                        {
                            "features": feats.reshape(W, -1, 3),
                            "probs": probs,
                            "ids": [int(x) for x in out["ids"][0]],
                            "count": int(out["count"][0]) if "count" in out else None,
                        }
                    )
    pick = np.linspace(0, len(frames) - 1, SHEET_FRAMES).astype(int) if frames else []
    return {
        "windows": windows,
        "frames": len(frames),
        "tracks": front.stream("clip").started,
        "sheet": [(frames[i], people_seen[i]) for i in pick],
    }


def contact_sheet(rows: list[tuple[str, list]], path: str) -> None:
    """One row per clip: SHEET_FRAMES frames with every tracked person's skeleton drawn on them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), SHEET_FRAMES, figsize=(2.4 * SHEET_FRAMES, 1.45 * len(rows)), squeeze=False)
    colours = ("lime", "orange", "cyan", "magenta")
    for (title, shots), row in zip(rows, axes):
        for k, ax in enumerate(row):
            ax.axis("off")
            if k >= len(shots):
                continue
            rgb, people = shots[k]
            ax.imshow(rgb)
            for track, lm, vis in people:
                c = colours[track % len(colours)]
                for i, j in EDGES:
                    if min(vis[i], vis[j]) > 0.3:
                        ax.plot([lm[i, 0], lm[j, 0]], [lm[i, 1], lm[j, 1]], "-", c=c, lw=1.0)
            if k == 0:
                ax.set_title(title, fontsize=6, loc="left")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def evaluate_real(
    bundle: str, clips_dir: str, manifest_path: str, out: str, progress: bool = True, smoothing: bool = False
) -> dict:
    from tqdm import tqdm

    from edge_runtime.config import Config
    from edge_runtime.engines import Engines
    from edge_runtime.ingest import head_mirror
    from export.bundle import BundleError, check_bundle
    from export.bundle import read_manifest as read_bundle
    from lvlm.reader import LlamaCppBackend, Reader
    from vst.evaluate import plot_confusion

    if not os.path.isdir(clips_dir):
        raise RealClipsError(f"{clips_dir}: no such folder of clips")
    rows = read_manifest(manifest_path)
    check_bundle(bundle)
    m = read_bundle(bundle)
    if m["vst"].get("frontend") != "pose":
        raise BundleError(
            f"{bundle}: real video needs a bundle of the pose front end (this one reads {m['vst']['resolution']} px "
            "frames with the own frame encoder)"
        )
    engines = Engines(bundle, m, "onnxruntime")
    mirror = head_mirror(Config(bundle=bundle), m)
    backend = LlamaCppBackend.open(os.path.join(bundle, m["lvlm"]["file"]), threads=os.cpu_count() or 1)
    reader = Reader.for_bundle(backend, m)
    labels = m["labels"]
    by_id = {f"A{c:03d}": labels[i] for i, c in enumerate(m["classes"])}
    os.makedirs(out, exist_ok=True)
    results, sheet = [], []
    t0 = time.monotonic()
    for row in tqdm(rows, desc="real clips", unit="clip", disable=not progress):
        path = os.path.join(clips_dir, row["file"])
        truth = by_id.get(row["ntu_class_id"])
        rec = {"file": row["file"], "class": row["ntu_class_id"], "truth": truth}
        try:
            got = read_clip(path, m, engines, mirror, smoothing)
        except Exception as exc:  # noqa: BLE001 - a clip that does not decode is reported, the others still run
            rec["error"] = str(exc).splitlines()[0]
            results.append(rec)
            continue
        track = _main_track(got["windows"])
        ws = got["windows"].get(track, [])
        rec.update(frames=got["frames"], tracks=got["tracks"], windows=len(ws))
        for w in ws:  # as the worker reads them: pooled with the head's probabilities
            r = reader.read(
                w["ids"], explain=False, exhaustive=False, count=w["count"], head=tuple(float(x) for x in w["probs"])
            )
            w["label"], w["probability"] = r.label, r.probability
        if ws:
            p = np.mean([w["probs"] for w in ws], 0)
            votes = {lab: [w["probability"] for w in ws if w["label"] == lab] for lab in {w["label"] for w in ws}}
            pooled = max(votes, key=lambda lab: (len(votes[lab]), float(np.mean(votes[lab]))))
            rec.update(
                head=labels[int(p.argmax())],
                head_probability=float(p.max()),
                pooled=pooled,
                pooled_share=len(votes[pooled]) / len(ws),
            )
        results.append(rec)
        sheet.append(
            (
                f"{row['file']} [{row['ntu_class_id']}] head: {rec.get('head', '-')}, pooled: {rec.get('pooled', '-')}",
                got["sheet"],
            )
        )
    backend.llm.close()
    scored = [r for r in results if r["truth"] is not None]
    metrics = {
        "bundle": os.path.abspath(bundle),
        "clips": len(results),
        "scored": len(scored),
        "seconds": round(time.monotonic() - t0, 1),
    }
    classes = sorted({r["truth"] for r in scored}, key=labels.index)
    for reading in ("head", "pooled"):
        right = [r.get(reading) == r["truth"] for r in scored]
        metrics[f"{reading}_top1"] = float(np.mean(right)) if right else None
        metrics[f"{reading}_per_class"] = {
            c: float(np.mean([r.get(reading) == c for r in scored if r["truth"] == c])) for c in classes
        }
    metrics["results"] = results
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    if scored:
        cm = np.zeros((len(labels), len(labels)), int)
        for r in scored:
            if r.get("pooled") in labels:
                cm[labels.index(r["truth"]), labels.index(r["pooled"])] += 1
        plot_confusion(
            cm,
            labels,
            os.path.join(out, "confusion.png"),
            f"real clips, pooled label: top-1 {metrics['pooled_top1']:.0%} of {len(scored)}",
        )
    if sheet:
        contact_sheet(sheet, os.path.join(out, "contact_sheet.png"))
    return metrics
