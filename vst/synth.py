"""Synthetic actions in NTU RGB+D layout: articulated 25-joint performers seen by three cameras.

`lvlm-var data synth --out DIR` writes, for every (setup, camera, performer, replication, action):
  DIR/rgb/SsssCcccPpppRrrrAaaa_rgb.avi       H.264 video through GStreamer (what the runtime decodes)
  DIR/skeletons/SsssCcccPpppRrrrAaaa.npz     joints3d [N,25,3] (camera coordinates, metres),
                                             joints2d [N,25,2] (pixels), joints_world [N,25,3]
  DIR/attributes/SsssCcccPpppRrrrAaaa.json   motion attributes + reference explanation
  DIR/dataset.json                           generator settings and the class table

Like NTU, every performer does every action twice (R001 facing the camera at +45 degrees, R002
the one at -45), seen at once by cameras at 0 (C001), +45 (C002) and -45 (C003) degrees; setups
move the cameras (height, distance, zoom) and the room. Performers differ in proportions,
clothing, tempo, amplitude and handedness; clips in background details, lighting drift, sensor
noise, motion blur and occlusion. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from vst.actions import ACTIONS, ActionClass, explain, limb_phrase
from vst.ntu import ClipName
from vst.render import Camera, Canvas, Look, background, draw_person, shadow
from vst.skeleton import MOTIONS, Body, MotionContext, active_seconds, joints

CAMERA_AZIMUTHS = {1: 0.0, 2: 45.0, 3: -45.0}  # NTU: -45, 0, +45 degrees
REPLICATION_YAW = {1: 45.0, 2: -45.0}  # R001 faces camera 2, R002 camera 3 (NTU: left / right camera)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SynthConfig:
    classes: tuple[int, ...] = tuple(a.ntu_id for a in ACTIONS)
    performers: int = 40
    cameras: int = 3
    setups: int = 1
    reps: int = 2
    size: int = 112
    fps: int = 15
    seconds: float = 3.2  # typical clip length; actions longer than this make longer clips
    seed: int = 0
    ext: str = ".avi"

    def names(self) -> list[ClipName]:
        out = []
        for s in range(1, self.setups + 1):
            for c in range(1, self.cameras + 1):
                for p in range(1, self.performers + 1):
                    for r in range(1, self.reps + 1):
                        for a in self.classes:
                            out.append(ClipName(s, c, p, r, a))
        return out


def rng_for(seed: int, *key) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed,) + key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _colour(rng, sat=(0.3, 0.9), val=(0.25, 0.95)):
    h, s, v = rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)
    return tuple(255.0 * c for c in colorsys.hsv_to_rgb(h, s, v))


SKIN_TONES = ((255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 30))


@dataclass(frozen=True)
class Performer:
    body: Body
    look: Look
    tempo: float
    amplitude: float
    handedness: str


def performer(seed: int, pid: int) -> Performer:
    rng = rng_for(seed, "performer", pid)
    height = float(np.clip(rng.normal(1.70, 0.08), 1.5, 1.92))
    body = Body(
        height,
        float(0.22 * height * rng.uniform(0.92, 1.1)),
        float(0.14 * height * rng.uniform(0.9, 1.12)),
        float(rng.uniform(0.94, 1.06)),
    )
    shirt = _colour(rng)
    look = Look(
        skin=tuple(float(c) for c in SKIN_TONES[rng.integers(len(SKIN_TONES))]),
        shirt=shirt,
        pants=_colour(rng, (0.1, 0.7), (0.12, 0.6)),
        shoes=_colour(rng, (0.0, 0.5), (0.05, 0.5)),
        hair=_colour(rng, (0.2, 0.8), (0.05, 0.45)),
        long_sleeves=bool(rng.random() < 0.5),
    )
    return Performer(
        body,
        look,
        float(rng.uniform(0.78, 1.28)),
        float(rng.uniform(0.82, 1.15)),
        "right" if rng.random() < 0.85 else "left",
    )


def setup_camera(seed: int, setup: int, camera: int, size: int) -> Camera:
    rng = rng_for(seed, "setup", setup)
    height, distance, zoom = rng.uniform(0.9, 1.6), rng.uniform(2.7, 3.7), rng.uniform(0.92, 1.08)
    jitter = rng_for(seed, "camera", setup, camera).uniform(-5, 5)
    return Camera(CAMERA_AZIMUTHS[camera] + jitter, float(height), float(distance), size, float(zoom))


def setup_room(seed: int, setup: int) -> dict:
    rng = rng_for(seed, "room", setup)
    objects = [
        (
            rng.uniform(0, 0.85),
            rng.uniform(0.1, 0.7),
            rng.uniform(0.08, 0.3),
            rng.uniform(0.1, 0.5),
            np.asarray(_colour(rng), np.float32),
        )
        for _ in range(int(rng.integers(2, 5)))
    ]
    return {
        "wall": _colour(rng, (0.0, 0.35), (0.45, 0.95)),
        "floor": _colour(rng, (0.0, 0.4), (0.2, 0.6)),
        "objects": objects,
    }


@dataclass
class Clip:
    name: ClipName
    frames: np.ndarray  # [N, size, size, 3] uint8
    joints_world: np.ndarray  # [N, 25, 3]
    joints3d: np.ndarray  # [N, 25, 3] camera coordinates
    joints2d: np.ndarray  # [N, 25, 2]
    attributes: dict


def render_clip(cfg: SynthConfig, name: ClipName) -> Clip:
    action: ActionClass = next(a for a in ACTIONS if a.ntu_id == name.action)
    perf = performer(cfg.seed, name.performer)
    cam = setup_camera(cfg.seed, name.setup, name.camera, cfg.size)
    room = setup_room(cfg.seed, name.setup)
    # one draw of the clip's own variation, shared by the three cameras of the same take
    take = rng_for(cfg.seed, "take", name.setup, name.performer, name.replication, name.action)
    look_rng = rng_for(cfg.seed, "look", name.setup, name.camera, name.performer, name.replication, name.action)
    lo, hi = action.reps
    reps = int(take.integers(lo, hi + 1))
    side = perf.handedness if take.random() < 0.9 else ("left" if perf.handedness == "right" else "right")
    tempo = perf.tempo * take.uniform(0.92, 1.08)
    amp = perf.amplitude * take.uniform(0.92, 1.08)
    variant = str(take.choice(["back", "left", "right"])) if action.slug == "fall" else ""
    yaw = math.radians(REPLICATION_YAW[name.replication] + take.normal(0, 8))
    active = active_seconds(action.slug, reps, tempo)
    lead_in = take.uniform(0.15, 0.6)
    total = max(cfg.seconds * take.uniform(0.9, 1.1), active + lead_in + take.uniform(0.15, 0.5))
    n = int(round(total * cfg.fps))
    start, stop = lead_in * cfg.fps, (lead_in + active) * cfg.fps
    ctx = MotionContext(perf.body, side, reps, amp, variant)
    motion = MOTIONS[action.slug]
    offset = np.array([take.normal(0, 0.12), 0.0, take.normal(0, 0.12)])  # where on the floor the take happens

    base = background(look_rng, cam, room)
    light_amp, light_period, light_phase = look_rng.uniform(0, 0.18), look_rng.uniform(1.5, 6), look_rng.uniform(0, 6.3)
    tint = 1 + look_rng.normal(0, 0.04, 3).astype(np.float32)
    noise_sigma = look_rng.uniform(1.0, 6.0)
    blur = look_rng.uniform(0.2, 0.45) if look_rng.random() < 0.3 else 0.0
    occluder = None
    if look_rng.random() < 0.25:
        w = int(cfg.size * look_rng.uniform(0.12, 0.3))
        x0 = int(look_rng.choice([0, cfg.size - w]))
        h0 = int(cfg.size * look_rng.uniform(0.35, 0.7))
        occluder = (x0, w, cfg.size - h0, np.asarray(_colour(look_rng, (0.1, 0.6), (0.2, 0.7)), np.float32))

    frames = np.empty((n, cfg.size, cfg.size, 3), np.uint8)
    jw = np.empty((n, 25, 3), np.float32)
    j3 = np.empty((n, 25, 3), np.float32)
    j2 = np.empty((n, 25, 2), np.float32)
    prev = None
    for i in range(n):
        u = (i - start) / max(stop - start, 1e-6)
        pose = motion(min(max(u, 0.0), 1.0), ctx)
        pts = joints(perf.body, pose, yaw) + offset
        canvas = Canvas(base.copy())
        shadow(canvas, cam, pts, perf.body.height)
        uv = draw_person(canvas, cam, pts, perf.look, perf.body.height)
        img = canvas.img
        if occluder is not None:
            x0, w, y0, col = occluder
            img[y0:, x0 : x0 + w] = col
        img *= (1 + light_amp * math.sin(2 * math.pi * i / (cfg.fps * light_period) + light_phase)) * tint
        if blur and prev is not None:
            img = (1 - blur) * img + blur * prev
        prev = img
        img = img + look_rng.normal(0, noise_sigma, img.shape).astype(np.float32)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
        jw[i], j3[i], j2[i] = pts, cam.to_camera(pts), uv

    attributes = {
        "format_version": FORMAT_VERSION,
        "name": name.stem,
        "action_id": action.ntu_id,
        "action": action.name,
        "setup": name.setup,
        "camera": name.camera,
        "performer": name.performer,
        "replication": name.replication,
        "frames": n,
        "fps": cfg.fps,
        "size": cfg.size,
        "action_start_frame": int(round(start)),
        "action_end_frame": int(min(n, round(stop))),
        "side": side,
        "limb": limb_phrase(action, side),
        "motion": action.motion,
        "repetitions": reps,
        "variant": variant,
        "tempo": round(tempo, 3),
        "amplitude": round(amp, 3),
        "explanation": explain(action, side, reps),
        "camera_azimuth_deg": round(cam.azimuth_deg, 2),
        "camera_height_m": round(cam.height, 3),
        "camera_distance_m": round(cam.distance, 3),
        "performer_height_m": round(perf.body.height, 3),
        "occluded": occluder is not None,
        "motion_blur": round(float(blur), 3),
        "noise_sigma": round(float(noise_sigma), 2),
    }
    return Clip(name, frames, jw, j3, j2, attributes)


def write_clip(cfg: SynthConfig, out: str, name: ClipName) -> int:
    """Render and write one clip; returns its frame count. Skips clips already complete."""
    from streams.writer import VideoWriter

    video = os.path.join(out, "rgb", name.stem + "_rgb" + cfg.ext)
    attr_path = os.path.join(out, "attributes", name.stem + ".json")
    if os.path.exists(attr_path) and os.path.exists(video):
        with open(attr_path) as f:
            return json.load(f)["frames"]
    clip = render_clip(cfg, name)
    tmp = video + ".part" + cfg.ext
    with VideoWriter(tmp, cfg.size, cfg.size, cfg.fps) as w:
        for frame in clip.frames:
            w.write(frame)
    os.replace(tmp, video)
    np.savez_compressed(
        os.path.join(out, "skeletons", name.stem + ".npz"),
        joints_world=clip.joints_world,
        joints3d=clip.joints3d,
        joints2d=clip.joints2d,
    )
    with open(attr_path + ".tmp", "w") as f:
        json.dump(clip.attributes, f, indent=1)
    os.replace(attr_path + ".tmp", attr_path)  # written last: its presence marks the clip complete
    return len(clip.frames)


def _worker(args):
    cfg, out, name = args
    return write_clip(cfg, out, name)


def generate(cfg: SynthConfig, out: str, workers: int | None = None, progress: bool = True) -> dict:
    """Write the whole dataset (resuming a partial one); returns a summary with clips/s."""
    from tqdm import tqdm

    for sub in ("rgb", "skeletons", "attributes"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    meta_path = os.path.join(out, "dataset.json")
    meta = {
        "format_version": FORMAT_VERSION,
        "generator": "lvlm-var synth",
        "config": asdict(cfg),
        "classes": [
            {"id": a.ntu_id, "code": a.code, "name": a.name, "limb": a.limb, "motion": a.motion}
            for a in ACTIONS
            if a.ntu_id in cfg.classes
        ],
    }
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old.get("config") != json.loads(json.dumps(asdict(cfg))):
            raise ValueError(f"{out} holds a dataset made with other settings; choose another --out or delete it")
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    names = cfg.names()
    workers = workers or os.cpu_count() or 1
    t0 = time.monotonic()
    frames = 0
    jobs = [(cfg, out, n) for n in names]
    bar = tqdm(total=len(jobs), unit="clip", desc="synth", disable=not progress)
    if workers == 1:
        for job in jobs:
            frames += _worker(job)
            bar.update()
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for n in pool.imap_unordered(_worker, jobs, chunksize=4):
                frames += n
                bar.update()
    bar.close()
    dt = time.monotonic() - t0
    return {
        "clips": len(names),
        "frames": frames,
        "seconds": round(dt, 1),
        "clips_per_s": round(len(names) / max(dt, 1e-9), 2),
    }
