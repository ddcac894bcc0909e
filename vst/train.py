"""VST training, in two stages that follow the two-engine design:

1. frames: the FrameEncoder learns from single augmented frames taken inside the action
   (cross-entropy on the action; on synthetic data also the limb side and the frame's 2D
   skeleton, a dense target that makes the features about the body rather than the clothes,
   regressed from the appearance features and located by the heatmap branch whose joints are
   the default run-time feature). A frame costs one
   encoder pass here, against W passes inside a window: the encoder sees ~30x more clips
   for the same CPU time.
2. tokens: every training clip is encoded once per augmented view and its features cached (as
   the runtime caches them); the TemporalTokenizer, VectorQuantizer and semantic head then
   train on pairs of windows S frames apart over those features, with temporal speed jitter.
   Losses: cross-entropy of the semantic head on quantized tokens; the same head on the
   continuous embeddings (a direct gradient; training only); VQ commitment; a temporal-
   consistency term (contrastive, see `consistency_loss`); auxiliary heads for limb side and
   repetitions on synthetic data.

tqdm progress, periodic evaluation, best checkpoint kept, resumable (per stage), seeded; CPU by
default, CUDA when present. Run folder: config.json + model.safetensors (best), last.safetensors
+ last_state.pt (resume), train_config.json, history.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from vst.cache import Cache, spread
from vst.evaluate import check_cache, evaluate, stability_text
from vst.model import SIZES, VST, VSTConfig, load_checkpoint, save_checkpoint
from vst.ntu import DatasetError, held_out_performers, performer_of
from vst.windows import (
    Augment,
    FeatureWindowSampler,
    augmented_input,
    clip_input,
    encode_clip,
    frame_batches,
    skeleton_view,
)


@dataclass
class TrainConfig:
    protocol: str = "xsub"
    size: str = "small"
    frame_steps: int = 6000  # stage 1
    frame_batch: int = 64
    frame_lr: float = 2e-3
    pose_weight: float = 1.0  # stage 1: regress the frame's 2D skeleton (synthetic data)
    views: int = 6  # augmented feature views per training clip for stage 2 (view 0 is unaugmented)
    # stage-2 views made from synthetic clips' 3D skeletons seen from other azimuths (pose-only features);
    # None: SKELETON_VIEWS_XVIEW under the cross-view protocol when the feature is the joints alone, else 0
    skeleton_views: int | None = None
    skeleton_azimuth: float = 60.0  # largest camera move around the room, degrees either way
    skeleton_noise: float = 0.01  # joint noise of those views, normalised image units
    # skeleton views (as above) that only the count head reads, for pose-only features: count_share of its
    # windows come from them (the tokens and other heads never see them), so it learns to count from joints
    # as noisy as a new performer's: 80.8 -> 84.9 % of the repeated X-Sub test windows (docs/experiments.md)
    count_views: int = 6
    count_share: float = 0.3
    epochs: int = 100  # stage 2, over the training clips
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    commit_weight: float = 0.1
    consistency_weight: float = 0.1
    temperature: float = 0.1
    z_head_weight: float = 0.5
    aux_weight: float = 0.2
    feature_dropout: float = 0.1
    eval_every_epochs: int = 25
    eval_clips: int = 400  # test clips used by the periodic evaluation
    loader_workers: int = -1  # stage-1 sampling processes; -1: none on the CPU, up to 8 beside a GPU
    minutes: float | None = None  # stop after this much time (resume later with --resume)
    seed: int = 0
    hold_out: float = 0.0  # share of training performers kept out (the language model then calibrates on them)


# Cross-view (xview: the test camera is at an azimuth no training clip has) is what views of the
# training takes from other azimuths are for; 6 of 3, 6 and 12 read best (docs/experiments.md).
# Under X-Sub they cost ~1.6 points of plain top-1 (the test performers are seen from the training cameras).
SKELETON_VIEWS_XVIEW = 6


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def consistency_loss(z1: torch.Tensor, z2: torch.Tensor, shift: int, temperature: float) -> torch.Tensor:
    """Windows k (z1) and k+1 (z2) overlap: z1[:, shift:] and z2[:, :T-shift] cover the same frames.
    Contrastive (InfoNCE): each overlap segment must match its counterpart more than any other
    segment in the batch. A plain distance is minimised by one constant token for everything
    (tried: the codebook collapses to a single code)."""
    a = z1[:, shift:].reshape(-1, z1.shape[-1])
    p = z2[:, : z2.shape[1] - shift].reshape(-1, z2.shape[-1])
    logits = a @ p.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def token_losses(model: VST, batch: dict, tc: TrainConfig, progress: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Stage-2 losses on a batch of feature spans [B, W+S, D]. progress in [0, 1]: the consistency
    term ramps in over the first 20 % so the tokens first learn to carry the action."""
    cfg = model.cfg
    feats = F.dropout(batch["feats"], tc.feature_dropout, model.training)
    b = feats.shape[0]

    def windows_of(spans: torch.Tensor) -> torch.Tensor:  # [B, W+S, D] -> the pairs' first windows, then their second
        return torch.cat([spans[:, : cfg.W], spans[:, cfg.S : cfg.S + cfg.W]])

    windows = windows_of(feats)
    more = batch.get("count_feats")  # windows for the count head alone: one pass over both sets
    out = model.tokenize_train(windows, counts=more is None)
    labels = batch["label"].repeat(2)
    ce = F.cross_entropy(out["logits"], labels, label_smoothing=0.05)
    ce_z = F.cross_entropy(out["z_logits"], labels, label_smoothing=0.05)
    consistency = consistency_loss(out["z"][:b], out["z"][b:], cfg.shift, tc.temperature)
    loss = (
        ce
        + tc.z_head_weight * ce_z
        + tc.commit_weight * out["commit"]
        + tc.consistency_weight * min(1.0, progress / 0.2) * consistency
    )
    stats = {
        "ce": ce.item(),
        "commit": out["commit"].item(),
        "consistency": consistency.item(),
        "acc": (out["logits"].argmax(-1) == labels).float().mean().item(),
    }
    if model.aux is not None:
        side, reps = batch["side"].repeat(2), batch["reps"].t().reshape(-1)  # [first windows, second windows]
        aux = out["aux"]
        aux_loss = torch.zeros((), device=loss.device)
        if (side >= 0).any():
            aux_loss = aux_loss + F.cross_entropy(aux[:, :2][side >= 0], side[side >= 0])
        if (reps >= 0).any():
            aux_loss = aux_loss + F.cross_entropy(aux[:, 2:][reps >= 0], reps[reps >= 0])
        loss = loss + tc.aux_weight * aux_loss
        stats["aux"] = aux_loss.item()
        if more is not None:
            out["reps"] = model.count(model.window_features(torch.cat([windows, windows_of(more)])))
            reps = torch.cat([reps, batch["count_reps"].t().reshape(-1)])
        if model.count is not None and (reps >= 0).any():  # its own head and gradients: the tokens do not see it
            count_loss = F.cross_entropy(out["reps"][reps >= 0], reps[reps >= 0])
            loss = loss + count_loss
            stats["count"] = count_loss.item()
    return loss, stats


class _Run:
    """State shared by the stages: model, folder, clock, history, resume state."""

    def __init__(self, out: str, model: VST, tc: TrainConfig, device):
        self.out, self.model, self.tc, self.device = out, model, tc, device
        self.t0 = time.monotonic()
        self.history = open(os.path.join(out, "history.jsonl"), "a")

    def out_of_time(self) -> bool:
        return self.tc.minutes is not None and time.monotonic() - self.t0 > self.tc.minutes * 60

    def save_state(self, stage: str, step: int, opt, sched, best: float, best_record: dict | None, **extra) -> None:
        save_checkpoint(self.model, self.out, "last", {"stage": stage, "step": step})
        torch.save(
            {
                "stage": stage,
                "step": step,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "best": best,
                "best_record": best_record,
                "train_config": asdict(self.tc),
                "torch_rng": torch.get_rng_state(),
                **extra,
            },
            os.path.join(self.out, "last_state.pt"),
        )

    def log(self, record: dict) -> None:
        self.history.write(json.dumps(record) + "\n")
        self.history.flush()


def one_cycle(opt, max_lr: float, total: int):
    """The one-cycle schedule of both stages: 10 % warm-up. torch's OneCycleLR divides by zero
    when the warm-up is exactly one step (10 steps in all), so that run warms up over 1.5."""
    pct = 0.1 if 0.1 * total != 1 else 0.15
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=pct)


def _stage_frames(run: _Run, cache: Cache, clips: list[dict], state: dict | None, progress: bool) -> bool:
    """Stage 1; returns False when stopped by the time limit."""
    from tqdm import tqdm

    model, tc = run.model, run.tc
    # classes + side + 25 2D joints; discarded after this stage
    head = torch.nn.Linear(model.cfg.D, len(model.cfg.classes) + 2 + 50).to(run.device)
    params = list(model.encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=tc.frame_lr, weight_decay=tc.weight_decay)
    sched = one_cycle(opt, tc.frame_lr, tc.frame_steps)
    step = 0
    if state is not None and state["stage"] == "frames":
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        head.load_state_dict(state["frame_head"])
    workers = tc.loader_workers
    if workers < 0:
        workers = 0 if run.device.type == "cpu" else max(0, min(8, (os.cpu_count() or 1) - 2))
    batches = frame_batches(
        cache, clips, model.cfg, tc.frame_batch, tc.seed * 1000 + step, workers, pin=run.device.type == "cuda"
    )
    model.train()
    n_cls = len(model.cfg.classes)
    bar = tqdm(total=tc.frame_steps, initial=step, desc="stage 1/2 frames", unit="step", disable=not progress)
    running: dict[str, float] = {}
    first: dict[str, float] = {}
    while step < tc.frame_steps:
        batch = {k: v.to(run.device, non_blocking=True) for k, v in next(batches).items()}
        appearance, joints = model.encoder.parts(batch["frames"])
        logits = head(appearance)
        loss = F.cross_entropy(logits[:, :n_cls], batch["label"], label_smoothing=0.05)
        side, has_pose = batch["side"], batch["has_pose"]
        if (side >= 0).any():
            loss = loss + 0.2 * F.cross_entropy(logits[:, n_cls : n_cls + 2][side >= 0], side[side >= 0])
        if has_pose.any():  # the pose target makes the features about the body, not the clothes
            target = batch["pose"][has_pose]
            pose = logits[:, n_cls + 2 :].reshape(-1, 25, 2)
            loss = loss + tc.pose_weight * F.smooth_l1_loss(pose[has_pose], target, beta=0.05) * 10
            if joints is not None:  # the heatmap branch's joints
                loss = loss + tc.pose_weight * F.smooth_l1_loss(joints[has_pose], target, beta=0.02) * 10
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        acc = (logits[:, :n_cls].argmax(-1) == batch["label"]).float().mean().item()
        running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in {"loss": loss.item(), "acc": acc}.items()}
        first = first or {"first_loss": loss.item()}
        bar.update()
        bar.set_postfix(loss=f"{running['loss']:.3f}", acc=f"{running['acc']:.2f}")
        if run.out_of_time():
            break
    bar.close()
    run.log({"stage": "frames", "step": step, "elapsed_s": round(time.monotonic() - run.t0, 1), **first, **running})
    finished = step >= tc.frame_steps
    run.save_state(
        "tokens" if finished else "frames",
        0 if finished else step,
        opt,
        sched,
        -1.0,
        None,
        frame_head=head.state_dict(),
    )
    return finished


@torch.no_grad()
def _features(model: VST, cache: Cache, clips: list[dict], views: int, seed: int, progress: bool, desc: str):
    """Per view, per clip: encoder features [n, D]; view 0 unaugmented, the others augmented
    (for a pose front-end VST: pose features, the others other camera views with the front end's
    error, `vst.windows.pose_view`)."""
    from tqdm import tqdm

    model.eval()
    out, flips = [], []
    for v in range(views):
        feats, flipped = [], []
        for i, clip in enumerate(tqdm(clips, desc=f"{desc} view {v + 1}/{views}", unit="clip", disable=not progress)):
            f = False
            if v:
                frames, f = augmented_input(model.cfg, cache, clip, np.random.default_rng((seed, v, i)))
            else:
                frames = clip_input(model.cfg, cache, clip)
            feats.append(encode_clip(model, frames).cpu())
            flipped.append(f)
        out.append(feats)
        flips.append(flipped)
    return out, flips


def _skeleton_views(
    cache: Cache,
    clips: list[dict],
    cfg: VSTConfig,
    tc: TrainConfig,
    plain: list,
    progress: bool,
    n: int,
    stream: int = 1000,
    desc: str = "skeleton view",
):
    """n views per clip from its 3D skeleton (`skeleton_view`), drawn from random stream `stream`;
    a clip without one keeps its unaugmented encoder features."""
    from tqdm import tqdm

    out, flips = [], []
    for v in range(n):
        feats, flipped = [], []
        for i, clip in enumerate(tqdm(clips, desc=f"{desc} {v + 1}/{n}", unit="clip", disable=not progress)):
            got = skeleton_view(
                cache,
                clip,
                cfg,
                np.random.default_rng((tc.seed, stream + v, i)),
                Augment(),
                tc.skeleton_azimuth,
                tc.skeleton_noise,
            )
            feats.append(got[0] if got else plain[i])
            flipped.append(got[1] if got else False)
        out.append(feats)
        flips.append(flipped)
    return out, flips


def _stage_tokens(
    run: _Run, cache: Cache, train_clips, eval_clips, state: dict | None, progress: bool
) -> tuple[bool, dict | None]:
    from tqdm import tqdm

    model, tc = run.model, run.tc
    views, flips = _features(model, cache, train_clips, tc.views, tc.seed, progress, "encode train")
    if tc.skeleton_views:  # `train` refuses them unless the feature is the joints alone
        more, more_flips = _skeleton_views(cache, train_clips, model.cfg, tc, views[0], progress, tc.skeleton_views)
        views, flips = views + more, flips + more_flips
    count_batch = round(tc.batch * tc.count_share / max(1e-9, 1 - tc.count_share)) if tc.count_views else 0
    if count_batch:  # `train` sets no count views unless there is a count head and the feature is the joints alone
        count_views = _skeleton_views(
            cache, train_clips, model.cfg, tc, views[0], progress, tc.count_views, 2000, "count view"
        )
    eval_feats = _features(model, cache, eval_clips, 1, tc.seed, progress, "encode test")[0][0]
    params = [p for n, p in model.named_parameters() if not n.startswith(("encoder.", "count."))]
    count_params = list(model.count.parameters()) if model.count is not None else []
    steps_per_epoch = max(1, math.ceil(len(train_clips) / tc.batch))
    total = steps_per_epoch * tc.epochs
    opt = torch.optim.AdamW(params + count_params, lr=tc.lr, weight_decay=tc.weight_decay)
    sched = one_cycle(opt, tc.lr, total)
    step, best, best_record = 0, -1.0, None
    if state is not None and state["stage"] == "tokens" and state["step"] > 0:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, best, best_record = state["step"], state["best"], state["best_record"]
    sampler = FeatureWindowSampler(
        [[f.to(run.device) for f in view] for view in views],
        train_clips,
        flips,
        model.cfg,
        Augment(),
        seed=tc.seed * 1000 + step + 1,
    )
    if count_batch:  # its own random stream: the main sampler draws what it draws without it
        count_sampler = FeatureWindowSampler(
            [[f.to(run.device) for f in view] for view in count_views[0]],
            train_clips,
            count_views[1],
            model.cfg,
            Augment(),
            seed=(tc.seed * 1000 + step + 1, 2000),
        )
    bar = tqdm(total=total, initial=step, desc="stage 2/2 tokens", unit="step", disable=not progress)
    running: dict[str, float] = {}
    first: dict[str, float] = {}
    model.train()
    if model.encoder is not None:
        model.encoder.eval()
    while step < total:
        batch = {k: v.to(run.device) for k, v in sampler.sample(tc.batch).items()}
        if count_batch:
            more = count_sampler.sample(count_batch)
            batch.update(count_feats=more["feats"].to(run.device), count_reps=more["reps"].to(run.device))
        loss, stats = token_losses(model, batch, tc, step / total)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        if count_params:  # clipped apart, so that the other heads train exactly as without it
            torch.nn.utils.clip_grad_norm_(count_params, 2.0)
        opt.step()
        sched.step()
        step += 1
        running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in stats.items()}
        first = first or {"first_ce": stats["ce"]}
        bar.update()
        bar.set_postfix(loss=f"{running['ce']:.3f}", acc=f"{running['acc']:.2f}", cons=f"{running['consistency']:.2f}")
        out_of_time = run.out_of_time()
        epoch = step / steps_per_epoch
        if (step % steps_per_epoch == 0 and round(epoch) % tc.eval_every_epochs == 0) or step == total or out_of_time:
            m = evaluate(model, cache, eval_clips, features=eval_feats)
            model.train()
            if model.encoder is not None:
                model.encoder.eval()
            record = {
                "stage": "tokens",
                "step": step,
                "epoch": round(epoch, 2),
                "elapsed_s": round(time.monotonic() - run.t0, 1),
                **first,
                **{k: round(v, 4) for k, v in running.items()},
                **{k: m[k] for k in ("top1", "window_top1", "codes_used", "perplexity", "token_stability")},
            }
            run.log(record)
            bar.write(
                f"step {step} epoch {epoch:.0f}: test top-1 {m['top1']:.3f} (windows {m['window_top1']:.3f}), "
                f"codes {m['codes_used']:.0%}, stability {stability_text(m['token_stability'])}"
            )
            if m["top1"] >= best:
                best, best_record = m["top1"], record
                save_checkpoint(model, run.out, "model", {"step": step, "top1_subset": best})
            run.save_state("tokens", step, opt, sched, best, best_record)
        if out_of_time:
            bar.close()
            return False, best_record
    bar.close()
    return True, best_record


def training_device() -> torch.device:
    """Where training runs: the first CUDA device when there is one (CUDA_VISIBLE_DEVICES decides),
    else the CPU, which then gets every core. The VST and the language-model fine-tune both use it."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(os.cpu_count() or 1)
    return torch.device("cpu")


def train(
    cache_dir: str,
    out: str,
    tc: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    overrides: dict | None = None,
) -> dict:
    """Train a VST on a prepared cache; returns {'steps', 'seconds', 'best', 'stopped_early'}."""
    device = training_device()
    cache = Cache.open(cache_dir)
    train_clips = cache.split("train", tc.protocol)
    test_clips = cache.split("test", tc.protocol)
    if not train_clips or not test_clips:
        raise DatasetError(f"{cache_dir} has no {'training' if not train_clips else 'test'} clips under {tc.protocol}")
    state_path = os.path.join(out, "last_state.pt")
    state = None
    if resume and os.path.exists(state_path):
        model = load_checkpoint(out, "last")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        # the time limit is this call's; a run from before --hold-out trained on every performer, one from
        # before count views without them
        tc = TrainConfig(**{"hold_out": 0.0, "count_views": 0, **state["train_config"], "minutes": tc.minutes})
        torch.set_rng_state(state["torch_rng"])
    else:
        if tc.size not in SIZES:
            raise ValueError(f"unknown size {tc.size!r}; choose one of {', '.join(SIZES)}")
        classes = sorted({c["action"] for c in train_clips})
        cfg = VSTConfig(
            classes=classes, fps=cache.index["conversion"]["fps"], **{**SIZES[tc.size], **(overrides or {})}
        )
        cfg.aux_side = any(c.get("attributes") for c in train_clips)
        if cfg.frontend == "pose" and not all(cache.has_skeleton(c) for c in train_clips):
            raise DatasetError(
                f"{cache_dir}: the pose front end's VST trains on synthetic skeletons, and some "
                "training clips have none; use --size small for real videos alone"
            )
        if cfg.pose_joints and not any(cache.has_skeleton(c) for c in train_clips):
            cfg.pose_joints, cfg.appearance = (
                0,
                True,
            )  # no 2D skeletons to teach the pose branch (e.g. NTU videos alone)
        seed_everything(tc.seed)
        model = VST(cfg)
    pose_only = bool(model.cfg.pose_joints and not model.cfg.appearance)
    if tc.skeleton_views is None:
        tc = replace(tc, skeleton_views=SKELETON_VIEWS_XVIEW if tc.protocol == "xview" and pose_only else 0)
    if not (pose_only and model.count is not None) or model.cfg.frontend == "pose":  # pose: every view is joints
        tc = replace(tc, count_views=0)  # they are joints, and only the count head reads them
    if tc.skeleton_views and not pose_only:
        raise ValueError(
            "--skeleton-views needs a VST whose feature is the joints alone: "
            + (f"{cache_dir} has no 2D skeletons" if not model.cfg.pose_joints else "this one has appearance features")
        )
    check_cache(cache, model.cfg)
    held = held_out_performers([c["name"] for c in train_clips], tc.hold_out)
    train_clips = [c for c in train_clips if performer_of(c["name"]) not in held]
    test_clips = [c for c in test_clips if c["action"] in model.cfg.classes]
    eval_clips = spread(test_clips, tc.eval_clips, tc.seed)
    model.to(device)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "train_config.json"), "w") as f:
        json.dump(
            {**asdict(tc), "cache": os.path.abspath(cache_dir), "classes": model.cfg.classes, "held_out": sorted(held)},
            f,
            indent=1,
        )
    run = _Run(out, model, tc, device)
    done = True
    best = state["best_record"] if state else None
    if model.encoder is None:
        state = state if state is None or state["stage"] == "tokens" else None  # nothing to train per frame
    elif state is None or state["stage"] == "frames":
        done = _stage_frames(run, cache, train_clips, state, progress)
        state = None
    if done:
        done, best = _stage_tokens(run, cache, train_clips, eval_clips, state, progress)
    run.history.close()
    steps = json.loads(open(os.path.join(out, "history.jsonl")).readlines()[-1])["step"]
    return {"steps": steps, "seconds": round(time.monotonic() - run.t0, 1), "best": best, "stopped_early": not done}
