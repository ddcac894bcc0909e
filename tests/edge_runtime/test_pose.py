"""The pose front end: BlazePose fetched from npm, converted to ONNX (parity with LiteRT), people
found and tracked per stream, their joints in the NTU layout the VST reads."""

import numpy as np
import pytest

from edge_runtime.pose import PoseFrontEnd, PoseSettings
from vst.joints import JOINT_NAMES, POSE_CHANNELS, J


@pytest.fixture(scope="module")
def pose_models():
    from export.pose_assets import fetch, onnx_models

    return fetch(), onnx_models("full")


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    """A photograph of a real person (matplotlib's sample image of Grace Hopper, head and shoulders)."""
    import matplotlib.cbook as cbook
    import matplotlib.image as mimage

    return np.ascontiguousarray(mimage.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))[..., :3])


def front_end(pose_models, **settings) -> PoseFrontEnd:
    from edge_runtime.engines import OrtEngine

    _, onnx = pose_models
    return PoseFrontEnd(
        OrtEngine(onnx["detector"], threads=1), OrtEngine(onnx["landmarks"], threads=1), PoseSettings(**settings)
    )


def square(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    side = min(h, w)
    crop = rgb[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
    idx = (np.arange(size) * side / size).astype(int)
    return crop[idx][:, idx]


def test_converted_models_match_litert_on_real_and_synthetic_frames(pose_models, portrait, tiny_video):
    from export.pose_assets import pose_parity
    from streams.pipeline import Conversion
    from streams.source import Source

    tflite, onnx = pose_models
    with Source(tiny_video, Conversion(width=48, height=48, fps=15)) as src:
        synthetic = [f.rgb for f in src.frames()][:2]
    frames = np.stack([square(portrait, 256)] + [square(f, 256) for f in synthetic])
    p = pose_parity({"detector": tflite["detector"], "landmarks": tflite["full"]}, onnx, frames)
    assert p["frames"] == 3
    assert p["landmark_max_px"] < 0.5  # at 256 px
    assert p["detections_equal"] and p["detections"] >= 1  # the portrait's person, the same after NMS


def test_one_person_is_one_track_with_the_vst_feature(pose_models, portrait):
    fe = front_end(pose_models)
    tracks = set()
    for _ in range(4):
        people = fe.process([("cam", portrait)])[0]
        assert len(people) == 1
        tracks.add(people[0].track)
    assert tracks == {0}  # followed from its own landmarks, not found anew
    p = people[0]
    assert p.feature.shape == (len(JOINT_NAMES) * POSE_CHANNELS,) and p.feature.dtype == np.float32
    joints = p.feature.reshape(-1, POSE_CHANNELS)
    assert ((joints[:, 2] >= 0) & (joints[:, 2] <= 1)).all()
    h, w = portrait.shape[:2]
    head, neck = joints[J["head"], :2] * h, joints[J["neck"], :2] * h  # pixels: the feature is in frame heights
    assert 0 < head[0] < w and 0 < head[1] < h and head[1] < neck[1]  # the head is in the picture, above the neck
    nose = p.landmarks[0]
    assert 150 < nose[0] < 350 and 100 < nose[1] < 350  # her face is in the middle of the photograph's upper half
    assert fe.stream("cam").started == 1 and fe.stream("cam").frames_without_person == 0


def test_two_people_are_two_tracks_and_each_stream_its_own(pose_models, portrait):
    fe = front_end(pose_models)
    two = np.concatenate([portrait, portrait], 1)  # shoulder to shoulder
    for _ in range(3):
        both, one = fe.process([("pair", two), ("single", portrait)])
    assert len(both) == 2 and len(one) == 1
    left, right = sorted(both, key=lambda p: p.landmarks[0, 0])
    assert left.landmarks[0, 0] < portrait.shape[1] < right.landmarks[0, 0]
    assert fe.stream("pair").started == 2 and fe.stream("single").started == 1
    fe = front_end(pose_models, max_people=1)
    assert len(fe.process([("pair", two)])[0]) == 1


def test_nobody_in_frame_gives_no_person_and_a_person_who_leaves_ends_the_track(pose_models, portrait):
    fe = front_end(pose_models, keep_lost=2)
    empty = np.full((360, 640, 3), 96, np.uint8)
    noise = np.random.default_rng(0).integers(0, 255, (360, 640, 3), dtype=np.uint8)
    assert fe.process([("cam", empty)]) == [[]] and fe.process([("cam", noise)]) == [[]]
    st = fe.stream("cam")
    assert st.frames_without_person == 2 and st.started == 0
    assert len(fe.process([("cam", portrait)])[0]) == 1
    gone = square(empty, 600)  # the photograph's frame size, nobody in it
    assert fe.process([("cam", gone)]) == [[]]  # out of sight: lost a moment, not ended yet
    assert not st.tracks and fe.alive("cam") == {0} and st.ended == 0
    back = fe.process([("cam", portrait)])[0]  # found again where it was lost: the same person
    assert [p.track for p in back] == [0] and st.started == 1
    for _ in range(4):
        assert fe.process([("cam", gone)]) == [[]]
    assert st.started == 1 and st.ended == 1 and fe.alive("cam") == set() and st.frames_without_person == 7


def test_joints_follow_the_synthetic_figures_as_training_assumes(pose_models):
    """The VST is trained on the synthetic skeletons with noise of about this size (`pose_view`):
    the front end's joints on the renders lie within a fraction of a torso of the truth."""
    from vst.ntu import ClipName
    from vst.synth import SynthConfig, render_clip

    clip = render_clip(
        SynthConfig(size=128, fps=15), ClipName(setup=1, camera=1, performer=3, replication=1, action=23)
    )
    fe = front_end(pose_models)
    errors, found = [], 0
    for rgb, truth in zip(clip.frames[::2], clip.joints2d[::2]):
        people = fe.process([("s", rgb)])[0]
        if people:
            found += 1
            joints = people[0].feature.reshape(-1, POSE_CHANNELS)[:, :2] * rgb.shape[0]
            torso = np.linalg.norm(truth[J["spine_shoulder"]] - truth[J["spine_base"]])
            errors.append(np.linalg.norm(joints - truth, axis=1) / torso)
    assert found >= 0.8 * len(clip.frames[::2])
    assert np.median(errors) < 0.15


def test_one_euro_steadies_still_joints_and_follows_moving_ones():
    """With the default settings at 15 frames/s, a still joint's jitter (1 % of a 200 px body)
    drops by 40 % or more; a joint moving 0.75 body sizes a second lags by under 2 % of the body;
    a stream clock that restarts starts the filter afresh."""
    from edge_runtime.pose import OneEuro

    cfg = PoseSettings()
    rng = np.random.default_rng(0)
    still = OneEuro(cfg.min_cutoff, cfg.beta)
    out = np.stack(
        [still(np.array([[100.0, 200.0]]) + rng.normal(0, 2.0, (1, 2)), t / 15, scale=1 / 200) for t in range(300)]
    )
    assert out[20:].std(0).max() < 0.6 * 2.0

    moving = OneEuro(cfg.min_cutoff, cfg.beta)
    xs = [moving(np.array([[10.0 * t, 0.0]]), t / 15, scale=1 / 200) for t in range(30)]
    assert abs(float(xs[-1][0, 0]) - 290.0) < 4.0

    again = moving(np.array([[0.0, 0.0]]), 0.0, scale=1 / 200)
    assert np.allclose(again, 0.0)


def test_smoothing_steadies_a_still_person(pose_models, portrait):
    """On a still photograph (head and shoulders: the crop region keeps moving as the body below
    is guessed), the smoothed track's face moves less from frame to frame than the raw one's."""

    def face_motion(front):
        faces = np.stack([front.process([("a", portrait)])[0][0].landmarks[:11] for _ in range(10)])
        return float(np.abs(np.diff(faces[3:], axis=0)).sum())

    assert face_motion(front_end(pose_models, smoothing=True)) < face_motion(front_end(pose_models))
