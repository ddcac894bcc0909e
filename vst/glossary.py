"""The codebook glossary: what every code stands for.

For each code: how often it occurs, the classes it co-occurs with, its typical position within
a window, the motion attributes of the clips it occurs in (synthetic data), and a short gloss
generated from the skeleton frames it covers ("right hand above the head, moving sideways").
Written as RUN/glossary.json (machines; the language-model side initialises the action-token
embeddings from the gloss words) and RUN/glossary.md (people).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

import numpy as np

from vst.cache import Cache, spread
from vst.skeleton import J

PARTS = {
    "left hand": "hand_left",
    "right hand": "hand_right",
    "left foot": "foot_left",
    "right foot": "foot_right",
    "head": "head",
}
STILL_M = 0.03  # metres of movement over a segment below which a part counts as still


def _body_axes(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    left = frame[J["hip_left"]] - frame[J["hip_right"]]
    left[1] = 0.0
    left /= max(np.linalg.norm(left), 1e-6)
    forward = np.cross(left, [0.0, 1.0, 0.0])
    return left, forward


def _height_phrase(y: float, f: np.ndarray) -> str:
    if y > f[J["head"], 1] + 0.05:
        return "above the head"
    if y > f[J["neck"], 1] - 0.02:
        return "at head height"
    if y > f[J["spine_mid"], 1]:
        return "at chest height"
    if y > f[J["spine_base"], 1] - 0.1:
        return "at waist height"
    if y > f[J["knee_left"], 1] * 0.6:
        return "low"
    return "near the floor"


def _direction(d: np.ndarray, left: np.ndarray, forward: np.ndarray) -> str:
    comps = {"to the left": float(d @ left), "up": float(d[1]), "forward": float(d @ forward)}
    name, value = max(comps.items(), key=lambda kv: abs(kv[1]))
    if value >= 0:
        return name
    return {"to the left": "to the right", "up": "down", "forward": "backward"}[name]


def describe_segment(joints: np.ndarray) -> str:
    """A short gloss of a few skeleton frames [n, 25, 3] (world metres, y up)."""
    first, last = joints[0], joints[-1]
    left, forward = _body_axes(first)
    spine = last[J["spine_shoulder"]] - last[J["spine_base"]]
    tilt = np.degrees(np.arccos(np.clip(spine[1] / max(np.linalg.norm(spine), 1e-6), -1, 1)))
    pelvis_move = last[J["spine_base"]] - first[J["spine_base"]]
    leg = np.linalg.norm(first[J["hip_left"]] - first[J["knee_left"]]) + np.linalg.norm(
        first[J["knee_left"]] - first[J["ankle_left"]]
    )
    pelvis_height = last[J["spine_base"], 1] - min(last[J["ankle_left"], 1], last[J["ankle_right"], 1])
    if tilt > 55 and pelvis_height < 0.5 * leg:
        posture = "lying"
    elif tilt > 30:
        posture = "bent over"
    else:
        posture = "lowered" if pelvis_height < 0.75 * leg else "upright"
    moves = {}
    for part, joint in PARTS.items():
        rel = (last[J[joint]] - last[J["spine_base"]]) - (first[J[joint]] - first[J["spine_base"]])
        moves[part] = (float(np.linalg.norm(rel)), rel)
    moves["whole body"] = (float(np.linalg.norm(pelvis_move)) * 1.3, pelvis_move)
    part, (dist, d) = max(moves.items(), key=lambda kv: kv[1][0])
    if dist < STILL_M:
        raised = [
            (last[J[PARTS[h]], 1], h)
            for h in ("left hand", "right hand")
            if posture in ("upright", "lowered") and last[J[PARTS[h]], 1] > last[J["spine_mid"], 1]
        ]
        if raised:
            y, hand = max(raised)
            return f"{hand} {_height_phrase(float(y), last)}, held still"
        return f"body {posture}, still"
    if part == "whole body":
        return f"whole body {posture}, moving {_direction(d, left, forward)}"
    where = _height_phrase(float(last[J[PARTS[part]], 1]), last)
    return f"{part} {where}, moving {_direction(d, left, forward)}"


def _phase(action: tuple[int, int], lo: int, hi: int) -> str:
    a, b = action
    mid = (lo + hi) / 2
    return "before the action" if mid < a else "after the action" if mid > b else "during the action"


def load_glossary(run: str) -> dict | None:
    """RUN/glossary.json (`build_glossary`), or None when the run has none."""
    path = os.path.join(run, "glossary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def build_glossary(run: str, cache_dir: str, split: str = "train", max_clips: int = 400, progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    from vst.evaluate import check_cache
    from vst.model import load_checkpoint
    from vst.windows import action_frames, clip_input, clip_windows

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_checkpoint(run)
    cfg = model.cfg
    cache = Cache.open(cache_dir)
    check_cache(cache, cfg)
    clips = cache.clips if split == "all" else cache.split(split)
    clips = [c for c in clips if c["action"] in cfg.classes]
    clips = spread(clips, max_clips)
    names = cache.index.get("classes", {})
    stats = defaultdict(
        lambda: {
            "count": 0,
            "classes": Counter(),
            "positions": Counter(),
            "glosses": Counter(),
            "side": Counter(),
            "limb": Counter(),
            "phase": Counter(),
        }
    )
    for clip in tqdm(clips, desc="glossary", unit="clip", disable=not progress):
        out = clip_windows(model, clip_input(cfg, cache, clip))
        attrs = clip.get("attributes")
        skel = cache.skeleton(clip, "joints_world")
        action = action_frames(clip)
        for w, start in enumerate(out["starts"]):
            for t, code in enumerate(out["ids"][w].tolist()):
                s = stats[code]
                s["count"] += 1
                s["classes"][clip["action"]] += 1
                s["positions"][t] += 1
                lo = start + t * cfg.segment
                hi = min(lo + cfg.segment, clip["frames"]) - 1
                if attrs:
                    s["side"][attrs["side"]] += 1
                    s["limb"][attrs["limb"]] += 1
                    s["phase"][_phase(action, lo, hi)] += 1
                if skel is not None and hi > lo:
                    s["glosses"][
                        describe_segment(skel[cache.source_index(clip, np.arange(lo, hi + 1), len(skel))])
                    ] += 1
    total = sum(s["count"] for s in stats.values())
    codes = {}
    for code in sorted(stats):
        s = stats[code]
        n = s["count"]
        top = [[a, names.get(str(a), f"A{a:03d}"), round(k / n, 3)] for a, k in s["classes"].most_common(3)]
        gloss, gloss_n = s["glosses"].most_common(1)[0] if s["glosses"] else (f"mostly {top[0][1]}", top[0][2] * n)
        codes[str(code)] = {
            "count": n,
            "share": round(n / total, 5),
            "classes": top,
            "position_mean": round(sum(t * k for t, k in s["positions"].items()) / n, 2),
            "gloss": gloss,
            "gloss_share": round(gloss_n / n, 3),
            "attributes": {key: dict(s[key].most_common(3)) for key in ("side", "limb", "phase") if s[key]},
        }
    result = {
        "run": os.path.abspath(run),
        "K": cfg.K,
        "T": cfg.T,
        "clips": len(clips),
        "split": split,
        "codes_seen": len(codes),
        "codes": codes,
    }
    json_path = os.path.join(run, "glossary.json")
    md_path = os.path.join(run, "glossary.md")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    with open(md_path, "w") as f:
        f.write(
            f"# Codebook glossary\n\n{len(codes)} of {cfg.K} codes seen in {len(clips)} {split} clips "
            f"({total} tokens). Position: mean token index within a window (0..{cfg.T - 1}).\n\n"
        )
        f.write(
            "| code | share | gloss (share of its segments) | classes | position | phase |\n| --- | --- | --- | --- | --- | --- |\n"
        )
        for code, c in sorted(codes.items(), key=lambda kv: -kv[1]["count"]):
            cls = "; ".join(f"{name} {share:.0%}" for _, name, share in c["classes"])
            phase = ", ".join(f"{k} {v}" for k, v in c["attributes"].get("phase", {}).items())
            f.write(
                f"| act_{int(code):03d} | {c['share']:.2%} | {c['gloss']} ({c['gloss_share']:.0%}) | {cls} | "
                f"{c['position_mean']:.1f} | {phase} |\n"
            )
    return {"codes_seen": len(codes), "json": json_path, "markdown": md_path}
