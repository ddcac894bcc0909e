"""The VST model: FrameEncoder (per frame) -> TemporalTokenizer (per window) -> VectorQuantizer ->
semantic head, split into the two run-time engines of DESIGN.md:

    encode_frames(uint8 [N, R, R, 3]) -> features [N, F]                    (FrameEncoder engine)
    tokenize(features [B, W, F]) -> ids [B, T], distances [B, T], logits   (TokenEngine; its export
                                   also outputs the window's repetition count, `read_count`)

with F = cfg.feature_size: D appearance features, then (with `pose_joints`) the x, y of 25 joints,
or (with `appearance` off) the joints alone.

`forward(clip)` is their composition. The frame encoder takes raw uint8 RGB (NHWC, straight from
GStreamer) and normalises inside, so the runtime feeds frames as they come. The tokenizer is
segment-local with one segment of causal context, so windows that overlap by W - S frames see
the same inputs for most shared segments; a consistency loss in training does the rest.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vst.joints import JOINT_NAMES, POSE_CHANNELS, J
from vst.quantizer import VectorQuantizer


@dataclass
class VSTConfig:
    classes: list[int] = field(default_factory=list)  # NTU action ids, index = class index
    W: int = 32  # frames per window (2.1 s at 15 fps)
    S: int = 8  # window stride (frames)
    T: int = 8  # tokens per window (one per 4 frames)
    K: int = 256  # codebook size
    D: int = 256  # frame feature size
    R: int = 112  # input resolution (square)
    fps: int = 15
    widths: tuple[int, ...] = (24, 48, 96, 160)
    spatial_channels: int = 32  # channels kept per cell of the R/16 grid before the feature projection
    hidden: int = 256  # tokenizer width
    code_dim: int = 64
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    aux_side: bool = True  # auxiliary heads for synthetic motion attributes (limb side, repetitions)
    max_reps: int = 6
    # with aux_side: the count is read by `CountHead` from the window's features (False, as in runs
    # from before it: by the attribute head over the tokens)
    count_head: bool = False
    pose_joints: int = 0  # > 0: a heatmap branch at R/8 locates this many 2D joints; their (x, y) join the feature
    appearance: bool = True  # with pose_joints: False keeps only the joints in the feature
    # "cnn": the own FrameEncoder reads R x R frames; "pose": the pretrained pose front end
    # (`edge_runtime.pose`, BlazePose) gives each frame's 25 joints as (x, y, visibility) and the
    # VST is its temporal half alone, trained on the synthetic clips' skeletons (`vst.joints`)
    frontend: str = "cnn"

    def __post_init__(self):
        self.widths = tuple(self.widths)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.W % self.T:
            raise ValueError(f"W={self.W} must be a multiple of T={self.T}")
        if self.S % (self.W // self.T):
            raise ValueError(f"S={self.S} must be a multiple of the segment length W/T={self.W // self.T}")
        if self.R % 16:
            raise ValueError(f"R={self.R} must be a multiple of 16")
        if self.frontend not in ("cnn", "pose"):
            raise ValueError(f"frontend={self.frontend!r}: 'cnn' or 'pose'")
        if self.pose_joints not in (0, 25):
            raise ValueError(f"pose_joints={self.pose_joints}: 0 (no pose branch) or the 25 NTU joints")

    @property
    def feature_size(self) -> int:
        """Size of a frame feature between the two engines: D appearance features and/or the x, y
        of every joint; for the pose front end (x, y, visibility) of every joint."""
        if self.frontend == "pose":
            return len(JOINT_NAMES) * POSE_CHANNELS
        return (self.D if self.appearance or not self.pose_joints else 0) + 2 * self.pose_joints

    @property
    def counts(self) -> int:
        """Counts the repetitions head reads (1..max_reps), 0 without the head: the language model's
        count tokens (`lvlm.prompt`)."""
        return self.max_reps if self.aux_side else 0

    @property
    def segment(self) -> int:
        return self.W // self.T

    @property
    def shift(self) -> int:
        """Tokens by which consecutive windows are shifted."""
        return self.S // self.segment

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=1)

    @classmethod
    def load(cls, path: str) -> VSTConfig:
        with open(path) as f:
            return cls(**json.load(f))


SIZES = {
    "small": dict(
        R=112,
        widths=(16, 32, 64, 128),
        D=192,
        hidden=192,
        code_dim=48,
        spatial_channels=24,
        pose_joints=25,
        appearance=False,
        count_head=True,
    ),
    # the temporal half for the pose front end: no frame encoder to train
    "pose": dict(
        R=112, D=192, hidden=192, code_dim=48, pose_joints=0, appearance=False, count_head=True, frontend="pose"
    ),
    "base": dict(
        R=112,
        widths=(24, 48, 96, 160),
        D=256,
        hidden=256,
        code_dim=64,
        spatial_channels=32,
        pose_joints=25,
        appearance=False,
        count_head=True,
    ),
}


def conv_bn(cin, cout, k, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()
    )


class DSBlock(nn.Module):
    """Depthwise-separable block (MobileNet style), residual when shapes allow."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.dw = conv_bn(cin, cin, 3, stride, groups=cin)
        self.pw = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.pw(self.dw(x))
        return F.relu6(x + y) if self.residual else F.relu6(y)


def joint_features(joints):
    """Joints [N, J, 2] in normalised image coordinates -> the frame feature [N, 2J], centred and
    scaled to about unit range (a tensor or an array)."""
    return (joints.reshape(joints.shape[0], -1) - 0.5) * 4


class FrameEncoder(nn.Module):
    def __init__(self, cfg: VSTConfig):
        super().__init__()
        w = cfg.widths
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0))
        layers = [conv_bn(3, w[0], 3, 2)]  # R/2
        cin = w[0]
        for cout in w[1:]:
            layers += [DSBlock(cin, cout, 2), DSBlock(cout, cout, 1)]  # R/4, R/8, R/16
            cin = cout
        layers += [conv_bn(cin, cfg.spatial_channels, 1)]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(cfg.spatial_channels * (cfg.R // 16) ** 2, cfg.D)  # keeps where things are
        self.norm = nn.LayerNorm(cfg.D)
        self.pose = PoseHeatmaps(cfg) if cfg.pose_joints else None
        self.appearance = cfg.appearance  # False: the feature is the joints alone (appearance trains stage 1 only)

    def parts(
        self, frames_u8: torch.Tensor, appearance: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """uint8 [N, R, R, 3] -> (appearance [N, D] or None when not asked for, joints [N, J, 2]
        in [0, 1] or None without the pose branch)."""
        x = frames_u8.permute(0, 3, 1, 2).to(self.mean.dtype)  # float32, or float16 in the FP16 export
        x = (x - self.mean) * self.inv_std
        if self.pose is None:
            return self.norm(self.proj(self.body(x).flatten(1))), None
        f8 = self.body[:5](x)  # R/8
        f16 = self.body[5:-1](f8)  # R/16
        return self.norm(self.proj(self.body[-1](f16).flatten(1))) if appearance else None, self.pose(f8, f16)

    def forward(self, frames_u8: torch.Tensor) -> torch.Tensor:
        """uint8 [N, R, R, 3] -> features [N, feature_size]: the appearance features and/or the
        joints, centred and scaled to about unit range."""
        appearance, joints = self.parts(frames_u8, self.appearance)
        if joints is None:
            return appearance
        joints = joint_features(joints)
        return joints if appearance is None else torch.cat([appearance, joints], 1)


class PoseHeatmaps(nn.Module):
    """2D joints from one heatmap per joint on the R/8 grid (R/16 features upsampled and added, FPN
    style), read out by soft-argmax: the expected cell centre under the softmax over the grid.
    Translation-equivariant, unlike regressing joints from the flattened grid, so it holds up on
    performers it has not seen (X-Sub). Export-friendly: convolutions, softmax and a matmul."""

    def __init__(self, cfg: VSTConfig, width: int = 32):
        super().__init__()
        self.lat8 = nn.Conv2d(cfg.widths[2], width, 1)
        self.lat16 = nn.Conv2d(cfg.widths[3], width, 1)
        self.heat = nn.Sequential(conv_bn(width, width, 3, groups=width), nn.Conv2d(width, cfg.pose_joints, 1))
        g = cfg.R // 8
        centres = (torch.arange(g, dtype=torch.float32) + 0.5) / g
        self.register_buffer(
            "grid", torch.stack([centres.repeat(g), centres.repeat_interleave(g)], 1)
        )  # [g*g, 2] (x, y)

    def forward(self, f8: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        """-> joints [N, J, 2], normalised image coordinates (x, y) in [0, 1]."""
        return self.soft_argmax(
            self.heat(self.lat8(f8) + F.interpolate(self.lat16(f16), scale_factor=2.0, mode="nearest"))
        )

    def soft_argmax(self, heat: torch.Tensor) -> torch.Tensor:
        """Heatmap logits [N, J, g, g] -> the expected (x, y) cell centre of each joint [N, J, 2]."""
        return heat.flatten(2).softmax(-1) @ self.grid.to(heat.dtype)


def person_normalise(feats: torch.Tensor) -> torch.Tensor:
    """Pose features [B, W, 25 * 3] (x, y in units of the frame height, visibility) -> the same
    with x, y relative to the person over the window: centred on the window's mean hip centre,
    in units of its mean torso length (hips to shoulders). The window's own motion stays (a jump
    rises, a fall drops), where the person stands and how large they appear go."""
    b, w = feats.shape[:2]
    x = feats.reshape(b, w, len(JOINT_NAMES), POSE_CHANNELS)
    xy, vis = x[..., :2], x[..., 2:]
    hip, shoulder = xy[:, :, J["spine_base"]], xy[:, :, J["spine_shoulder"]]
    centre = hip.mean(1, keepdim=True).unsqueeze(2)  # B, 1, 1, 2
    torso = (shoulder - hip).norm(dim=-1).mean(1).clamp_min(1e-3).view(b, 1, 1, 1)
    return torch.cat([(xy - centre) / torso, vis], -1).reshape(b, w, -1)


def with_differences(feats: torch.Tensor) -> torch.Tensor:
    """[B, W, F] -> [B, W, 2F]: each frame's features, then their change from the frame before (0 for the first)."""
    return torch.cat([feats, torch.cat([torch.zeros_like(feats[:, :1]), feats[:, 1:] - feats[:, :-1]], dim=1)], dim=2)


class TemporalTokenizer(nn.Module):
    """W features -> T segment embeddings: patchify frames and their differences per segment,
    then one causal convolution over segments (each token also sees the segment before it)."""

    def __init__(self, cfg: VSTConfig):
        super().__init__()
        self.patch = nn.Conv1d(2 * cfg.feature_size, cfg.hidden, cfg.segment, stride=cfg.segment)
        self.causal = nn.Conv1d(cfg.hidden, cfg.hidden, 2)
        self.mlp = nn.Sequential(
            nn.GELU(), nn.Conv1d(cfg.hidden, cfg.hidden, 1), nn.GELU(), nn.Conv1d(cfg.hidden, cfg.code_dim, 1)
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, W, feature_size] -> [B, T, code_dim]."""
        x = with_differences(feats).transpose(1, 2)  # B, 2F, W
        h = F.gelu(self.patch(x))  # B, H, T
        h = h + self.causal(F.pad(h, (1, 0)))
        return self.mlp(h).transpose(1, 2)


class SemanticHead(nn.Module):
    """Classifies the quantized token sequence (order matters: flatten, not pooling)."""

    def __init__(self, cfg: VSTConfig, outputs: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(1), nn.Linear(cfg.T * cfg.code_dim, 256), nn.GELU(), nn.Dropout(0.1), nn.Linear(256, outputs)
        )

    def forward(self, q):
        return self.net(q)


class CountHead(nn.Module):
    """How many times the window's motion repeats, read at the full frame rate: the W frame
    features, centred over the window, and their frame-to-frame differences through three
    temporal convolutions. The tokens keep one embedding per W/T frames, too coarse for clapping
    or waving (a period every ~5 frames at 15 fps): on the windows of repeated actions in the
    X-Sub test split the attribute head over the tokens reads 69.4 %, this head 83.0 %
    (docs/experiments.md). Logits over 1..max_reps."""

    def __init__(self, cfg: VSTConfig, width: int = 64):
        super().__init__()
        if cfg.W % 4:
            raise ValueError(f"W={cfg.W}: the count head pools the window by 4")

        def block(cin, cout):
            return [nn.Conv1d(cin, cout, 5, padding=2), nn.BatchNorm1d(cout), nn.ReLU()]

        self.net = nn.Sequential(
            *block(2 * cfg.feature_size, width),
            *block(width, width),
            nn.MaxPool1d(2),
            *block(width, width),
            nn.MaxPool1d(2),
            nn.Flatten(1),
            nn.Linear(width * (cfg.W // 4), 128),
            nn.GELU(),
            nn.Linear(128, cfg.max_reps),
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, W, feature_size] -> [B, max_reps]."""
        return self.net(with_differences(feats - feats.mean(1, keepdim=True)).transpose(1, 2))


def read_count(reps: torch.Tensor) -> torch.Tensor:
    """Repetition logits [..., max_reps] (`tokenize_train`'s `reps`) -> the count read, 1..max_reps."""
    return reps.argmax(-1) + 1


class VST(nn.Module):
    def __init__(self, cfg: VSTConfig):
        super().__init__()
        if not cfg.classes:
            raise ValueError("VSTConfig.classes is empty")
        self.cfg = cfg
        self.encoder = FrameEncoder(cfg) if cfg.frontend == "cnn" else None  # pose: the front end is pretrained
        self.tokenizer = TemporalTokenizer(cfg)
        self.quantizer = VectorQuantizer(cfg.K, cfg.code_dim)
        self.head = SemanticHead(cfg, len(cfg.classes))
        self.aux = SemanticHead(cfg, 2 + cfg.max_reps) if cfg.aux_side else None
        # training only: the same classifier on the continuous embeddings gives the tokenizer a
        # direct gradient (the straight-through one alone learns slowly); never exported
        self.z_head = SemanticHead(cfg, len(cfg.classes))
        self.count = None
        if cfg.aux_side and cfg.count_head:
            # its own seed: the other modules and the training run draw the same random numbers as without it
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.count = CountHead(cfg)

    # ---- the two engines ----------------------------------------------------------------------
    def encode_frames(self, frames_u8: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise ValueError("this VST reads the pose front end's joints; it has no frame encoder")
        return self.encoder(frames_u8)

    def tokenize(self, feats: torch.Tensor):
        """features [B, W, F] -> (ids [B, T], distances [B, T], head logits [B, C])."""
        out = self.tokenize_train(feats)
        return out["ids"], out["dist"], out["logits"]

    def tokenize_train(self, feats: torch.Tensor, counts: bool = True) -> dict:
        """counts=False leaves out `reps` (stage 2 then runs the count head over more windows itself)."""
        feats = self.window_features(feats)
        z = self.tokenizer(feats)
        q, ids, dist, commit = self.quantizer(z)
        out = {"z": F.normalize(z, dim=-1), "q": q, "ids": ids, "dist": dist, "commit": commit, "logits": self.head(q)}
        if self.training:
            out["z_logits"] = self.z_head(out["z"])
        if self.aux is not None:
            out["aux"] = self.aux(q)
            if counts:
                out["reps"] = self.repetition_logits(feats, q, out["aux"])
        return out

    def window_features(self, feats: torch.Tensor) -> torch.Tensor:
        """What the temporal half reads of a window's frame features: for the pose front end the
        joints relative to the person (`person_normalise`), else the features as they are."""
        return person_normalise(feats) if self.cfg.frontend == "pose" else feats

    def repetition_logits(self, feats: torch.Tensor, q: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        """The logits `read_count` reads [B, max_reps]: the count head's where there is one, else the
        attribute head's over the tokens q (its `aux` output when already computed)."""
        if self.count is not None:
            return self.count(feats)
        return (self.aux(q) if aux is None else aux)[:, 2:]

    def forward(self, clip_u8: torch.Tensor):
        """uint8 [B, W, R, R, 3] -> (ids, distances, logits): the full-clip forward."""
        b, w = clip_u8.shape[:2]
        feats = self.encode_frames(clip_u8.reshape(b * w, *clip_u8.shape[2:])).reshape(b, w, -1)
        return self.tokenize(feats)


def save_checkpoint(model: VST, folder: str, name: str = "model", extra: dict | None = None) -> str:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    model.cfg.save(os.path.join(folder, "config.json"))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = os.path.join(folder, f"{name}.safetensors")
    save_file(state, path + ".tmp", metadata={k: json.dumps(v) for k, v in (extra or {}).items()})
    os.replace(path + ".tmp", path)
    return path


def load_checkpoint(folder: str, name: str = "model") -> VST:
    """A VST from a run folder (config.json + NAME.safetensors), in eval mode."""
    from safetensors.torch import load_file

    cfg_path = os.path.join(folder, "config.json")
    path = os.path.join(folder, f"{name}.safetensors")
    if not (os.path.exists(cfg_path) and os.path.exists(path)):
        from vst.ntu import DatasetError

        raise DatasetError(
            f"no VST checkpoint in {folder} (config.json + {name}.safetensors); train one with `lvlm-var train vst`"
        )
    model = VST(VSTConfig.load(cfg_path))
    model.load_state_dict(load_file(path))
    return model.eval()
