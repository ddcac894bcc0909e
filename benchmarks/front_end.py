"""`lvlm-var eval front-end`: a pose front-end VST on a protocol's synthetic test clips read as a
camera's video is read at run time: each clip's rendered frames through the pretrained pose
front end (`edge_runtime.pose`, ONNX Runtime, person tracks), the main person's joints into the
VST. `eval vst` reads the same clips' skeletons (with the views' noise left out); the gap between
the two is what the front end's error costs.
"""

from __future__ import annotations

import numpy as np


def front_end_inputs(
    cache, clips: list[dict], progress: bool = True, threads: int = 0, smoothing: bool = False
) -> list[np.ndarray]:
    """The main person's features [n, 75] of every clip's cached frames; a clip where nobody is
    found reads as nothing seen (all joints invisible at the origin)."""
    from tqdm import tqdm

    from edge_runtime.engines import OrtEngine
    from edge_runtime.pose import PoseFrontEnd, PoseSettings, clip_features
    from export.pose_assets import onnx_models
    from vst.joints import JOINT_NAMES, POSE_CHANNELS

    paths = onnx_models()
    front = PoseFrontEnd(
        OrtEngine(paths["detector"], threads=threads),
        OrtEngine(paths["landmarks"], threads=threads),
        PoseSettings(smoothing=smoothing),
    )
    out = []
    for clip in tqdm(clips, desc="pose front end", unit="clip", disable=not progress):
        f = clip_features(front, cache.clip_frames(clip))
        out.append(f if f is not None else np.zeros((clip["frames"], len(JOINT_NAMES) * POSE_CHANNELS), np.float32))
    return out


def eval_front_end(
    run: str,
    cache_dir: str,
    protocol: str | None,
    out: str | None = None,
    max_clips: int | None = 240,
    mirror: bool = False,
    progress: bool = True,
    smoothing: bool = False,
) -> dict:
    from vst.evaluate import run_eval
    from vst.model import load_checkpoint
    from vst.ntu import DatasetError

    if load_checkpoint(run).cfg.frontend != "pose":
        raise DatasetError(
            f"{run}: a VST of its own frame encoder reads frames, not the pose front end's joints; "
            "eval vst evaluates it"
        )
    return run_eval(
        run,
        cache_dir,
        protocol,
        out,
        progress=progress,
        mirror=mirror,
        max_clips=max_clips,
        inputs_of=lambda cache, clips: front_end_inputs(cache, clips, progress, smoothing=smoothing),
        reading="front-end",
    )
