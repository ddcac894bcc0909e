"""VST training: semantic-head cross-entropy on quantized tokens, VQ commitment, a temporal-
consistency term (windows shifted by S frames agree on their overlap), and auxiliary heads for
the synthetic motion attributes (limb side, repetitions). tqdm progress, periodic evaluation,
best checkpoint kept, resumable, seeded; CPU by default, CUDA when present.

Run folder: config.json + model.safetensors (best), last.safetensors + last_state.pt (resume),
train_config.json, history.jsonl.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vst.cache import Cache
from vst.evaluate import check_cache, evaluate
from vst.model import SIZES, VST, VSTConfig, load_checkpoint, save_checkpoint
from vst.ntu import DatasetError
from vst.windows import Augment, TrainSampler


@dataclass
class TrainConfig:
    protocol: str = "xsub"
    size: str = "small"
    epochs: int = 30
    batch: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    commit_weight: float = 0.1
    consistency_weight: float = 0.5
    temperature: float = 0.1  # of the contrastive consistency term
    z_head_weight: float = 0.5
    aux_weight: float = 0.2
    eval_every_epochs: int = 3
    eval_clips: int = 160  # test clips used by the periodic evaluation (the final one uses all)
    minutes: float | None = None  # stop early (and still evaluate) after this much time
    seed: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def consistency_loss(z1: torch.Tensor, z2: torch.Tensor, shift: int, temperature: float) -> torch.Tensor:
    """Windows k (z1) and k+1 (z2) overlap: z1[:, shift:] and z2[:, :T-shift] cover the same frames.
    Contrastive (InfoNCE): each overlap segment must match its counterpart more than any other
    segment in the batch. A plain distance would be minimised by one constant token for everything."""
    a = z1[:, shift:].reshape(-1, z1.shape[-1])
    p = z2[:, : z2.shape[1] - shift].reshape(-1, z2.shape[-1])
    logits = a @ p.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def losses(model: VST, batch: dict, tc: TrainConfig, progress: float = 1.0) -> tuple[torch.Tensor, dict]:
    """progress in [0, 1]: the consistency term ramps up over the first 20 % of training, so the
    tokens first learn to carry the action."""
    cfg = model.cfg
    frames = batch["frames"]
    b, span = frames.shape[:2]
    feats = model.encode_frames(frames.reshape(b * span, *frames.shape[2:])).reshape(b, span, -1)
    both = torch.cat([feats[:, : cfg.W], feats[:, cfg.S: cfg.S + cfg.W]])  # window k and k+1
    out = model.tokenize_train(both)
    labels = batch["label"].repeat(2)
    ce = F.cross_entropy(out["logits"], labels, label_smoothing=0.05)
    ce_z = F.cross_entropy(out["z_logits"], labels, label_smoothing=0.05)
    consistency = consistency_loss(out["z"][:b], out["z"][b:], cfg.shift, tc.temperature)
    ramp = min(1.0, progress / 0.2)
    loss = ce + tc.z_head_weight * ce_z + tc.commit_weight * out["commit"] + tc.consistency_weight * ramp * consistency
    stats = {"ce": ce.item(), "commit": out["commit"].item(), "consistency": consistency.item(),
             "acc": (out["logits"].argmax(-1) == labels).float().mean().item()}
    if model.aux is not None:
        aux = out["aux"]
        side, reps = batch["side"].repeat(2), batch["reps"].repeat(2)
        aux_loss = torch.zeros(())
        if (side >= 0).any():
            aux_loss = aux_loss + F.cross_entropy(aux[:, :2][side >= 0], side[side >= 0])
        if (reps >= 0).any():
            aux_loss = aux_loss + F.cross_entropy(aux[:, 2:][reps >= 0], reps[reps >= 0])
        loss = loss + tc.aux_weight * aux_loss
        stats["aux"] = aux_loss.item()
    return loss, stats


def train(cache_dir: str, out: str, tc: TrainConfig, resume: bool = False, progress: bool = True,
          overrides: dict | None = None) -> dict:
    """Train a VST on a prepared cache; returns the final evaluation of the best checkpoint."""
    from tqdm import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    cache = Cache.open(cache_dir)
    train_clips = cache.split("train", tc.protocol)
    test_clips = cache.split("test", tc.protocol)
    if not train_clips or not test_clips:
        raise DatasetError(f"{cache_dir} has no {'training' if not train_clips else 'test'} clips under {tc.protocol}")
    classes = sorted({c["action"] for c in train_clips})
    state_path = os.path.join(out, "last_state.pt")
    if resume and os.path.exists(state_path):
        model = load_checkpoint(out, "last").train()
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        tc = TrainConfig(**{**state["train_config"], "minutes": tc.minutes})  # the time limit is this call's
    else:
        if tc.size not in SIZES:
            raise ValueError(f"unknown size {tc.size!r}; choose one of {', '.join(SIZES)}")
        cfg = VSTConfig(classes=classes, fps=cache.index["conversion"]["fps"], **{**SIZES[tc.size], **(overrides or {})})
        has_attrs = any(c.get("attributes") for c in train_clips)
        cfg.aux_side = has_attrs
        seed_everything(tc.seed)
        model = VST(cfg)
        state = None
    cfg = model.cfg
    check_cache(cache, cfg)
    test_clips = [c for c in test_clips if c["action"] in cfg.classes]
    model.to(device).train()
    steps_per_epoch = max(1, math.ceil(len(train_clips) / tc.batch))
    total_steps = steps_per_epoch * tc.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=total_steps, pct_start=0.1)
    step, best, best_metrics = 0, -1.0, None
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, best, best_metrics = state["step"], state["best"], state["best_metrics"]
        torch.set_rng_state(state["torch_rng"])
    sampler = TrainSampler(cache, train_clips, cfg, Augment(), seed=tc.seed * 1000 + step)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "train_config.json"), "w") as f:
        json.dump({**asdict(tc), "cache": os.path.abspath(cache_dir), "classes": cfg.classes}, f, indent=1)
    eval_subset = test_clips[:: max(1, len(test_clips) // tc.eval_clips)][: tc.eval_clips]
    t0 = time.monotonic()
    bar = tqdm(total=total_steps, initial=step, desc=f"train vst {tc.size} {tc.protocol}", unit="step", disable=not progress)
    history = open(os.path.join(out, "history.jsonl"), "a")
    running: dict[str, float] = {}
    stopped_early = False
    while step < total_steps:
        batch = {k: v.to(device) for k, v in sampler.sample(tc.batch).items()}
        loss, stats = losses(model, batch, tc, step / total_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        step += 1
        running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in stats.items()}
        bar.update()
        bar.set_postfix(loss=f"{running['ce']:.3f}", acc=f"{running['acc']:.2f}", cons=f"{running['consistency']:.3f}")
        out_of_time = tc.minutes is not None and time.monotonic() - t0 > tc.minutes * 60
        epoch_end = step % steps_per_epoch == 0
        if (epoch_end and (step // steps_per_epoch) % tc.eval_every_epochs == 0) or step == total_steps or out_of_time:
            m = evaluate(model, cache, eval_subset)
            model.train()
            record = {"step": step, "epoch": step / steps_per_epoch, "elapsed_s": round(time.monotonic() - t0, 1),
                      **{k: round(v, 4) for k, v in running.items()},
                      **{k: m[k] for k in ("top1", "window_top1", "codes_used", "perplexity", "token_stability")}}
            history.write(json.dumps(record) + "\n")
            history.flush()
            bar.write(f"step {step} epoch {record['epoch']:.1f}: test top-1 {m['top1']:.3f} (windows {m['window_top1']:.3f}), "
                      f"codes {m['codes_used']:.0%}, stability {m['token_stability']:.3f}")
            if m["top1"] >= best:
                best, best_metrics = m["top1"], record
                save_checkpoint(model, out, "model", {"step": step, "top1_subset": best})
            save_checkpoint(model, out, "last", {"step": step})
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "best": best,
                        "best_metrics": best_metrics, "train_config": asdict(tc), "torch_rng": torch.get_rng_state()},
                       state_path)
        if out_of_time:
            stopped_early = True
            bar.write(f"stopping after {tc.minutes} minutes (--minutes)")
            break
    bar.close()
    history.close()
    return {"steps": step, "seconds": round(time.monotonic() - t0, 1), "best": best_metrics, "stopped_early": stopped_early}
