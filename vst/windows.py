"""Windows of frames from the prepared cache: random training windows with the augmentations that
matter for cameras, and the sliding windows the runtime sees (stride S) for evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vst.actions import action_span, window_attributes
from vst.cache import Cache
from vst.joints import JOINT_NAMES, MIRROR, J, mirror_pose
from vst.model import VSTConfig, joint_features

SIDES = ("left", "right")


@dataclass
class Augment:
    # side of the square window taken, as a share of the frame side: below 1 zooms in, above 1 zooms
    # out (the frame padded with its edge pixels), so people appear larger and smaller than recorded
    crop_scale: tuple[float, float] = (0.85, 1.2)
    speed: tuple[float, float] = (0.8, 1.25)  # temporal speed jitter
    brightness: float = 0.25
    contrast: float = 0.25
    channel_gain: float = 0.08
    flip: float = 0.5  # horizontal flip probability (swaps the limb side label)
    channel_shuffle: float = 0.3  # permute R, G, B: clothing colour must not be a cue
    grayscale: float = 0.1


def sliding_starts(n: int, cfg: VSTConfig) -> list[int]:
    """Window starts the runtime produces for n frames: every S frames once W are present
    (a clip shorter than W gives one window, padded with its last frame)."""
    if n <= cfg.W:
        return [0]
    return list(range(0, n - cfg.W + 1, cfg.S))


def pad_to(frames: np.ndarray, length: int) -> np.ndarray:
    if len(frames) >= length:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], length - len(frames), axis=0)])


def clip_targets(clip: dict, cfg: VSTConfig, window: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(class index, side index or -1, repetitions index or -1) of a cached clip. The side is a
    target only where the action's limb has one ("right hand", "left leg"): synthetic clips of
    two-sided or whole-body actions still record the performer's chosen side, which the motion
    does not show. With `window` (first and end frame of the clip as cached) the repetitions are
    those the window holds (`vst.actions.window_attributes`), the count its explanation states."""
    label = cfg.classes.index(clip["action"])
    attrs = clip.get("attributes") or {}
    sided = attrs.get("side") in SIDES and str(attrs.get("limb", "")).split(" ")[0] == attrs["side"]
    side = SIDES.index(attrs["side"]) if sided else -1
    if window is not None and attrs:
        attrs = window_attributes(attrs, window[0], window[1], clip["frames"])
    reps = int(attrs["repetitions"]) - 1 if attrs.get("repetitions") else -1
    return label, side, min(reps, cfg.max_reps - 1)


def augment_frames(frames: np.ndarray, rng: np.random.Generator, a: Augment, points: np.ndarray | None = None):
    """One random crop/scale, colour change and flip applied to a run of uint8 frames [L,R,R,3].
    Returns (frames, flipped) or, with `points` (normalised x, y in [0, 1], [..., 2]), also the
    points moved by the same crop and flip (left and right joints swapped on a flip)."""
    x = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float()  # L, 3, R, R
    r = x.shape[-1]
    side, top, left = crop_box(r, rng, a)
    if side <= r:
        x = x[:, :, top : top + side, left : left + side]
    else:  # zoom out: the window reaches past the frame, whose edge pixels fill the rest
        x = F.pad(x, (-left, side - r + left, -top, side - r + top), mode="replicate")
    if side != r:
        x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
    gain = torch.tensor(1 + rng.uniform(-a.channel_gain, a.channel_gain, 3), dtype=torch.float32).view(1, 3, 1, 1)
    mean = x.mean()
    x = (x - mean) * (1 + rng.uniform(-a.contrast, a.contrast)) + mean
    x = x * (1 + rng.uniform(-a.brightness, a.brightness)) * gain
    if rng.random() < a.channel_shuffle:
        x = x[:, torch.from_numpy(rng.permutation(3))]
    if rng.random() < a.grayscale:
        x = x.mean(dim=1, keepdim=True).repeat(1, 3, 1, 1)
    flipped = bool(rng.random() < a.flip)
    if flipped:
        x = torch.flip(x, dims=[3])
    x = x.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    if points is None:
        return x, flipped
    return x, flipped, move_points(points, r, (side, top, left), flipped)


def crop_box(r: int, rng: np.random.Generator, a: Augment) -> tuple[int, int, int]:
    """(side, top, left) in pixels of a random crop square of an r x r frame; a side above r (zoom
    out) reaches past the frame, and top/left are then negative."""
    side = int(round(r * rng.uniform(*a.crop_scale)))
    if side <= r:
        top, left = rng.integers(0, r - side + 1, 2)
    else:
        top, left = -rng.integers(0, side - r + 1, 2)
    return side, int(top), int(left)


def move_points(points: np.ndarray, r: int, box: tuple[int, int, int], flipped: bool) -> np.ndarray:
    """Normalised (x, y) points [..., 25, 2] moved by a crop box of an r x r frame and a flip
    (left and right joints swapped)."""
    side, top, left = box
    p = (points * r - np.array([left, top])) / side
    if flipped:
        p = p[..., MIRROR, :]
        p[..., 0] = 1.0 - p[..., 0]
    return p.astype(np.float32)


def skeleton_view(
    cache: Cache, clip: dict, cfg: VSTConfig, rng: np.random.Generator, a: Augment, max_azimuth: float, noise: float
) -> tuple[torch.Tensor, bool] | None:
    """Stage-2 features [n, 50] of a synthetic clip without the encoder: the take's own 3D skeleton
    seen by its camera moved up to `max_azimuth` degrees around the room (`vst.render.joints_seen_from`),
    under the crop and flip augmentations, with Gaussian noise of `noise` (normalised image units)
    standing in for the encoder's joint error; for a pose-only feature (`joint_features`). The
    training split's takes then show the tokenizer views between and beyond its cameras'. Returns
    (features, flipped), or None for a clip without skeletons."""
    from vst.render import joints_seen_from

    world, flat = cache.skeleton(clip, "joints_world"), cache.skeleton(clip, "joints2d")
    if world is None or flat is None:
        return None
    uv = joints_seen_from(clip["attributes"], world, flat, float(rng.uniform(-max_azimuth, max_azimuth)))
    uv = uv[cache.source_index(clip, np.arange(clip["frames"]), len(uv))]
    flipped = bool(rng.random() < a.flip)
    uv = move_points(uv, cfg.R, crop_box(cfg.R, rng, a), flipped) + rng.normal(0, noise, uv.shape).astype(np.float32)
    return torch.from_numpy(joint_features(uv)), flipped


def pose_features(uv, visibility=None):
    """Joints [n, 25, 2] (x, y in units of the frame height) and their visibility [n, 25] (None:
    all 1) -> the pose front end's frame features [n, 75] (`vst.joints`), float32."""
    uv = np.asarray(uv, np.float32)
    vis = (
        np.ones(uv.shape[:-1] + (1,), np.float32)
        if visibility is None
        else np.asarray(visibility, np.float32)[..., None]
    )
    return np.concatenate([uv, vis], -1).reshape(len(uv), -1)


# what stands in for the pose front end's error on the synthetic clips' true joints, in units of
# the person's torso length: frame-to-frame jitter, a per-clip offset of each joint (its landmarks
# sit elsewhere on the body than the synthetic figure's joints), occluded or out-of-view joints
POSE_JITTER = 0.04
POSE_OFFSET = 0.06
POSE_OCCLUDED = 0.08  # share of joints hidden for a whole clip
POSE_CUT = 0.15  # share of clips whose lower body is out of the view


def pose_view(cache: Cache, clip: dict, rng: np.random.Generator | None, a: Augment, max_azimuth: float = 60.0):
    """(features [n, 75], flipped) of a synthetic clip for the pose front end: its 3D skeleton
    seen by its camera moved up to `max_azimuth` degrees around the room, flipped at random, with
    the front end's error (jitter, per-joint offsets, hidden joints at low visibility). rng None:
    the camera's own view, exactly (what evaluation and the language model's examples read).
    None for a clip without skeletons."""
    from vst.render import joints_seen_from

    world, flat = cache.skeleton(clip, "joints_world"), cache.skeleton(clip, "joints2d")
    if world is None or flat is None:
        return None
    azimuth = 0.0 if rng is None else float(rng.uniform(-max_azimuth, max_azimuth))
    uv = joints_seen_from(clip["attributes"], world, flat, azimuth)
    uv = uv[cache.source_index(clip, np.arange(clip["frames"]), len(uv))].astype(np.float32)
    vis = np.ones(uv.shape[:2], np.float32)
    flipped = False
    if rng is not None:
        torso = float(np.linalg.norm(uv[:, J["spine_shoulder"]] - uv[:, J["spine_base"]], axis=-1).mean()) or 0.1
        uv = uv + rng.normal(0, POSE_OFFSET * torso, (1, uv.shape[1], 2)) + rng.normal(0, POSE_JITTER * torso, uv.shape)
        hidden = rng.random(uv.shape[1]) < POSE_OCCLUDED
        if rng.random() < POSE_CUT:  # the frame's lower edge cuts the legs off
            hidden |= np.isin(
                np.arange(uv.shape[1]), [J[n] for n in JOINT_NAMES if n.split("_")[0] in ("knee", "ankle", "foot")]
            )
        vis = np.where(hidden[None], rng.uniform(0.0, 0.4, vis.shape), rng.uniform(0.8, 1.0, vis.shape)).astype(
            np.float32
        )
        uv = uv + hidden[None, :, None] * rng.normal(0, 2 * POSE_JITTER * torso, uv.shape)
        flipped = bool(rng.random() < a.flip)
    feats = pose_features(uv, vis)
    return (mirror_pose(feats) if flipped else feats), flipped


def clip_input(cfg: VSTConfig, cache: Cache, clip: dict) -> np.ndarray:
    """What the VST's first engine reads of a cached clip: its frames (uint8 [n, R, R, 3]), or for
    a pose front-end VST the pose features of its camera's view [n, 75] (`pose_view`)."""
    if cfg.frontend != "pose":
        return cache.clip_frames(clip)
    got = pose_view(cache, clip, None, Augment())
    if got is None:
        raise ValueError(f"{clip['name']}: a pose front-end VST reads skeletons, and this clip has none")
    return got[0]


def augmented_input(cfg: VSTConfig, cache: Cache, clip: dict, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(input, flipped): `clip_input` through the training augmentations (frames: crop, colour,
    flip; pose: another camera view, the front end's error, flip)."""
    if cfg.frontend == "pose":
        return pose_view(cache, clip, rng, Augment())
    frames, flipped = augment_frames(cache.clip_frames(clip), rng, Augment())
    return frames.numpy(), flipped


def speed_indices(n: int, span: int, rng: np.random.Generator, speed: tuple[float, float]) -> np.ndarray:
    """`span` frame indices into a clip of n frames at a random speed and start (clamped at the end)."""
    v = rng.uniform(*speed)
    need = int(math.ceil(span * v))
    start = int(rng.integers(0, max(0, n - need) + 1))
    return np.minimum(start + np.round(np.arange(span) * v).astype(int), n - 1)


def action_frames(clip: dict) -> tuple[int, int]:
    """The frames where the action happens: from the attributes, else the middle 60 % of the clip."""
    attrs = clip.get("attributes") or {}
    n = clip["frames"]
    if "action_start_frame" in attrs and attrs.get("fps"):
        lo, hi = (int(f) for f in action_span(attrs, n))
        if hi > lo:
            return lo, min(hi, n)
    return int(n * 0.2), max(int(n * 0.8), int(n * 0.2) + 1)


class FrameSampler:
    """Stage 1: single augmented frames from inside the action, with their clip's labels and, for
    synthetic clips, the 2D skeleton of that frame (normalised image coordinates) as a pose target."""

    def __init__(self, cache: Cache, clips: list[dict], cfg: VSTConfig, aug: Augment, seed: int = 0):
        self.cache, self.clips, self.cfg, self.aug = cache, clips, cfg, aug
        self.rng = np.random.default_rng(seed)
        self.poses: dict[str, np.ndarray] = {}
        for clip in clips:
            joints2d = cache.skeleton(clip, "joints2d")
            if joints2d is not None:
                self.poses[clip["name"]] = joints2d / float(clip["attributes"]["size"])

    def sample(self, batch: int) -> dict:
        frames, labels, sides, poses, has_pose = [], [], [], [], []
        for i in self.rng.integers(0, len(self.clips), batch):
            clip = self.clips[i]
            label, side, _ = clip_targets(clip, self.cfg)
            lo, hi = action_frames(clip)
            k = int(self.rng.integers(lo, hi))
            frame = self.cache.clip_frames(clip)[k]
            pose = self.poses.get(clip["name"])
            target = np.zeros((25, 2), np.float32)
            if pose is not None:
                target = pose[self.cache.source_index(clip, k, len(pose))]
            x, flipped, target = augment_frames(frame[None], self.rng, self.aug, target)
            frames.append(x[0])
            labels.append(label)
            sides.append(1 - side if flipped and side >= 0 else side)
            poses.append(target)
            has_pose.append(pose is not None)
        return {
            "frames": torch.stack(frames),
            "label": torch.tensor(labels),
            "side": torch.tensor(sides),
            "pose": torch.from_numpy(np.stack(poses)),
            "has_pose": torch.tensor(has_pose),
        }


class FeatureWindowSampler:
    """Stage 2: pairs of windows S frames apart over cached frame features (several augmented
    views per clip), with temporal speed jitter."""

    def __init__(
        self,
        views: list[list[torch.Tensor]],
        clips: list[dict],
        flipped: list[list[bool]],
        cfg: VSTConfig,
        aug: Augment,
        seed: int = 0,
    ):
        self.views, self.clips, self.flipped, self.cfg, self.aug = views, clips, flipped, cfg, aug
        self.rng = np.random.default_rng(seed)
        self.span = cfg.W + cfg.S

    def sample(self, batch: int) -> dict:
        feats, labels, sides, reps = [], [], [], []
        for i in self.rng.integers(0, len(self.clips), batch):
            v = int(self.rng.integers(0, len(self.views)))
            f = self.views[v][i]
            idx = speed_indices(len(f), self.span, self.rng, self.aug.speed)
            feats.append(f[torch.from_numpy(idx)])
            label, side, _ = clip_targets(self.clips[i], self.cfg)
            labels.append(label)
            sides.append(1 - side if self.flipped[v][i] and side >= 0 else side)
            # each of the pair's two windows has its own count of the repetitions it holds
            reps.append(
                [
                    clip_targets(self.clips[i], self.cfg, (int(idx[k]), int(idx[k + self.cfg.W - 1]) + 1))[2]
                    for k in (0, self.cfg.S)
                ]
            )
        return {
            "feats": torch.stack(feats),
            "label": torch.tensor(labels),
            "side": torch.tensor(sides),
            "reps": torch.tensor(reps),
        }


class _FrameBatches(torch.utils.data.IterableDataset):
    """FrameSampler batches without end, one sampler per loader process (it opens the cache itself,
    so nothing large is pickled whatever the start method)."""

    def __init__(self, cache_root: str, clips: list[dict], cfg: VSTConfig, batch: int, seed: int):
        self.cache_root, self.clips, self.cfg, self.batch, self.seed = cache_root, clips, cfg, batch, seed

    def __iter__(self):
        from vst.cache import Cache

        info = torch.utils.data.get_worker_info()
        sampler = FrameSampler(
            Cache.open(self.cache_root), self.clips, self.cfg, Augment(), seed=(self.seed, info.id if info else 0)
        )
        while True:
            yield sampler.sample(self.batch)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # the augmentations are small ops: threads would only contend


def frame_batches(cache, clips: list[dict], cfg: VSTConfig, batch: int, seed: int, workers: int = 0, pin: bool = False):
    """Stage-1 batches without end: drawn in this process (workers=0), or by `workers` loader
    processes that keep a GPU fed (on the CPU they would take cores from the training step)."""
    if workers == 0:
        sampler = FrameSampler(cache, clips, cfg, Augment(), seed=seed)
        while True:
            yield sampler.sample(batch)
    yield from torch.utils.data.DataLoader(
        _FrameBatches(cache.root, clips, cfg, batch, seed),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4,
        worker_init_fn=_one_thread,
        persistent_workers=True,
    )


def _gpu_shape(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """x padded (repeating its last item) to a multiple of `multiple` items. On a GPU, clips of
    every length would otherwise give every batch a new shape, and cuDNN plans each new shape
    anew (about 0.1 s a clip on an H100: stage 2's feature pass took 12x the CPU's time)."""
    return torch.cat([x, x[-1:].expand(-len(x) % multiple, *x.shape[1:])])


@torch.no_grad()
def encode_clip(model, frames: np.ndarray, batch_frames: int = 512) -> torch.Tensor:
    """Every frame of a clip through the frame encoder once: [n, D] (padded to at least W frames).
    A pose front-end VST's input already is its features (`clip_input`)."""
    frames = pad_to(frames, model.cfg.W)
    if model.cfg.frontend == "pose":
        return torch.from_numpy(np.ascontiguousarray(frames, np.float32))
    x = torch.from_numpy(np.array(frames)).to(next(model.parameters()).device)
    n = len(x)
    if x.device.type == "cuda":
        batch_frames = 64
        x = _gpu_shape(x, batch_frames)
    return torch.cat([model.encode_frames(x[i : i + batch_frames]) for i in range(0, len(x), batch_frames)])[:n]


@torch.no_grad()
def feature_windows(model, feats: torch.Tensor) -> dict:
    """The runtime's windows over one clip's features: a window every S frames once W are present
    (the outputs of `clip_windows`, without the mirror). Runs on the model's device; the results
    come back on the CPU."""
    cfg = model.cfg
    starts = sliding_starts(len(feats), cfg)
    windows = torch.stack([feats[s : s + cfg.W] for s in starts]).to(next(model.parameters()).device)
    n = len(windows)
    if windows.device.type == "cuda":
        windows = _gpu_shape(windows, 8)
    out = model.tokenize_train(windows)
    keep = ("ids", "dist", "logits") + (("aux", "reps") if "aux" in out else ())
    res = {k: out[k][:n].cpu() for k in keep}
    return {**res, "probs": res["logits"].softmax(-1), "starts": starts}


def clip_windows(model, frames: np.ndarray, mirror: bool = False) -> dict:
    """Run the two engines over one clip as the runtime would: every frame encoded once, a window
    every S frames. Returns ids [n_win, T], dist [n_win, T], logits [n_win, C], the head's label
    probabilities `probs` [n_win, C], starts, and, where the model has attribute heads, their
    logits `aux` [n_win, 2 + max_reps] and the repetition count's `reps` [n_win, max_reps]
    (`vst.model.read_count`). mirror: `probs` is the mean of the window's and its mirror image's
    (the runtime's `engine.mirror`; no label depends on the side, so the mirror is another look at
    the same action); the tokens, count and side stay the window's own."""
    from streams.frame import mirrored

    out = feature_windows(model, encode_clip(model, frames))
    if mirror:
        seen = mirror_pose(frames) if model.cfg.frontend == "pose" else mirrored(frames)
        out["probs"] = (out["probs"] + feature_windows(model, encode_clip(model, seen))["probs"]) / 2
    return out
