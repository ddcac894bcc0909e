"""The articulated performer: 25 NTU RGB+D joints, body proportions, two-bone IK, and one motion
program per synthetic action.

Coordinates are metres. Body-local frame: x to the performer's left, y up, z forward (the way
the performer faces); the ground is y = 0. A motion program maps the action phase u in [0, 1]
(clamped outside the active period, so "before" is pose(0) and "after" is pose(1)) to a `Pose`:
pelvis position, spine bend, head pitch, hand and foot targets. `joints()` turns a pose into the
25 joints with IK for arms and legs, then applies the whole-body tilt (falling), yaw and walking
translation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vst.joints import JOINT_NAMES, J  # noqa: F401 - the layout, shared with the runtime

SIDES = {"left": 1.0, "right": -1.0}  # sign of the body-local x axis


def _unit(v):
    n = np.linalg.norm(v)
    return v / n if n > 1e-9 else v


def rot_x(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


@dataclass(frozen=True)
class Body:
    """A performer's proportions (metres), all derived from height and a few ratios."""

    height: float = 1.72
    shoulder_width: float = 0.38
    hip_width: float = 0.24
    limb_ratio: float = 1.0  # >1: long arms and legs for the height

    @property
    def leg(self):  # hip to ankle
        return 0.47 * self.height * self.limb_ratio

    @property
    def thigh(self):
        return self.leg * 0.52

    @property
    def shin(self):
        return self.leg * 0.48

    @property
    def ankle_height(self):
        return 0.04 * self.height

    @property
    def torso(self):  # pelvis to shoulder centre
        return self.height - self.leg - self.ankle_height - self.neck - 2.1 * self.head_radius

    @property
    def neck(self):
        return 0.05 * self.height

    @property
    def head_radius(self):
        return 0.062 * self.height

    @property
    def upper_arm(self):
        return 0.186 * self.height * self.limb_ratio

    @property
    def forearm(self):
        return 0.146 * self.height * self.limb_ratio

    @property
    def hand(self):
        return 0.06 * self.height

    @property
    def foot(self):
        return 0.13 * self.height

    @property
    def reach(self):
        return self.upper_arm + self.forearm

    @property
    def standing_pelvis(self):
        return self.leg * 0.995 + self.ankle_height


@dataclass
class Pose:
    pelvis: np.ndarray
    bend: float = 0.0  # spine flexion forward (rad)
    head_pitch: float = 0.0  # positive: chin down
    hands: dict = field(default_factory=dict)  # side -> target (body-local), missing: rest
    elbow_poles: dict = field(default_factory=dict)
    feet: dict = field(default_factory=dict)  # side -> ankle target, missing: under the hip
    tilt: float = 0.0  # whole-body rotation about the ankle line (rad), falling
    tilt_axis: str = "back"  # back | left | right
    advance: float = 0.0  # translation along the body's forward axis (walking)
    turn: float = 0.0  # extra yaw (rad), e.g. walking away


class Anatomy:
    """Body-local landmarks for a given pelvis, spine bend and head pitch."""

    def __init__(self, body: Body, pelvis, bend: float, head_pitch: float = 0.0):
        self.body = body
        self.pelvis = np.asarray(pelvis, float)
        self.up = np.array([0.0, math.cos(bend), math.sin(bend)])
        self.fwd = np.array([0.0, -math.sin(bend), math.cos(bend)])
        self.shoulder_center = self.pelvis + self.up * body.torso
        self.neck = self.shoulder_center + self.up * body.neck
        head_up = rot_x(-head_pitch) @ self.up if head_pitch else self.up
        self.head_fwd = rot_x(-head_pitch) @ self.fwd if head_pitch else self.fwd
        self.head = self.neck + head_up * body.head_radius * 1.1

    def shoulder(self, side: str):
        return self.shoulder_center + np.array([SIDES[side] * self.body.shoulder_width / 2, 0, 0]) - self.up * 0.03

    def hip(self, side: str):
        return self.pelvis + np.array([SIDES[side] * self.body.hip_width / 2, 0, 0])

    def mouth(self):
        return self.head + self.head_fwd * self.body.head_radius * 1.25 - self.up * self.body.head_radius * 0.45

    def ear(self, side: str):
        return self.head + np.array([SIDES[side] * self.body.head_radius * 1.35, 0, 0]) + self.fwd * 0.02

    def chest(self):
        return self.shoulder_center - self.up * 0.18 + self.fwd * 0.3

    def rest_hand(self, side: str):
        return self.shoulder(side) + np.array([SIDES[side] * 0.05, -self.body.reach * 0.97, 0.04])

    def foot_home(self, side: str):
        return np.array([SIDES[side] * self.body.hip_width / 2, self.body.ankle_height, 0.0])


def two_bone_ik(root, target, a: float, b: float, pole):
    """Joint positions (middle, end) of a two-bone chain from root towards target, bending to pole."""
    d_vec = target - root
    d = float(np.linalg.norm(d_vec))
    n = d_vec / d if d > 1e-9 else np.array([0.0, -1.0, 0.0])
    d = min(max(d, abs(a - b) + 1e-4), a + b - 1e-4)
    cos_a = (a * a + d * d - b * b) / (2 * a * d)
    sin_a = math.sqrt(max(0.0, 1 - cos_a * cos_a))
    m = np.asarray(pole, float) - n * float(np.dot(pole, n))
    m = _unit(m) if np.linalg.norm(m) > 1e-6 else _unit(np.cross(n, [1.0, 0, 0]))
    mid = root + a * (cos_a * n + sin_a * m)
    return mid, root + n * d


def joints(body: Body, pose: Pose, yaw: float) -> np.ndarray:
    """The 25 NTU joints (world, metres) for a pose of a performer facing `yaw` (rad about y)."""
    an = Anatomy(body, pose.pelvis, pose.bend, pose.head_pitch)
    out = np.zeros((25, 3))
    out[J["spine_base"]] = an.pelvis
    out[J["spine_mid"]] = an.pelvis + an.up * body.torso * 0.5
    out[J["spine_shoulder"]] = an.shoulder_center
    out[J["neck"]] = an.neck
    out[J["head"]] = an.head
    for side, sign in SIDES.items():
        sh = an.shoulder(side)
        target = pose.hands.get(side)
        if target is None:
            target = an.rest_hand(side)
        pole = pose.elbow_poles.get(side, np.array([sign * 0.5, -0.6, -1.0]))
        elbow, wrist = two_bone_ik(sh, np.asarray(target, float), body.upper_arm, body.forearm, pole)
        hand_dir = _unit(wrist - elbow)
        hand = wrist + hand_dir * body.hand * 0.5
        out[J[f"shoulder_{side}"]] = sh
        out[J[f"elbow_{side}"]] = elbow
        out[J[f"wrist_{side}"]] = wrist
        out[J[f"hand_{side}"]] = hand
        out[J[f"handtip_{side}"]] = hand + hand_dir * body.hand * 0.5
        out[J[f"thumb_{side}"]] = hand + _unit(np.cross(hand_dir, [0, 1.0, 0]) * -sign + an.fwd * 0.5) * 0.04
        hip = an.hip(side)
        ankle_target = pose.feet.get(side)
        if ankle_target is None:
            ankle_target = an.foot_home(side)
        knee, ankle = two_bone_ik(hip, np.asarray(ankle_target, float), body.thigh, body.shin, np.array([0, 0.1, 1.0]))
        out[J[f"hip_{side}"]] = hip
        out[J[f"knee_{side}"]] = knee
        out[J[f"ankle_{side}"]] = ankle
        out[J[f"foot_{side}"]] = ankle + np.array([0, -body.ankle_height * 0.6, body.foot * 0.8])
    if pose.tilt:
        pivot = np.array([0.0, 0.0, 0.0])
        if pose.tilt_axis == "back":
            rot, pivot[2] = rot_x(-pose.tilt), -0.05
        else:
            rot = rot_z(pose.tilt if pose.tilt_axis == "left" else -pose.tilt)
            pivot[0] = SIDES[pose.tilt_axis] * body.hip_width / 2
        out = (out - pivot) @ rot.T + pivot
    out[:, 2] += pose.advance
    return out @ rot_y(yaw + pose.turn).T


# ---- motion programs ---------------------------------------------------------------------------


def smooth(x):
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def envelope(u, rise=0.25, fall=0.25):
    """0 -> 1 over [0, rise], 1, then 1 -> 0 over [1 - fall, 1]."""
    return smooth(u / rise) * (1 - smooth((u - (1 - fall)) / fall))


def bump(x):
    """0 at x=0 and x=1, 1 at x=0.5, smooth."""
    x = min(max(x, 0.0), 1.0)
    return 0.5 - 0.5 * math.cos(2 * math.pi * x)


@dataclass(frozen=True)
class MotionContext:
    body: Body
    side: str  # the limb side the clip uses: "left" or "right"
    reps: int
    amp: float  # amplitude factor (~0.8..1.15)
    variant: str = ""  # e.g. fall direction


def _lerp(a, b, w):
    return np.asarray(a, float) * (1 - w) + np.asarray(b, float) * w


def _stand(ctx):
    return np.array([0.0, ctx.body.standing_pelvis, 0.0])


def m_drink(u, ctx):
    p = _stand(ctx)
    w = envelope(u, 0.3, 0.3)
    an = Anatomy(ctx.body, p, 0.0, -0.25 * w)
    target = _lerp(an.rest_hand(ctx.side), an.mouth(), w)
    pole = np.array([SIDES[ctx.side] * 0.6, -1.0, 0.1])
    return Pose(p, 0.0, -0.25 * w, hands={ctx.side: target}, elbow_poles={ctx.side: pole})


def m_phone(u, ctx):
    p = _stand(ctx)
    w = envelope(u, 0.25, 0.2)
    an = Anatomy(ctx.body, p, 0.0)
    target = _lerp(an.rest_hand(ctx.side), an.ear(ctx.side), w)
    pole = np.array([SIDES[ctx.side] * 1.0, -0.8, 0.2])
    return Pose(p, 0.0, 0.1 * w, hands={ctx.side: target}, elbow_poles={ctx.side: pole})


def m_wave(u, ctx):
    p = _stand(ctx)
    w = envelope(u, 0.15, 0.15)
    an = Anatomy(ctx.body, p, 0.0)
    s = SIDES[ctx.side]
    osc = math.sin(2 * math.pi * ctx.reps * smooth((u - 0.15) / 0.7)) * 0.16 * ctx.amp
    up = an.shoulder(ctx.side) + np.array([s * (0.22 + osc), 0.42, 0.12])
    return Pose(
        p,
        hands={ctx.side: _lerp(an.rest_hand(ctx.side), up, w)},
        elbow_poles={ctx.side: np.array([s * 0.8, -1.0, 0.0])},
    )


def m_point(u, ctx):
    p = _stand(ctx)
    w = envelope(u, 0.25, 0.2)
    an = Anatomy(ctx.body, p, 0.0)
    s = SIDES[ctx.side]
    direction = _unit(np.array([s * 0.35, 0.25 * ctx.amp, 1.0]))
    far = an.shoulder(ctx.side) + direction * ctx.body.reach * 1.2
    return Pose(
        p,
        hands={ctx.side: _lerp(an.rest_hand(ctx.side), far, w)},
        elbow_poles={ctx.side: np.array([s * 0.5, -1.0, 0.0])},
    )


def m_punch(u, ctx):
    p = _stand(ctx)
    w = envelope(u, 0.12, 0.12)
    an = Anatomy(ctx.body, p, 0.05)
    s = SIDES[ctx.side]
    guards = {side: an.shoulder(side) + np.array([-SIDES[side] * 0.06, -0.22, 0.22]) for side in SIDES}
    r = ((u - 0.12) / 0.76) * ctx.reps
    k = r - math.floor(r) if 0 <= r < ctx.reps else 0.0
    jab = math.exp(-(((k - 0.35) / 0.12) ** 2))  # fast out, slower back
    strike = an.shoulder(ctx.side) + np.array([-s * 0.05, 0.0, ctx.body.reach * 1.1 * ctx.amp])
    hands = {side: _lerp(an.rest_hand(side), guards[side], w) for side in SIDES}
    hands[ctx.side] = _lerp(hands[ctx.side], strike, jab * w)
    return Pose(p, 0.05, hands=hands, elbow_poles={side: np.array([SIDES[side] * 1.0, -0.8, -0.3]) for side in SIDES})


def m_clap(u, ctx):
    p = _stand(ctx)
    w = envelope(u, 0.15, 0.15)
    an = Anatomy(ctx.body, p, 0.0)
    phase = smooth((u - 0.15) / 0.7)
    gap = 0.025 + 0.17 * ctx.amp * (0.5 + 0.5 * math.cos(2 * math.pi * ctx.reps * phase))
    hands, poles = {}, {}
    for side, s in SIDES.items():
        clap = an.chest() + np.array([s * gap, 0.0, 0.0])
        hands[side] = _lerp(an.rest_hand(side), clap, w)
        poles[side] = np.array([s * 1.0, -1.0, 0.0])
    return Pose(p, hands=hands, elbow_poles=poles)


def m_bow(u, ctx):
    r = u * ctx.reps
    k = r - math.floor(r) if r < ctx.reps else 0.0
    depth = bump(k) * 0.75 * ctx.amp
    p = _stand(ctx) + np.array([0, 0, -0.08 * depth])
    return Pose(p, depth, 0.35 * bump(k))


def _seat_pelvis(ctx):
    b = ctx.body
    return np.array([0.0, b.ankle_height + b.shin * 0.98, -b.thigh * 0.92])


def m_sit_down(u, ctx):
    w = smooth(u)
    p = _lerp(_stand(ctx), _seat_pelvis(ctx), w)
    bend = 0.55 * bump(u) + 0.1 * w
    an = Anatomy(ctx.body, p, bend)
    hands = {
        side: _lerp(an.rest_hand(side), an.hip(side) + np.array([SIDES[side] * 0.1, 0.0, 0.3]), w) for side in SIDES
    }
    return Pose(p, bend, hands=hands)


def m_stand_up(u, ctx):
    return m_sit_down(1.0 - u, ctx)


def m_squat(u, ctx):
    r = u * ctx.reps
    k = r - math.floor(r) if r < ctx.reps else 0.0
    depth = envelope(k, 0.35, 0.35) * ctx.amp
    b = ctx.body
    p = _stand(ctx) + np.array([0, -b.leg * 0.5 * depth, -0.12 * depth])
    bend = 0.45 * depth
    an = Anatomy(b, p, bend)
    hands = {
        side: _lerp(an.rest_hand(side), an.shoulder(side) + np.array([0, -0.05, b.reach * 0.95]), depth)
        for side in SIDES
    }
    return Pose(p, bend, hands=hands)


def m_pickup(u, ctx):
    w = envelope(u, 0.4, 0.35)
    b = ctx.body
    p = _stand(ctx) + np.array([0, -b.leg * 0.18 * w, -0.12 * w])
    bend = 1.15 * w * ctx.amp
    an = Anatomy(b, p, bend)
    floor = np.array([SIDES[ctx.side] * 0.14, b.ankle_height + 0.04, 0.45])
    reach_w = smooth((w - 0.4) / 0.6)
    hands = {ctx.side: _lerp(an.rest_hand(ctx.side), floor, reach_w)}
    return Pose(p, bend, 0.2 * w, hands=hands, elbow_poles={ctx.side: np.array([SIDES[ctx.side] * 0.5, 0.0, -1.0])})


def m_jump(u, ctx):
    r = u * ctx.reps
    k = r - math.floor(r) if r < ctx.reps else 0.0
    b = ctx.body
    crouch = 0.14 * (math.exp(-(((k - 0.18) / 0.1) ** 2)) + math.exp(-(((k - 0.85) / 0.1) ** 2)))
    lift = 0.3 * ctx.amp * max(0.0, math.sin(math.pi * (k - 0.3) / 0.42)) if 0.3 <= k <= 0.72 else 0.0
    p = _stand(ctx) + np.array([0, -crouch * b.leg + lift, -0.05 * crouch])
    an = Anatomy(b, p, 0.25 * crouch / 0.14)
    feet = {side: an.foot_home(side) + np.array([0, lift * 0.9, 0]) for side in SIDES}
    swing = min(1.0, lift / 0.15)
    hands = {
        side: _lerp(an.rest_hand(side), an.shoulder(side) + np.array([SIDES[side] * 0.15, 0.3, 0.25]), swing)
        for side in SIDES
    }
    return Pose(p, 0.25 * crouch / 0.14, hands=hands, feet=feet)


def m_kick(u, ctx):
    r = u * ctx.reps
    k = r - math.floor(r) if r < ctx.reps else 0.0
    b = ctx.body
    s = SIDES[ctx.side]
    p = _stand(ctx)
    an = Anatomy(b, p, -0.12 * bump(k))
    home = an.foot_home(ctx.side)
    back = home + np.array([0, 0.1, -0.25])
    front = np.array([s * b.hip_width / 2, b.ankle_height + b.leg * 0.55 * ctx.amp, b.leg * 0.75])
    if k < 0.35:
        foot = _lerp(home, back, smooth(k / 0.35))
    elif k < 0.6:
        foot = _lerp(back, front, smooth((k - 0.35) / 0.25))
    else:
        foot = _lerp(front, home, smooth((k - 0.6) / 0.4))
    hands = {side: an.rest_hand(side) + np.array([SIDES[side] * 0.15 * bump(k), 0.1 * bump(k), 0]) for side in SIDES}
    return Pose(p, -0.12 * bump(k), feet={ctx.side: foot}, hands=hands)


def m_fall(u, ctx):
    t = smooth((u - 0.1) / 0.55) if u > 0.1 else 0.0
    tilt = 1.42 * t * t
    b = ctx.body
    p = _stand(ctx) + np.array([0, -0.12 * b.leg * bump(min(t, 1) * 0.5), 0])
    an = Anatomy(b, p, 0.2 * t)
    hands = {
        side: _lerp(an.rest_hand(side), an.shoulder(side) + np.array([SIDES[side] * 0.45, 0.15, 0.2]), smooth(t * 2))
        for side in SIDES
    }
    return Pose(p, 0.2 * t, -0.3 * t, hands=hands, tilt=tilt, tilt_axis=ctx.variant or "back")


def _walk(u, ctx, direction):
    b = ctx.body
    steps = 4
    phase = 2 * math.pi * steps / 2 * u
    stride = 0.22 * ctx.amp
    p = _stand(ctx) + np.array([0, 0.015 * math.cos(2 * phase), 0])
    feet, hands = {}, {}
    an = Anatomy(b, p, 0.05)
    for side in SIDES:
        ph = phase + (0 if side == "left" else math.pi)
        feet[side] = an.foot_home(side) + np.array([0, max(0.0, math.sin(ph)) * 0.07, stride * math.cos(ph)])
        hands[side] = an.rest_hand(side) + np.array([0, 0, -stride * 0.8 * math.cos(ph)])
    advance = (u - 0.5) * 1.3 * ctx.amp
    return Pose(p, 0.05, hands=hands, feet=feet, advance=advance, turn=0.0 if direction > 0 else math.pi)


def m_walk_towards(u, ctx):
    return _walk(u, ctx, +1)


def m_walk_away(u, ctx):
    return _walk(u, ctx, -1)


MOTIONS = {
    "drink": m_drink,
    "phone": m_phone,
    "wave": m_wave,
    "point": m_point,
    "punch": m_punch,
    "clap": m_clap,
    "bow": m_bow,
    "sit_down": m_sit_down,
    "stand_up": m_stand_up,
    "squat": m_squat,
    "pickup": m_pickup,
    "jump": m_jump,
    "kick": m_kick,
    "fall": m_fall,
    "walk_towards": m_walk_towards,
    "walk_away": m_walk_away,
}

# seconds of active motion at tempo 1: fixed part + per repetition
DURATIONS = {
    "drink": (2.4, 0.0),
    "phone": (2.6, 0.0),
    "wave": (0.8, 0.45),
    "point": (2.3, 0.0),
    "punch": (0.5, 0.55),
    "clap": (0.6, 0.4),
    "bow": (0.3, 1.2),
    "sit_down": (1.9, 0.0),
    "stand_up": (1.9, 0.0),
    "squat": (0.2, 1.7),
    "pickup": (2.4, 0.0),
    "jump": (0.3, 0.9),
    "kick": (0.4, 1.0),
    "fall": (2.0, 0.0),
    "walk_towards": (3.0, 0.0),
    "walk_away": (3.0, 0.0),
}


def active_seconds(slug: str, reps: int, tempo: float) -> float:
    fixed, per = DURATIONS[slug]
    return (fixed + per * reps) / tempo


def _smooth_inverse(y: float) -> float:
    """x in [0, 1] with smooth(x) == y (smooth rises monotonically there)."""
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if smooth(mid) < y else (lo, mid)
    return (lo + hi) / 2


def repetition_phases(slug: str, reps: int) -> list[float]:
    """The motion phase u (0..1 over the active motion) of each repetition's defining instant, read
    from the motion programs above: the hands meet (clap), the fist or foot is furthest out (punch,
    kick), the deepest point (bow, squat), the top of the jump, the middle of each side-to-side
    swing (wave). A single-repetition action has one instant, the middle of its motion. The
    explanation of a window counts the repetitions whose instant it holds (`vst.actions`)."""
    cycles = [(i + 0.5) / reps for i in range(reps)]
    if slug in ("bow", "squat"):
        return cycles
    if slug == "jump":
        return [(i + 0.51) / reps for i in range(reps)]
    if slug == "kick":
        return [(i + 0.6) / reps for i in range(reps)]
    if slug == "punch":
        return [0.12 + 0.76 * (i + 0.35) / reps for i in range(reps)]
    if slug in ("wave", "clap"):
        return [0.15 + 0.7 * _smooth_inverse(c) for c in cycles]
    return [0.5] * reps
