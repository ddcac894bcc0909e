import numpy as np
import torch

from tests.conftest import TINY
from vst.actions import BY_SLUG, window_attributes
from vst.cache import Cache
from vst.model import VSTConfig, joint_features
from vst.ntu import ClipName
from vst.skeleton import J
from vst.synth import render_clip
from vst.windows import (
    MIRROR,
    Augment,
    FeatureWindowSampler,
    augment_frames,
    clip_targets,
    pad_to,
    skeleton_view,
    sliding_starts,
    speed_indices,
)


def test_sliding_windows_match_the_runtime_rule():
    cfg = VSTConfig(classes=[1], W=32, S=8, T=8)
    assert sliding_starts(20, cfg) == [0]
    assert sliding_starts(32, cfg) == [0]
    assert sliding_starts(50, cfg) == [0, 8, 16]
    assert pad_to(np.zeros((20, 2, 2, 3), np.uint8), 32).shape[0] == 32


def test_side_is_a_target_only_for_one_sided_limbs():
    cfg = VSTConfig(classes=[10, 23, 43], max_reps=6)

    def clip(action, side, limb, reps):
        return {"action": action, "attributes": {"side": side, "limb": limb, "repetitions": reps}}

    assert clip_targets(clip(23, "left", "left hand", 4), cfg) == (1, 0, 3)
    assert clip_targets(clip(23, "right", "right hand", 3), cfg) == (1, 1, 2)
    # the performer's chosen side is recorded for every clip, but clapping or falling do not show it
    assert clip_targets(clip(10, "right", "both hands", 5), cfg) == (0, -1, 4)
    assert clip_targets(clip(43, "left", "whole body", 1), cfg) == (2, -1, 0)
    assert clip_targets({"action": 43}, cfg) == (2, -1, -1)  # real NTU clips carry no attributes


def test_repetition_targets_count_what_each_training_window_holds():
    wave = BY_SLUG["wave"].ntu_id
    attrs = render_clip(TINY, ClipName(1, 1, 2, 1, wave)).attributes
    n = attrs["frames"]
    clip = {"action": wave, "frames": n, "attributes": attrs}
    cfg = VSTConfig(classes=[wave], W=n // 2, S=n // 2, T=4, max_reps=6)
    assert clip_targets(clip, cfg)[2] == attrs["repetitions"] - 1  # no window: the clip's count
    first, second = (window_attributes(attrs, a, a + n // 2, n)["repetitions"] - 1 for a in (0, n // 2))
    assert first + second + 2 == attrs["repetitions"] and min(first, second) < attrs["repetitions"] - 1
    # a span of exactly W + S frames at speed 1 starts at 0: the pair's windows are the clip's halves
    sampler = FeatureWindowSampler([[torch.zeros(n, 4)]], [clip], [[False]], cfg, Augment(speed=(1.0, 1.0)))
    assert sampler.sample(3)["reps"].tolist() == [[first, second]] * 3


def test_speed_indices_stay_inside_the_clip():
    rng = np.random.default_rng(0)
    for n in (10, 40, 100):
        idx = speed_indices(n, 40, rng, (0.8, 1.25))
        assert len(idx) == 40 and idx.min() >= 0 and idx.max() <= n - 1 and (np.diff(idx) >= 0).all()


def test_augmentation_moves_pose_targets_with_the_pixels():
    r = 64
    frame = np.zeros((1, r, r, 3), np.uint8)
    pts = np.zeros((25, 2), np.float32)
    pts[:] = 0.5
    x, y = 20, 30
    frame[0, y - 1 : y + 2, x - 1 : x + 2] = 255  # a 3x3 spot centred on (x, y)
    pts[J["hand_left"]] = ((x + 0.5) / r, (y + 0.5) / r)
    for scale in ((0.7, 0.9), (1.1, 1.4)):  # zoom in, zoom out (the frame padded with its edge)
        for seed in range(5):
            aug = Augment(crop_scale=scale, flip=1.0, brightness=0, contrast=0, channel_gain=0)
            out, flipped, moved = augment_frames(frame, np.random.default_rng(seed), aug, pts)
            assert flipped and out.shape == frame.shape
            yy, xx = np.unravel_index(out[0].numpy().astype(int).sum(-1).argmax(), (r, r))
            # after a flip the left hand's point is the right hand's target
            px, py = moved[J["hand_right"]] * r
            assert abs(px - (xx + 0.5)) <= 1.5 and abs(py - (yy + 0.5)) <= 1.5, (scale, seed, px, py, xx, yy)
            mass = out[0].numpy()[..., 0].astype(float).sum() / 255  # the spot's area: 9 pixels, scaled by the zoom
            assert (mass > 9 / 0.9**2 * 0.9) if scale[0] < 1 else (mass < 9 / 1.1**2 * 1.1), (scale, seed, mass)
    assert (
        sorted(MIRROR) == list(range(25))
        and MIRROR[J["knee_left"]] == J["knee_right"]
        and MIRROR[J["head"]] == J["head"]
    )


def test_gpu_batches_are_padded_to_a_fixed_multiple():
    import torch

    from vst.windows import _gpu_shape

    x = torch.arange(5 * 2, dtype=torch.float32).reshape(5, 2)
    y = _gpu_shape(x, 4)
    assert y.shape == (8, 2) and torch.equal(y[:5], x) and torch.equal(y[5:], x[-1:].expand(3, 2))
    assert torch.equal(_gpu_shape(x[:4], 4), x[:4])


def test_loader_processes_draw_the_same_kind_of_batches(cache32):
    from itertools import islice

    import torch

    from vst.cache import Cache
    from vst.windows import frame_batches

    cache = Cache.open(cache32)
    clips = cache.split("train")
    cfg = VSTConfig(classes=sorted({c["action"] for c in clips}), R=32, W=32, T=8)
    here = next(frame_batches(cache, clips, cfg, 6, seed=1))
    loaded = list(islice(frame_batches(cache, clips, cfg, 6, seed=1, workers=2), 4))
    assert len(loaded) == 4
    for b in loaded:
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == {k: (v.shape, v.dtype) for k, v in here.items()}
    assert not torch.equal(loaded[0]["frames"], loaded[1]["frames"])  # the two processes draw different frames


def test_skeleton_views_are_the_clips_own_joints_in_the_encoders_feature_format(cache32):
    cache = Cache.open(cache32)
    clip = cache.split("train")[0]
    cfg = VSTConfig(classes=[clip["action"]], R=32)
    j2 = cache.skeleton(clip, "joints2d") / clip["attributes"]["size"]
    plain = joint_features(j2[cache.source_index(clip, np.arange(clip["frames"]), len(j2))])
    still = Augment(crop_scale=(1.0, 1.0), flip=0.0)
    feats, flipped = skeleton_view(cache, clip, cfg, np.random.default_rng(0), still, 0.0, 0.0)
    assert feats.shape == (clip["frames"], 50) and not flipped
    assert np.abs(feats.numpy() - plain).max() < 1e-4
    mirrored, flipped = skeleton_view(
        cache, clip, cfg, np.random.default_rng(0), Augment(crop_scale=(1.0, 1.0), flip=1.0), 0.0, 0.0
    )
    x = mirrored.numpy().reshape(-1, 25, 2)
    assert (
        flipped and np.abs(x[:, MIRROR, 0] + plain.reshape(-1, 25, 2)[:, :, 0]).max() < 1e-4
    )  # x -> -x, sides swapped
    turned, _ = skeleton_view(cache, clip, cfg, np.random.default_rng(0), still, 60.0, 0.0)
    assert np.abs(turned.numpy() - plain).max() > 0.05  # the camera moved


def test_the_mirror_reading_averages_the_head_over_the_window_and_its_mirror_image(tiny_run, cache32):
    from streams.frame import mirrored
    from vst.model import load_checkpoint
    from vst.windows import clip_windows

    model = load_checkpoint(tiny_run[0])
    cache = Cache.open(cache32)
    frames = cache.clip_frames(cache.split("test", "xsub")[0])
    plain, both, flipped = (
        clip_windows(model, f, mirror=m) for f, m in ((frames, False), (frames, True), (mirrored(frames), False))
    )
    assert torch.equal(plain["ids"], both["ids"]) and torch.equal(plain["reps"], both["reps"])
    assert torch.allclose(plain["probs"], plain["logits"].softmax(-1))
    assert torch.allclose(both["probs"], (plain["probs"] + flipped["probs"]) / 2, atol=1e-6)
    assert not torch.allclose(both["probs"], plain["probs"])
