"""Rendering of a performer's 25 joints into RGB frames: a pinhole camera, depth-sorted shaded
capsules (limbs, torso) and discs (head, hands), a room background with a floor, and the camera
effects that make the task real (lighting drift, sensor noise, motion blur, occlusion).
Pure numpy; about a millisecond per 112 x 112 frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vst.skeleton import J, _unit


@dataclass(frozen=True)
class Camera:
    azimuth_deg: float
    height: float
    distance: float
    size: int  # square image, pixels
    zoom: float = 1.0
    target_height: float = 0.95

    def __post_init__(self):
        a = math.radians(self.azimuth_deg)
        pos = np.array([self.distance * math.sin(a), self.height, self.distance * math.cos(a)])
        fwd = _unit(np.array([0.0, self.target_height, 0.0]) - pos)
        right = _unit(np.cross(fwd, [0.0, 1.0, 0.0]))
        up = np.cross(right, fwd)
        object.__setattr__(self, "_pos", pos)
        object.__setattr__(self, "_rot", np.stack([right, up, fwd]))
        object.__setattr__(
            self, "focal", 0.86 * self.size * 3.2 / 1.8 * self.zoom
        )  # a 1.8 m person at 3.2 m fills 86 %

    def to_camera(self, pts: np.ndarray) -> np.ndarray:
        """World -> camera coordinates (x right, y up, z forward = depth)."""
        return (pts - self._pos) @ self._rot.T

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points [N,3] -> pixel coordinates [N,2] (x right, y down) and depth [N]."""
        c = self.to_camera(pts)
        z = np.maximum(c[:, 2], 0.05)
        half = self.size / 2
        uv = np.stack([half + self.focal * c[:, 0] / z, half - self.focal * c[:, 1] / z], axis=1)
        return uv, z


def joints_seen_from(attrs: dict, joints_world: np.ndarray, joints2d: np.ndarray, azimuth_offset: float) -> np.ndarray:
    """A synthetic take's 2D joints [N, 25, 2] in normalised image coordinates, as the clip's camera
    would see them moved `azimuth_offset` degrees around the room (same height, distance and zoom;
    the zoom, which the attributes do not record, is read back from the clip's own 2D joints)."""
    size = attrs["size"]
    pts = np.asarray(joints_world, np.float64).reshape(-1, 3)
    seen = Camera(attrs["camera_azimuth_deg"], attrs["camera_height_m"], attrs["camera_distance_m"], size)
    uv = seen.project(pts)[0] - size / 2
    ref = np.asarray(joints2d, np.float64).reshape(-1, 2) - size / 2
    zoom = float((uv * ref).sum() / max((uv * uv).sum(), 1e-9))
    moved = Camera(
        attrs["camera_azimuth_deg"] + azimuth_offset, attrs["camera_height_m"], attrs["camera_distance_m"], size, zoom
    )
    return (moved.project(pts)[0] / size).reshape(*np.shape(joints2d)).astype(np.float32)


@dataclass(frozen=True)
class Look:
    """A performer's appearance (colours are RGB 0..255)."""

    skin: tuple
    shirt: tuple
    pants: tuple
    shoes: tuple
    hair: tuple
    long_sleeves: bool


# (joint a, joint b, radius as a share of body height, colour key)
SEGMENTS = (
    ("spine_base", "spine_shoulder", 0.075, "shirt"),
    ("shoulder_left", "shoulder_right", 0.035, "shirt"),
    ("hip_left", "hip_right", 0.045, "pants"),
    ("spine_shoulder", "neck", 0.026, "skin"),
    ("shoulder_left", "elbow_left", 0.026, "shirt"),
    ("shoulder_right", "elbow_right", 0.026, "shirt"),
    ("elbow_left", "wrist_left", 0.021, "sleeve"),
    ("elbow_right", "wrist_right", 0.021, "sleeve"),
    ("wrist_left", "handtip_left", 0.02, "skin"),
    ("wrist_right", "handtip_right", 0.02, "skin"),
    ("hip_left", "knee_left", 0.04, "pants"),
    ("hip_right", "knee_right", 0.04, "pants"),
    ("knee_left", "ankle_left", 0.032, "pants"),
    ("knee_right", "ankle_right", 0.032, "pants"),
    ("ankle_left", "foot_left", 0.024, "shoes"),
    ("ankle_right", "foot_right", 0.024, "shoes"),
)
_SEG_IDX = np.array([(J[a], J[b]) for a, b, _, _ in SEGMENTS])


class Canvas:
    """Float RGB image with anti-aliased, shaded capsule drawing."""

    def __init__(self, image: np.ndarray):
        self.img = image
        h, w = image.shape[:2]
        self.h, self.w = h, w

    def capsule(self, p0, p1, r0: float, r1: float, color) -> None:
        r = max(r0, r1, 0.6)
        x0 = int(max(0, math.floor(min(p0[0], p1[0]) - r - 1)))
        x1 = int(min(self.w, math.ceil(max(p0[0], p1[0]) + r + 2)))
        y0 = int(max(0, math.floor(min(p0[1], p1[1]) - r - 1)))
        y1 = int(min(self.h, math.ceil(max(p0[1], p1[1]) + r + 2)))
        if x0 >= x1 or y0 >= y1:
            return
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        ys += 0.5
        xs += 0.5
        d = np.asarray(p1, np.float32) - np.asarray(p0, np.float32)
        dd = float(d @ d)
        t = np.zeros_like(xs) if dd < 1e-6 else np.clip(((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / dd, 0, 1)
        dist = np.hypot(xs - (p0[0] + t * d[0]), ys - (p0[1] + t * d[1]))
        rad = r0 + (r1 - r0) * t
        alpha = np.clip(rad - dist + 0.5, 0.0, 1.0)[..., None]
        shade = (0.72 + 0.28 * np.clip(1 - (dist / np.maximum(rad, 0.5)) ** 2, 0, 1))[..., None]
        patch = self.img[y0:y1, x0:x1]
        patch *= 1 - alpha
        patch += alpha * shade * np.asarray(color, np.float32)

    def disc(self, p, r, color) -> None:
        self.capsule(p, p, r, r, color)


def background(rng: np.random.Generator, cam: Camera, room: dict) -> np.ndarray:
    """A static room: a wall with a gradient and a few objects, a floor up to the wall line."""
    s = cam.size
    wall_top = np.asarray(room["wall"], np.float32)
    wall_bottom = wall_top * 0.8
    floor = np.asarray(room["floor"], np.float32)
    ys = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(wall_top * (1 - ys) + wall_bottom * ys, (s, s, 3)).copy()
    # the wall/floor line: ground points 2 m behind the performer, as the camera sees them
    behind = -_unit(np.array([cam._pos[0], 0.0, cam._pos[2]])) * 2.0
    uv, _ = cam.project(np.array([behind]))
    horizon = int(np.clip(uv[0, 1], 0, s - 1))
    img[horizon:] = floor * (0.85 + 0.15 * np.linspace(0, 1, s - horizon, dtype=np.float32)[:, None, None])
    for obj in room["objects"]:
        x0, y0, w, h, col = obj
        xa, ya = int(x0 * s), int(y0 * horizon)
        img[ya : ya + max(1, int(h * horizon)), xa : xa + max(1, int(w * s))] = col
    texture = rng.normal(0, 4.0, (s // 4 + 1, s // 4 + 1, 1)).astype(np.float32)
    img += np.kron(texture, np.ones((4, 4, 1), np.float32))[:s, :s]
    return img


def draw_person(canvas: Canvas, cam: Camera, joints: np.ndarray, look: Look, height: float) -> np.ndarray:
    """Draw one performer (painter's order by depth); returns the 2D joints [25, 2]."""
    uv, z = cam.project(joints)
    colours = {
        "skin": look.skin,
        "shirt": look.shirt,
        "pants": look.pants,
        "shoes": look.shoes,
        "sleeve": look.shirt if look.long_sleeves else look.skin,
    }
    items = []
    for (a, b), (_, _, rad, key) in zip(_SEG_IDX, SEGMENTS):
        r = rad * height * cam.focal
        items.append(((z[a] + z[b]) / 2, "cap", (uv[a], uv[b], r / z[a], r / z[b], colours[key])))
    head = joints[J["head"]]
    neck = joints[J["neck"]]
    head_r = 0.062 * height
    up = _unit(head - neck)
    fwd = _unit(np.cross(joints[J["shoulder_left"]] - joints[J["shoulder_right"]], up))
    for pt, r, col in (
        (head, head_r, look.skin),
        (head + up * head_r * 0.35 - fwd * head_r * 0.25, head_r * 0.9, look.hair),
        (head + fwd * head_r * 0.95, head_r * 0.22, tuple(0.8 * c for c in look.skin)),
    ):
        p, d = cam.project(pt[None])
        items.append((float(d[0]), "disc", (p[0], r * cam.focal / d[0], col)))
    items.sort(key=lambda it: -it[0])
    for _, kind, args in items:
        if kind == "cap":
            canvas.capsule(*args)
        else:
            canvas.disc(*args)
    return uv


def shadow(canvas: Canvas, cam: Camera, joints: np.ndarray, height: float) -> None:
    """A soft dark ellipse on the floor under the performer's pelvis."""
    ground = joints[J["spine_base"]].copy()
    ground[1] = 0.0
    pts = np.array([ground + [-0.3, 0, 0], ground + [0.3, 0, 0], ground + [0, 0, -0.2], ground + [0, 0, 0.2]])
    uv, _ = cam.project(pts)
    c = uv.mean(0)
    rx = max(1.0, np.abs(uv[:, 0] - c[0]).max())
    ry = max(1.0, np.abs(uv[:, 1] - c[1]).max())
    h, w = canvas.h, canvas.w
    ys, xs = np.ogrid[0:h, 0:w]
    e = ((xs - c[0]) / rx) ** 2 + ((ys - c[1]) / ry) ** 2
    canvas.img *= (1 - 0.35 * np.clip(1 - e, 0, 1))[..., None]
