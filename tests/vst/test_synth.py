import json
import os
import subprocess

import numpy as np
import pytest

from tests.conftest import TINY
from vst.actions import ACTIONS, BY_SLUG, explain, limb_phrase, mirror_attributes, select, window_attributes
from vst.ntu import ClipName
from vst.render import joints_seen_from
from vst.skeleton import MOTIONS, SIDES, Body, J, MotionContext, joints, repetition_phases
from vst.synth import SynthConfig, generate, render_clip


def test_class_table_covers_the_fine_grained_pairs():
    slugs = {a.slug for a in ACTIONS}
    for pair in (
        ("sit_down", "stand_up"),
        ("drink", "phone"),
        ("wave", "point"),
        ("squat", "pickup"),
        ("walk_towards", "walk_away"),
    ):
        assert set(pair) <= slugs
    assert len(ACTIONS) >= 12
    assert len({a.ntu_id for a in ACTIONS}) == len(ACTIONS)
    assert BY_SLUG["drink"].ntu_id == 1 and BY_SLUG["fall"].ntu_id == 43 and BY_SLUG["wave"].ntu_id == 23
    assert all(a.ntu_id <= 120 or a.slug.startswith("walk") for a in ACTIONS)
    assert [a.ntu_id for a in select("1,A006,wave")] == [1, 6, 23]
    with pytest.raises(ValueError, match="unknown action class"):
        select("moonwalk")


def test_mirrored_attributes_swap_the_side_of_one_sided_actions_only():
    for a in (BY_SLUG["wave"], BY_SLUG["kick"], BY_SLUG["clap"], BY_SLUG["jump"]):
        attrs = {
            "action_id": a.ntu_id,
            "side": "right",
            "limb": limb_phrase(a, "right"),
            "motion": a.motion,
            "repetitions": a.reps[0],
            "explanation": explain(a, "right", a.reps[0]),
        }
        m = mirror_attributes(attrs)
        assert m["side"] == "left" and mirror_attributes(m) == attrs
        assert m["explanation"] == explain(a, "left", a.reps[0])
        one_sided = a.limb in ("hand", "leg")
        assert (m["limb"] != attrs["limb"]) == one_sided and (m["explanation"] != attrs["explanation"]) == one_sided
    assert mirror_attributes({"explanation": "x"}) == {"explanation": "x"}  # not a synthetic clip: unchanged


def test_rendering_is_deterministic_and_seed_dependent():
    name = ClipName(1, 2, 1, 1, 23)
    a = render_clip(TINY, name)
    b = render_clip(TINY, name)
    assert np.array_equal(a.frames, b.frames) and a.attributes == b.attributes
    other = render_clip(SynthConfig(**{**TINY.__dict__, "seed": 8}), name)
    assert not np.array_equal(a.frames[: len(other.frames)], other.frames[: len(a.frames)])


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: a.slug)
def test_every_action_renders_with_attributes(action):
    clip = render_clip(TINY, ClipName(1, 1, 2, 1, action.ntu_id))
    n = len(clip.frames)
    assert n >= int(TINY.seconds * TINY.fps * 0.85)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] == (48, 48, 3)
    assert clip.joints3d.shape == (n, 25, 3) and clip.joints2d.shape == (n, 25, 2)
    attrs = clip.attributes
    assert attrs["action_id"] == action.ntu_id
    assert attrs["explanation"] == explain(action, attrs["side"], attrs["repetitions"])
    assert action.reps[0] <= attrs["repetitions"] <= action.reps[1]
    assert 0 <= attrs["action_start_frame"] < attrs["action_end_frame"] <= n
    # the performer actually moves during the action
    motion = np.abs(np.diff(clip.joints_world, axis=0)).sum()
    assert motion > 0.5


def test_sit_down_and_stand_up_are_time_reversed():
    ctx = MotionContext(Body(), "right", 1, 1.0)
    for u in (0.0, 0.3, 0.7, 1.0):
        a = joints(ctx.body, MOTIONS["sit_down"](u, ctx), 0.0)
        b = joints(ctx.body, MOTIONS["stand_up"](1 - u, ctx), 0.0)
        assert np.allclose(a, b)
    seated = joints(ctx.body, MOTIONS["sit_down"](1.0, ctx), 0.0)
    standing = joints(ctx.body, MOTIONS["sit_down"](0.0, ctx), 0.0)
    assert seated[J["spine_base"], 1] < standing[J["spine_base"], 1] - 0.3


def test_drink_reaches_the_mouth_and_phone_the_ear():
    ctx = MotionContext(Body(), "right", 1, 1.0)
    drink = joints(ctx.body, MOTIONS["drink"](0.5, ctx), 0.0)
    phone = joints(ctx.body, MOTIONS["phone"](0.5, ctx), 0.0)
    head = drink[J["head"]]
    assert np.linalg.norm(drink[J["hand_right"]] - head) < 0.25
    assert drink[J["hand_right"], 2] > head[2]  # in front of the face
    assert phone[J["hand_right"], 0] * SIDES["right"] > phone[J["head"], 0] * SIDES["right"]  # beside the head
    rest = joints(ctx.body, MOTIONS["drink"](0.0, ctx), 0.0)
    assert rest[J["hand_right"], 1] < rest[J["spine_mid"], 1]


def test_limb_lengths_stay_constant_through_a_motion():
    body = Body(1.8)
    ctx = MotionContext(body, "left", 3, 1.1)
    for slug in ("wave", "kick", "jump", "fall"):
        for u in np.linspace(0, 1, 11):
            p = joints(body, MOTIONS[slug](float(u), ctx), 0.3)
            assert np.isclose(np.linalg.norm(p[J["shoulder_left"]] - p[J["elbow_left"]]), body.upper_arm), slug
            assert np.isclose(np.linalg.norm(p[J["elbow_left"]] - p[J["wrist_left"]]), body.forearm), slug
            assert np.isclose(np.linalg.norm(p[J["knee_left"]] - p[J["ankle_left"]]), body.shin), slug


def test_dataset_layout_and_videos_decode_with_gstreamer(tiny_dataset):
    meta = json.load(open(os.path.join(tiny_dataset, "dataset.json")))
    assert [c["id"] for c in meta["classes"]] == [8, 9, 23]
    videos = sorted(os.listdir(os.path.join(tiny_dataset, "rgb")))
    assert len(videos) == 54 and all(v.endswith("_rgb.avi") for v in videos)
    stem = videos[0][: -len("_rgb.avi")]
    sk = np.load(os.path.join(tiny_dataset, "skeletons", stem + ".npz"))
    attrs = json.load(open(os.path.join(tiny_dataset, "attributes", stem + ".json")))
    assert sk["joints3d"].shape == (attrs["frames"], 25, 3)
    for v in videos[:3]:
        uri = "file://" + os.path.join(tiny_dataset, "rgb", v)
        r = subprocess.run(
            ["gst-launch-1.0", "-q", "uridecodebin", f"uri={uri}", "!", "fakesink"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr


def test_generation_resumes_and_refuses_other_settings(tiny_dataset, tmp_path):
    before = os.path.getmtime(
        os.path.join(tiny_dataset, "rgb", sorted(os.listdir(os.path.join(tiny_dataset, "rgb")))[0])
    )
    summary = generate(TINY, tiny_dataset, workers=1, progress=False)
    assert summary["clips"] == 54
    after = os.path.getmtime(
        os.path.join(tiny_dataset, "rgb", sorted(os.listdir(os.path.join(tiny_dataset, "rgb")))[0])
    )
    assert before == after  # complete clips are not rendered again
    with pytest.raises(ValueError, match="other settings"):
        generate(SynthConfig(**{**TINY.__dict__, "seed": 99}), tiny_dataset, workers=1, progress=False)


def _signal(slug, ctx, u):
    """The scalar that peaks at each repetition's defining instant."""
    pose = MOTIONS[slug](u, ctx)
    p = joints(ctx.body, pose, 0.0)
    side = ctx.side
    signals = {
        "clap": lambda: -np.linalg.norm(pose.hands["left"] - pose.hands["right"]),
        "punch": lambda: p[J[f"hand_{side}"], 2],
        "kick": lambda: p[J[f"ankle_{side}"], 2],
        "bow": lambda: pose.bend,
        "squat": lambda: -p[J["spine_base"], 1],
        "jump": lambda: p[J["spine_base"], 1],
    }
    return signals[slug]()


@pytest.mark.parametrize("slug", ["clap", "punch", "kick", "bow", "squat", "jump"])
def test_repetition_phases_are_the_motions_peaks(slug):
    ctx = MotionContext(Body(), "right", 3, 1.0)
    phases = repetition_phases(slug, 3)
    assert len(phases) == 3 and phases == sorted(phases) and 0 < phases[0] and phases[-1] < 1
    u = np.linspace(0, 1, 1201)
    s = np.array([_signal(slug, ctx, float(x)) for x in u])
    high = np.flatnonzero(s > s.min() + 0.9 * np.ptp(s))  # near each peak (or plateau): take the middle
    runs = np.split(high, np.flatnonzero(np.diff(high) > 1) + 1)
    peaks = [u[r].mean() for r in runs]
    assert len(peaks) == 3, peaks
    assert np.allclose(peaks, phases, atol=0.03), (peaks, phases)


def test_window_attributes_count_the_repetitions_the_window_holds():
    clip = render_clip(TINY, ClipName(1, 1, 2, 1, BY_SLUG["clap"].ntu_id))
    a = clip.attributes
    n, lo, hi = a["frames"], a["action_start_frame"], a["action_end_frame"]
    whole = window_attributes(a, 0, n, n)
    assert whole["repetitions"] == whole["clip_repetitions"] == a["repetitions"] >= 3
    assert whole["explanation"] == a["explanation"]
    half = window_attributes(a, 0, (lo + hi) // 2, n)
    assert 1 <= half["repetitions"] < a["repetitions"] and half["clip_repetitions"] == a["repetitions"]
    assert half["explanation"] == explain(BY_SLUG["clap"], a["side"], half["repetitions"])
    rest = window_attributes(half, (lo + hi) // 2, n, n)  # windowing a window's attributes counts from the clip's
    assert half["repetitions"] + rest["repetitions"] == a["repetitions"]
    # the same windows of the clip read at twice the frame rate
    assert window_attributes(a, 0, lo + hi, 2 * n)["repetitions"] == half["repetitions"]
    assert window_attributes(a, n, n + 10, n)["repetitions"] == 1  # outside the action: at least once
    drink = render_clip(TINY, ClipName(1, 1, 2, 1, BY_SLUG["drink"].ntu_id)).attributes
    assert window_attributes(drink, 0, 5, drink["frames"])["explanation"] == drink["explanation"]
    assert window_attributes({"explanation": "x"}, 0, 32, 64) == {"explanation": "x"}  # not synthetic: unchanged


def test_repetitions_near_lists_the_counts_of_the_window_moved_a_frame_or_two():
    from vst.actions import EDGE_FRAMES, action_span
    from vst.skeleton import repetition_phases

    a = render_clip(TINY, ClipName(1, 1, 2, 1, BY_SLUG["clap"].ntu_id)).attributes
    n = a["frames"]
    lo, hi = action_span(a, n)
    instants = [lo + u * (hi - lo) for u in repetition_phases("clap", a["repetitions"])]
    whole = window_attributes(a, 0, n, n)
    assert whole["repetitions_near"] == [a["repetitions"]]  # every instant far inside
    edge = int(instants[1]) + 1  # the second instant lies in the window's last frame
    w = window_attributes(a, 0, edge, n)
    assert w["repetitions"] == 2 and w["repetitions_near"] == [1, 2]
    for start in range(0, n, 3):  # every window: one count unless an instant is near an edge
        for stop in range(start + 8, n + 1, 3):
            w = window_attributes(a, start, stop, n)
            edgy = any(abs(t - e) <= EDGE_FRAMES for t in instants for e in (start, stop))
            assert w["repetitions"] in w["repetitions_near"] and (len(w["repetitions_near"]) > 1) <= edgy


def test_joints_seen_from_a_moved_camera_are_what_that_camera_renders():
    """Camera 1 and camera 2 film the same take: camera 1's skeleton seen from camera 2's azimuth is
    camera 2's own 2D skeleton (same setup: same height, distance and zoom)."""
    one, two = (render_clip(TINY, ClipName(1, c, 2, 1, BY_SLUG["wave"].ntu_id)) for c in (1, 2))
    assert np.allclose(one.joints_world, two.joints_world)
    a, size = one.attributes, TINY.size
    assert np.abs(joints_seen_from(a, one.joints_world, one.joints2d, 0.0) - one.joints2d / size).max() < 1e-4
    moved = joints_seen_from(
        a, one.joints_world, one.joints2d, two.attributes["camera_azimuth_deg"] - a["camera_azimuth_deg"]
    )
    assert np.abs(moved - two.joints2d / size).max() < 1e-4
    assert np.abs(moved - one.joints2d / size).max() > 0.05  # 45 degrees apart: a different picture
