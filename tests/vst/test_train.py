"""A tiny VST trains on a tiny synthetic set; evaluation and the glossary write all their outputs."""

import copy
import json
import os

import numpy as np
import pytest
import torch

from tests.conftest import FAST, TINY_VST
from tests.helpers import run_cli
from vst.cache import Cache, prepare
from vst.model import VST, load_checkpoint
from vst.train import TrainConfig, _features, seed_everything, token_losses, train
from vst.windows import Augment, FeatureWindowSampler


@pytest.mark.slow
def test_tiny_training_lowers_the_loss(tiny_run, cache32):
    run, result = tiny_run
    assert not result["stopped_early"] and result["steps"] == 40 * 5  # 36 training clips / batch 8 = 5 steps per epoch
    history = [json.loads(line) for line in open(os.path.join(run, "history.jsonl"))]
    frames, tokens = history[0], history[1:]
    assert frames["stage"] == "frames" and frames["step"] == 150
    cfg = load_checkpoint(run).cfg  # the default: the feature is the heatmap branch's 25 joints
    assert cfg.pose_joints == 25 and not cfg.appearance and cfg.feature_size == 50
    assert frames["loss"] < 0.5 * frames["first_loss"]  # stage 1
    assert [h["step"] for h in tokens] == [100, 200]
    # stage 2: the same windows, scored by the trained token engine and by a fresh one on the same features
    trained = load_checkpoint(run, "last")
    seed_everything(0)
    fresh = VST(trained.cfg)
    fresh.encoder.load_state_dict(trained.encoder.state_dict())
    cache = Cache.open(cache32)
    clips = cache.split("train")
    views, flips = _features(trained, cache, clips, 1, 0, False, "")
    tc = TrainConfig(**FAST)
    scores, counts = [], []
    for model in (fresh, trained):
        sampler = FeatureWindowSampler(views, clips, flips, model.cfg, Augment(), seed=5)
        with torch.no_grad():
            loss, stats = token_losses(model.train(), sampler.sample(64), tc)
        scores.append(float(loss))
        counts.append(stats["count"])
    assert scores[1] < 0.8 * scores[0], scores
    assert counts[1] < 0.8 * counts[0], counts  # the count head (the default) learns too
    assert {"config.json", "model.safetensors", "last.safetensors", "last_state.pt", "train_config.json"} <= set(
        os.listdir(run)
    )
    model = load_checkpoint(run)
    assert model.cfg.classes == [8, 9, 23] and model.cfg.R == 32


def test_the_count_head_trains_beside_the_tokens_without_changing_them(tiny_run, cache32, tmp_path):
    """The count head reads the window's features with its own weights, seed and gradient clipping:
    every other weight of the run is bit for bit what a run without it trains."""
    out = str(tmp_path / "no-count-head")
    train(cache32, out, TrainConfig(**FAST), progress=False, overrides={**TINY_VST, "count_head": False})
    with_head, without = load_checkpoint(tiny_run[0]), load_checkpoint(out)
    assert with_head.cfg.count_head and with_head.count is not None and without.count is None
    a, b = with_head.state_dict(), without.state_dict()
    assert set(a) - set(b) == {k for k in a if k.startswith("count.")} != set()
    assert [k for k in b if not torch.equal(a[k], b[k])] == []
    feats = torch.randn(4, with_head.cfg.W, with_head.cfg.feature_size)
    with torch.no_grad():
        x, y = with_head.tokenize_train(feats), without.tokenize_train(feats)
    assert torch.equal(x["ids"], y["ids"]) and torch.equal(x["aux"], y["aux"])
    assert x["reps"].shape == (4, with_head.cfg.max_reps) and torch.equal(y["reps"], y["aux"][:, 2:])


def test_count_views_reach_the_count_head_alone(tiny_run, cache32, tmp_path):
    """Skeleton views that only the count head reads (the default): the run records them, and every
    weight but the count head's is what a run without them trains."""
    run, _ = tiny_run
    out = str(tmp_path / "no-count-views")
    train(cache32, out, TrainConfig(**{**FAST, "count_views": 0}), progress=False, overrides=TINY_VST)
    recorded = [json.load(open(os.path.join(r, "train_config.json")))["count_views"] for r in (run, out)]
    assert recorded == [TrainConfig.count_views, 0] and TrainConfig.count_views > 0
    a, b = load_checkpoint(run).state_dict(), load_checkpoint(out).state_dict()
    differ = {k for k in a if not torch.equal(a[k], b[k])}
    assert differ and all(k.startswith("count.") for k in differ), differ
    # one count-head pass over the batch's windows and the count views' windows; the other losses as without
    model = load_checkpoint(run)
    cache = Cache.open(cache32)
    clips = cache.split("train")
    views, flips = _features(model, cache, clips, 1, 0, False, "")
    model.train()
    batch = FeatureWindowSampler(views, clips, flips, model.cfg, Augment(), seed=5).sample(8)
    more = FeatureWindowSampler(views, clips, flips, model.cfg, Augment(), seed=6).sample(3)
    tc = TrainConfig(**{**FAST, "feature_dropout": 0.0})
    calls, stats = [], []
    for b in (batch, {**batch, "count_feats": more["feats"], "count_reps": more["reps"]}):
        m = copy.deepcopy(model)  # a training-mode pass moves the codebook: each pass from the same state
        m.count.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
        torch.manual_seed(0)  # and the heads' dropout the same
        with torch.no_grad():
            stats.append(token_losses(m, b, tc)[1])
    plain, both = stats
    assert calls == [16, 22]
    assert {k: v for k, v in plain.items() if k != "count"} == {k: v for k, v in both.items() if k != "count"}
    assert plain["count"] != both["count"]
    r = run_cli("train", "vst", "--data", cache32, "--protocol", "xsub", "--out", out, "--count-views", "13")
    assert r.returncode == 2 and r.stderr.strip().endswith("error: --count-views 13 out of range 0..12"), r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_without_2d_skeletons_the_encoder_keeps_appearance_features(cache32, tmp_path):
    """Videos without 2D skeletons (NTU RGB videos alone) cannot teach the pose branch: it is off."""
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink(os.path.join(cache32, "frames.u8"), cache / "frames.u8")
    index = json.load(open(os.path.join(cache32, "index.json")))
    index["data"] = str(tmp_path / "videos-only")  # no skeletons/ folder there
    json.dump(index, open(cache / "index.json", "w"))
    out = str(tmp_path / "run")
    train(str(cache), out, TrainConfig(**{**FAST, "minutes": 0.0}), progress=False, overrides=TINY_VST)
    cfg = load_checkpoint(out, "last").cfg
    assert cfg.pose_joints == 0 and cfg.appearance and cfg.feature_size == TINY_VST["D"]
    assert json.load(open(os.path.join(out, "train_config.json")))["count_views"] == 0  # joints: not this feature
    with pytest.raises(ValueError, match="--skeleton-views needs .* has no 2D skeletons"):  # nothing to see them from
        train(
            str(cache),
            str(tmp_path / "views"),
            TrainConfig(**{**FAST, "skeleton_views": 1}),
            progress=False,
            overrides=TINY_VST,
        )
    assert not os.path.exists(tmp_path / "views")


def test_held_out_performers_are_not_trained_on(cache32, tmp_path):
    """--hold-out keeps whole training performers out of the VST (the language model calibrates on
    them) and records them in the run: 18 of the 36 training clips remain, 3 steps of 8 an epoch."""
    from vst.run_record import held_out

    out = str(tmp_path / "run")
    tc = TrainConfig(**{**FAST, "hold_out": 0.5, "frame_steps": 4, "epochs": 2, "eval_every_epochs": 2})
    result = train(cache32, out, tc, progress=False, overrides=TINY_VST)
    assert result["steps"] == 2 * 3
    assert json.load(open(os.path.join(out, "train_config.json")))["held_out"] == ["P002"] == sorted(held_out(out))
    assert held_out(str(tmp_path / "nothing")) == set()


def test_skeleton_views_join_the_encoder_views_in_stage_two(cache32, tiny_run, tmp_path):
    from vst.train import _skeleton_views

    run, _ = tiny_run
    model = load_checkpoint(run)
    cache = Cache.open(cache32)
    clips = cache.split("train")
    plain = _features(model, cache, clips[:3], 1, 0, False, "")[0][0]
    tc = TrainConfig(**{**FAST, "skeleton_views": 2})
    views, flips = _skeleton_views(cache, clips[:3], model.cfg, tc, plain, False, tc.skeleton_views)
    assert len(views) == len(flips) == 2 and all(len(v) == 3 for v in views)
    assert all(f.shape == p.shape for v in views for f, p in zip(v, plain))
    counted, _ = _skeleton_views(cache, clips[:3], model.cfg, tc, plain, False, 2, 2000)  # the count head's own draws
    assert all(not torch.equal(a, b) for v, w in zip(views, counted) for a, b in zip(v, w))
    out = str(tmp_path / "run")
    # 10 stage-2 steps: torch's OneCycleLR alone would divide by zero (one warm-up step)
    tc = TrainConfig(**{**FAST, "frame_steps": 4, "epochs": 2, "eval_every_epochs": 2, "skeleton_views": 1})
    assert train(cache32, out, tc, progress=False, overrides=TINY_VST)["steps"] == 2 * 5
    assert json.load(open(os.path.join(out, "train_config.json")))["skeleton_views"] == 1
    # unset: the cross-view protocol gets them (the tiny VST's feature is the joints alone), X-Sub none
    from vst.train import SKELETON_VIEWS_XVIEW

    out = str(tmp_path / "xview")
    tc = TrainConfig(**{**FAST, "protocol": "xview", "frame_steps": 4, "epochs": 2, "eval_every_epochs": 2})
    assert tc.skeleton_views is None
    train(cache32, out, tc, progress=False, overrides=TINY_VST)
    assert json.load(open(os.path.join(out, "train_config.json")))["skeleton_views"] == SKELETON_VIEWS_XVIEW == 6
    assert json.load(open(os.path.join(run, "train_config.json")))["skeleton_views"] == 0


@pytest.mark.slow
def test_resume_continues_where_it_stopped(cache32, tmp_path):
    out = str(tmp_path / "run")
    first = train(cache32, out, TrainConfig(**{**FAST, "minutes": 0.0}), progress=False, overrides=TINY_VST)
    assert first["stopped_early"] and first["steps"] == 1
    second = train(cache32, out, TrainConfig(**FAST), resume=True, progress=False)
    assert not second["stopped_early"] and second["steps"] == 200
    steps = [(h["stage"], h["step"]) for h in map(json.loads, open(os.path.join(out, "history.jsonl")))]
    assert steps == [("frames", 1), ("frames", 150), ("tokens", 100), ("tokens", 200)]


@pytest.mark.slow
def test_eval_and_glossary_write_all_outputs(cache32, tiny_run):
    run, _ = tiny_run
    r = run_cli("eval", "vst", "--run", run, "--data", cache32, "--protocol", "xsub")
    assert r.returncode == 0, r.stderr
    assert "top-1" in r.stdout and "token stability" in r.stdout
    metrics = json.load(open(os.path.join(run, "eval", "xsub", "metrics.json")))
    assert metrics["clips"] == 18 and set(metrics["per_class"]) == {"8", "9", "23"}
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1 and 0 < metrics["codes_used"] <= 1
    assert metrics["tokens_per_second"] == pytest.approx(8 * 15 / 8)
    # hand waving is one-sided and repeated: both attribute heads have targets on these clips
    assert all(0 <= v <= 1 for v in metrics["attributes"].values()) and "attributes read per window" in r.stdout
    png = os.path.join(run, "eval", "xsub", "confusion.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # the mirror reading: the same clips, tokens and attributes; the label from each window and its mirror image
    r = run_cli("eval", "vst", "--run", run, "--data", cache32, "--protocol", "xsub", "--mirror")
    assert r.returncode == 0, r.stderr
    assert "(mirror reading)" in r.stdout
    mirrored = json.load(open(os.path.join(run, "eval", "xsub-mirror", "metrics.json")))
    assert mirrored["mirror"] and not metrics["mirror"] and mirrored["clips"] == metrics["clips"]
    for key in ("codes_used", "perplexity", "token_stability", "attributes"):
        assert mirrored[key] == metrics[key], key
    r = run_cli("vst", "glossary", "--run", run, "--data", cache32)
    assert r.returncode == 0, r.stderr
    glossary = json.load(open(os.path.join(run, "glossary.json")))
    assert glossary["codes_seen"] >= 1
    entry = next(iter(glossary["codes"].values()))
    assert {"gloss", "classes", "position_mean", "attributes"} <= set(entry)
    assert any(word in entry["gloss"] for word in ("hand", "foot", "head", "body"))
    md = open(os.path.join(run, "glossary.md")).read()
    assert md.startswith("# Codebook glossary") and "| act_" in md


def test_eval_refuses_a_cache_of_the_wrong_resolution(tiny_run, tiny_dataset, tmp_path):
    run, _ = tiny_run
    prepare(tiny_dataset, "xview", str(tmp_path / "c48"), size=48, workers=2, progress=False)
    r = run_cli("eval", "vst", "--run", run, "--data", str(tmp_path / "c48"))
    assert r.returncode == 2 and "--size 32" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("eval", "vst", "--run", str(tmp_path / "nothing"), "--data", str(tmp_path / "c48"))
    assert r.returncode == 2 and "no VST checkpoint" in r.stderr


def test_pose_vst_reads_skeletons_and_the_front_end_relative_to_the_person(tiny_pose_run, tiny_run, cache32):
    import torch

    from vst.cache import Cache
    from vst.model import load_checkpoint
    from vst.windows import clip_input, clip_windows

    run, result = tiny_pose_run
    model = load_checkpoint(run)
    assert model.encoder is None and model.cfg.frontend == "pose" and model.cfg.feature_size == 25 * 3
    cache = Cache.open(cache32)
    clip = cache.split("test")[0]
    x = clip_input(model.cfg, cache, clip)
    assert x.shape == (clip["frames"], 75) and x.dtype == np.float32
    # where the person stands and how large they appear do not change what the VST reads
    moved = x.reshape(len(x), 25, 3).copy()
    moved[..., :2] = moved[..., :2] * 1.7 + np.array([0.4, -0.2], np.float32)
    a, b = clip_windows(model, x), clip_windows(model, moved.reshape(len(x), -1))
    assert torch.equal(a["ids"], b["ids"]) and torch.allclose(a["probs"], b["probs"], atol=1e-4)
    with pytest.raises(ValueError, match="no frame encoder"):
        model.encode_frames(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
    # the held-out clips' rendered frames through the pretrained pose front end, as a camera's would go
    r = run_cli("eval", "front-end", "--run", run, "--data", cache32, "--protocol", "xsub", "--max-clips", "4")
    assert r.returncode == 0 and "through the pose front end: 4 clips" in r.stdout, r.stdout + r.stderr
    m = json.load(open(os.path.join(run, "eval", "xsub-front-end", "metrics.json")))
    assert m["reading"] == "front-end" and m["clips"] == 4 and 0 <= m["top1"] <= m["top5"] <= 1
    assert os.path.exists(os.path.join(run, "eval", "xsub-front-end", "confusion.png"))
    r = run_cli("eval", "front-end", "--run", tiny_run[0], "--data", cache32)
    assert r.returncode == 2 and "eval vst evaluates it" in r.stderr and "Traceback" not in r.stderr
