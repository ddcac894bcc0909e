import numpy as np

from vst.glossary import describe_segment
from vst.skeleton import MOTIONS, Body, MotionContext, joints


def segment(slug, u0, u1, side="right", yaw=0.4):
    ctx = MotionContext(Body(), side, 3, 1.0, "back")
    return np.stack([joints(ctx.body, MOTIONS[slug](float(u), ctx), yaw) for u in np.linspace(u0, u1, 4)])


def test_glosses_describe_what_the_skeleton_does():
    assert describe_segment(segment("drink", 0.45, 0.5)) == "right hand at head height, held still"
    assert describe_segment(segment("wave", 0.2, 0.8, side="left")).startswith("left hand above the head, moving")
    assert describe_segment(segment("sit_down", 0.95, 1.0)) in ("body lowered, still", "body upright, still")
    assert describe_segment(segment("pickup", 0.5, 0.55)).startswith(("right hand near the floor", "body bent over"))
    assert describe_segment(segment("fall", 0.9, 1.0)) == "body lying, still"
    assert describe_segment(segment("jump", 0.3, 0.45)).endswith("moving up")
    assert describe_segment(segment("drink", 0.0, 0.0)) == "body upright, still"
