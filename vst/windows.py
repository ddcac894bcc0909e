"""Windows of frames from the prepared cache: random training windows with the augmentations that
matter for cameras, and the sliding windows the runtime sees (stride S) for evaluation."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vst.cache import Cache
from vst.model import VSTConfig

SIDES = ("left", "right")


@dataclass
class Augment:
    crop_scale: tuple[float, float] = (0.75, 1.0)  # share of the frame side kept
    speed: tuple[float, float] = (0.8, 1.25)  # temporal speed jitter
    brightness: float = 0.25
    contrast: float = 0.25
    channel_gain: float = 0.08
    flip: float = 0.5  # horizontal flip probability (swaps the limb side label)


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


def clip_targets(clip: dict, cfg: VSTConfig) -> tuple[int, int, int]:
    """(class index, side index or -1, repetitions index or -1) of a cached clip."""
    label = cfg.classes.index(clip["action"])
    attrs = clip.get("attributes") or {}
    side = SIDES.index(attrs["side"]) if attrs.get("side") in SIDES else -1
    reps = int(attrs["repetitions"]) - 1 if attrs.get("repetitions") else -1
    return label, side, min(reps, cfg.max_reps - 1)


class TrainSampler:
    """Random pairs of windows shifted by S (for the consistency loss) from the training split."""

    def __init__(self, cache: Cache, clips: list[dict], cfg: VSTConfig, aug: Augment, seed: int = 0):
        self.cache, self.clips, self.cfg, self.aug = cache, clips, cfg, aug
        self.rng = np.random.default_rng(seed)
        self.span = cfg.W + cfg.S

    def sample(self, batch: int) -> dict:
        frames, labels, sides, reps = [], [], [], []
        for i in self.rng.integers(0, len(self.clips), batch):
            clip = self.clips[i]
            label, side, rep = clip_targets(clip, self.cfg)
            x, flipped = self._window(self.cache.clip_frames(clip))
            if flipped and side >= 0:
                side = 1 - side
            frames.append(x)
            labels.append(label)
            sides.append(side)
            reps.append(rep)
        return {"frames": torch.stack(frames), "label": torch.tensor(labels), "side": torch.tensor(sides),
                "reps": torch.tensor(reps)}

    def _window(self, clip: np.ndarray) -> tuple[torch.Tensor, bool]:
        a, rng, n = self.aug, self.rng, len(clip)
        speed = rng.uniform(*a.speed)
        need = int(math.ceil(self.span * speed))
        start = int(rng.integers(0, max(0, n - need) + 1))
        idx = np.minimum(start + np.round(np.arange(self.span) * speed).astype(int), n - 1)
        x = torch.from_numpy(np.ascontiguousarray(clip[idx])).permute(0, 3, 1, 2).float()  # L, 3, R, R
        r = x.shape[-1]
        side = int(round(r * rng.uniform(*a.crop_scale)))
        top, left = rng.integers(0, r - side + 1, 2)
        x = x[:, :, top:top + side, left:left + side]
        if side != r:
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        gain = torch.tensor(1 + rng.uniform(-a.channel_gain, a.channel_gain, 3), dtype=torch.float32).view(1, 3, 1, 1)
        mean = x.mean()
        x = (x - mean) * (1 + rng.uniform(-a.contrast, a.contrast)) + mean
        x = x * (1 + rng.uniform(-a.brightness, a.brightness)) * gain
        flipped = bool(rng.random() < a.flip)
        if flipped:
            x = torch.flip(x, dims=[3])
        return x.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous(), flipped


@torch.no_grad()
def clip_windows(model, frames: np.ndarray, batch_frames: int = 512) -> dict:
    """Run the two engines over one clip as the runtime would: every frame encoded once, a window
    every S frames. Returns ids [n_win, T], dist [n_win, T], logits [n_win, C], starts."""
    cfg = model.cfg
    frames = pad_to(frames, cfg.W)
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(next(model.parameters()).device)
    feats = torch.cat([model.encode_frames(x[i:i + batch_frames]) for i in range(0, len(x), batch_frames)])
    starts = sliding_starts(len(frames), cfg)
    windows = torch.stack([feats[s:s + cfg.W] for s in starts])
    ids, dist, logits = model.tokenize(windows)
    return {"ids": ids, "dist": dist, "logits": logits, "starts": starts}
