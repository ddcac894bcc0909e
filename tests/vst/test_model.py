import torch

from vst.model import SIZES, VST, VSTConfig, load_checkpoint, save_checkpoint

TINY = dict(R=32, widths=(8, 16, 16, 32), D=32, hidden=32, code_dim=16, spatial_channels=8, K=32, W=16, S=4, T=4)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return VST(VSTConfig(classes=[8, 9, 23], **TINY)).eval()


def test_the_two_engines_compose_to_the_full_clip_forward():
    model = tiny_model()
    clip = torch.randint(0, 256, (3, 16, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        full = model(clip)
        feats = model.encode_frames(clip.reshape(-1, 32, 32, 3)).reshape(3, 16, -1)
        split = model.tokenize(feats)
        # frame by frame, as the runtime does (batch of 1)
        one = torch.stack([model.encode_frames(clip[0, i:i + 1])[0] for i in range(16)])
    assert torch.equal(full[0], split[0])
    assert torch.allclose(full[1], split[1], atol=1e-6) and torch.allclose(full[2], split[2], atol=1e-5)
    assert torch.allclose(one, feats[0], atol=1e-5)
    assert full[0].shape == (3, 4) and full[0].dtype == torch.int64 and full[2].shape == (3, 3)


def test_config_validation_and_json_round_trip(tmp_path):
    cfg = VSTConfig(classes=[1, 2], **SIZES["small"])
    cfg.save(str(tmp_path / "c.json"))
    assert VSTConfig.load(str(tmp_path / "c.json")) == cfg
    for bad in (dict(W=30, T=8), dict(S=6), dict(R=100)):
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
