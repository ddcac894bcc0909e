import pytest
import torch

from vst.model import SIZES, VST, VSTConfig, load_checkpoint, save_checkpoint

TINY = dict(R=32, widths=(8, 16, 16, 32), D=32, hidden=32, code_dim=16, spatial_channels=8, K=32, W=16, S=4, T=4)


def tiny_model(seed=0, pose_joints=0, appearance=True):
    torch.manual_seed(seed)
    return VST(VSTConfig(classes=[8, 9, 23], pose_joints=pose_joints, appearance=appearance, **TINY)).eval()


@pytest.mark.parametrize("pose_joints, appearance", [(0, True), (25, True), (25, False)])
def test_the_two_engines_compose_to_the_full_clip_forward(pose_joints, appearance):
    model = tiny_model(pose_joints=pose_joints, appearance=appearance)
    clip = torch.randint(0, 256, (3, 16, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        full = model(clip)
        feats = model.encode_frames(clip.reshape(-1, 32, 32, 3)).reshape(3, 16, -1)
        split = model.tokenize(feats)
        # frame by frame, as the runtime does (batch of 1)
        one = torch.stack([model.encode_frames(clip[0, i : i + 1])[0] for i in range(16)])
    assert torch.equal(full[0], split[0])
    assert torch.allclose(full[1], split[1], atol=1e-6) and torch.allclose(full[2], split[2], atol=1e-5)
    assert torch.allclose(one, feats[0], atol=1e-5)
    assert full[0].shape == (3, 4) and full[0].dtype == torch.int64 and full[2].shape == (3, 3)
    assert feats.shape[-1] == model.cfg.feature_size == 32 * appearance + 2 * pose_joints


def test_pose_branch_reads_joints_off_the_heatmaps():
    model = tiny_model(pose_joints=25)
    g = model.cfg.R // 8
    heat = torch.full((2, 25, g, g), -30.0)
    heat[0, :, 1, 3] = 30.0  # every joint of frame 0 at row 1, column 3
    heat[1, :, :, :] = 0.0  # frame 1: flat, the expectation is the middle
    joints = model.encoder.pose.soft_argmax(heat)
    assert torch.allclose(joints[0], torch.tensor([(3 + 0.5) / g, (1 + 0.5) / g]).expand(25, 2), atol=1e-6)
    assert torch.allclose(joints[1], torch.full((25, 2), 0.5), atol=1e-6)
    frames = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():  # the feature ends with the joints, centred and scaled: x, y in [0, 1] -> [-2, 2]
        feats = model.encode_frames(frames)
        joints_only = tiny_model(pose_joints=25, appearance=False).encode_frames(frames)  # same seed, same weights
    pose = feats[:, 32:].reshape(4, 25, 2) / 4 + 0.5
    assert pose.min() >= 0.5 / g - 1e-6 and pose.max() <= 1 - 0.5 / g + 1e-6
    assert torch.allclose(pose, model.encoder.parts(frames)[1], atol=1e-6)
    assert torch.equal(joints_only, feats[:, 32:])


def test_config_validation_and_json_round_trip(tmp_path):
    cfg = VSTConfig(classes=[1, 2], **SIZES["small"])
    cfg.save(str(tmp_path / "c.json"))
    assert VSTConfig.load(str(tmp_path / "c.json")) == cfg
    for bad in (dict(W=30, T=8), dict(S=6), dict(R=100), dict(pose_joints=17)):
        try:
            VSTConfig(classes=[1], **bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    model = tiny_model()
    model.train()
    model.tokenize_train(torch.randn(2, 16, 32))  # initialise the codebook from data
    model.eval()
    save_checkpoint(model, str(tmp_path))
    loaded = load_checkpoint(str(tmp_path))
    clip = torch.randint(0, 256, (2, 16, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        a, b = model(clip), loaded(clip)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert loaded.cfg == model.cfg and not loaded.training
