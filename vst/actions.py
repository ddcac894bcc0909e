"""The action class table: the one place that says which actions exist.

Each class carries its NTU RGB+D action id where NTU has the action (so a label means the same
on synthetic and on real NTU data; ids above 120 are actions NTU lacks), the limb and motion it
involves, and the template of its reference explanation. `explain()` builds the reference
sentence from a clip's motion attributes; the LVLM issue's faithfulness check reads the same
attributes back.
"""

from __future__ import annotations

from dataclasses import dataclass

from vst.skeleton import repetition_phases


@dataclass(frozen=True)
class ActionClass:
    ntu_id: int
    name: str  # NTU's own name where NTU has the action
    slug: str  # the motion program in vst.skeleton
    limb: str  # "hand" (one, the performer's dominant or chosen side), "both hands", "leg", "head", "whole body"
    motion: str  # canonical phrase for the motion, used in explanations and their check
    reps: tuple[int, int]  # inclusive range of repetitions
    template: str  # reference explanation; {limb} {motion} {times} are filled in

    @property
    def code(self) -> str:
        return f"A{self.ntu_id:03d}"


ACTIONS: tuple[ActionClass, ...] = (
    ActionClass(
        1,
        "drink water",
        "drink",
        "hand",
        "to the mouth",
        (1, 1),
        "The person raises the {limb} {motion} and holds it there {times}, as if drinking.",
    ),
    ActionClass(
        6,
        "pickup",
        "pickup",
        "hand",
        "down to the floor",
        (1, 1),
        "The person bends forward and reaches the {limb} {motion} {times}, picking something up.",
    ),
    ActionClass(
        8,
        "sitting down",
        "sit_down",
        "whole body",
        "down onto a seat",
        (1, 1),
        "The person lowers the {limb} {motion} {times} and stays seated.",
    ),
    ActionClass(
        9,
        "standing up (from sitting position)",
        "stand_up",
        "whole body",
        "up from a seat",
        (1, 1),
        "The person rises with the {limb} {motion} {times} and stays standing.",
    ),
    ActionClass(
        10,
        "clapping",
        "clap",
        "both hands",
        "together in front of the chest",
        (3, 6),
        "The person brings {limb} {motion} {times}, clapping.",
    ),
    ActionClass(
        23,
        "hand waving",
        "wave",
        "hand",
        "side to side above the shoulder",
        (3, 5),
        "The person raises the {limb} and moves it {motion} {times}, waving.",
    ),
    ActionClass(
        24,
        "kicking something",
        "kick",
        "leg",
        "forward",
        (1, 2),
        "The person swings the {limb} {motion} {times}, kicking.",
    ),
    ActionClass(
        27,
        "jump up",
        "jump",
        "whole body",
        "up off the ground",
        (1, 3),
        "The person bends the knees and springs the {limb} {motion} {times}.",
    ),
    ActionClass(
        28,
        "make a phone call/answer phone",
        "phone",
        "hand",
        "to the ear",
        (1, 1),
        "The person lifts the {limb} {motion} and holds it there {times}, as if on the phone.",
    ),
    ActionClass(
        31,
        "pointing to something with finger",
        "point",
        "hand",
        "straight out in front",
        (1, 1),
        "The person stretches the {limb} {motion} and holds it {times}, pointing at something.",
    ),
    ActionClass(
        35,
        "nod head/bow",
        "bow",
        "head",
        "forward and back",
        (1, 3),
        "The person tips the {limb} and upper body {motion} {times}, bowing.",
    ),
    ActionClass(
        43,
        "falling",
        "fall",
        "whole body",
        "over to the ground",
        (1, 1),
        "The person loses balance and the {limb} goes {motion} {times}.",
    ),
    ActionClass(
        50,
        "punching/slapping other person",
        "punch",
        "hand",
        "in a fast jab forward",
        (1, 3),
        "The person thrusts the {limb} {motion} {times}, punching.",
    ),
    ActionClass(
        80,
        "squat down",
        "squat",
        "whole body",
        "down by bending the knees",
        (1, 2),
        "The person lowers the {limb} {motion} {times} and rises again, squatting.",
    ),
    ActionClass(
        121,
        "walking towards the camera",
        "walk_towards",
        "whole body",
        "towards the camera",
        (1, 1),
        "The person walks with the {limb} moving {motion} {times}.",
    ),
    ActionClass(
        122,
        "walking away from the camera",
        "walk_away",
        "whole body",
        "away from the camera",
        (1, 1),
        "The person turns and walks with the {limb} moving {motion} {times}.",
    ),
)

BY_ID = {a.ntu_id: a for a in ACTIONS}
BY_SLUG = {a.slug: a for a in ACTIONS}

TIMES = {1: "once", 2: "twice", 3: "three times", 4: "four times", 5: "five times", 6: "six times"}


def times_word(n: int) -> str:
    return TIMES.get(n, f"{n} times")


def limb_phrase(action: ActionClass, side: str) -> str:
    """The concrete limb of a clip: 'right hand', 'left leg', 'both hands', 'whole body', 'head'."""
    if action.limb in ("hand", "leg"):
        return f"{side} {action.limb}"
    return action.limb


def explain(action: ActionClass, side: str, repetitions: int) -> str:
    return action.template.format(limb=limb_phrase(action, side), motion=action.motion, times=times_word(repetitions))


def mirror_attributes(attrs: dict) -> dict:
    """A clip's motion attributes as seen in a horizontally flipped video: the other side, and the
    limb phrase and reference explanation rebuilt for it (unchanged for two-sided actions)."""
    action = BY_ID.get(attrs.get("action_id"))
    if action is None or attrs.get("side") not in ("left", "right"):
        return dict(attrs)
    side = "left" if attrs["side"] == "right" else "right"
    return {
        **attrs,
        "side": side,
        "limb": limb_phrase(action, side),
        "explanation": explain(action, side, int(attrs["repetitions"])),
    }


def action_span(attrs: dict, frames: int) -> tuple[float, float]:
    """The action's first and end frame (attributes `action_start_frame`, `action_end_frame`) in a
    reading of the clip that has `frames` frames: the cache may run at another fps than the clip."""
    ratio = frames / max(attrs["frames"], 1)
    return attrs["action_start_frame"] * ratio, attrs["action_end_frame"] * ratio


EDGE_FRAMES = 2  # how far a window may move for `repetitions_near`


def window_attributes(attrs: dict, start: int, stop: int, frames: int) -> dict:
    """A clip's motion attributes as the window of frames [start, stop) sees them (`frames`: the
    clip's length as read, which may run at another fps than it was rendered at): the repetitions
    whose instant (`vst.skeleton.repetition_phases`) lies inside the window, at least one, with the
    reference explanation rebuilt for that count; the clip's own count stays as
    `clip_repetitions`. A 2.1 s window cannot show all five waves of a 3.7 s action, so its
    explanation states what it shows. `repetitions_near` lists the counts of the same window
    moved by up to EDGE_FRAMES frames either way: an instant that close to an edge is in or out by
    a frame or two, which no reader of the frames can tell apart exactly. Attributes without the
    action's timing come back unchanged."""
    action = BY_ID.get(attrs.get("action_id"))
    if action is None or not attrs.get("frames") or not {"action_start_frame", "repetitions", "side"} <= set(attrs):
        return dict(attrs)
    reps = int(attrs.get("clip_repetitions", attrs["repetitions"]))
    lo, hi = action_span(attrs, frames)
    instants = [lo + u * (hi - lo) for u in repetition_phases(action.slug, reps)]

    def held(shift: int) -> int:
        return max(1, sum(start + shift <= t < stop + shift for t in instants))

    seen = held(0)
    return {
        **attrs,
        "repetitions": seen,
        "clip_repetitions": reps,
        "explanation": explain(action, attrs["side"], seen),
        "repetitions_near": sorted({held(d) for d in range(-EDGE_FRAMES, EDGE_FRAMES + 1)}),
    }


def select(spec: str | None) -> tuple[ActionClass, ...]:
    """Parse a --classes value: comma-separated NTU ids (1,6,A008) or slugs; None means all."""
    if not spec:
        return ACTIONS
    chosen = []
    for item in spec.split(","):
        item = item.strip()
        key = item.upper().lstrip("A")
        if key.isdigit() and int(key) in BY_ID:
            chosen.append(BY_ID[int(key)])
        elif item in BY_SLUG:
            chosen.append(BY_SLUG[item])
        else:
            known = ", ".join(f"{a.ntu_id}={a.slug}" for a in ACTIONS)
            raise ValueError(f"unknown action class {item!r}; known: {known}")
    return tuple(dict.fromkeys(chosen))
