"""VST evaluation on a protocol's test split: semantic-head top-1/top-5 (per clip: mean of the
window probabilities; and per window), per-class accuracy, a confusion-matrix PNG, codebook health
(codes used, perplexity), token stability between consecutive overlapping windows, tokens per
second of video and, on synthetic data, how well the tokens carry the motion attributes the
explanations state (the attribute heads' limb side and the repetitions each window holds)."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from vst.cache import Cache
from vst.model import read_count
from vst.windows import clip_input, clip_targets, clip_windows, feature_windows


def stability_text(value: float | None) -> str:
    """Token stability for people: a share, or why there is none."""
    return "n/a (no clip is long enough for two overlapping windows)" if value is None else f"{value:.1%}"


def token_stability(ids: torch.Tensor, shift: int) -> tuple[int, int]:
    """(equal, compared) tokens on the overlap of consecutive windows: window k's tokens from
    `shift` on describe the same frames as window k+1's first T - shift tokens."""
    if ids.shape[0] < 2 or shift >= ids.shape[1]:
        return 0, 0
    a, b = ids[:-1, shift:], ids[1:, : ids.shape[1] - shift]
    return int((a == b).sum()), int(a.numel())


@torch.no_grad()
def evaluate(
    model,
    cache: Cache,
    clips: list[dict],
    progress: bool = False,
    features: list | None = None,
    mirror: bool = False,
    inputs: list | None = None,
) -> dict:
    """Metrics over clips; `features` (per clip, from the frame encoder) skips re-encoding frames;
    `inputs` (per clip) is what the first engine reads in place of `clip_input`'s.
    mirror: the label from the mean of each window's and its mirror image's probabilities
    (`clip_windows`; frames only)."""
    if mirror and features is not None:
        raise ValueError("the mirror reading needs the frames, not cached features")
    from tqdm import tqdm

    cfg = model.cfg
    model.eval()
    n_cls = len(cfg.classes)
    confusion = np.zeros((n_cls, n_cls), np.int64)
    top5 = win_correct = win_total = equal = compared = 0
    attr = {"side": [0, 0], "repetitions": [0, 0]}  # [right, windows with a target]
    all_ids = []
    for i, clip in enumerate(tqdm(clips, desc="eval", unit="clip", disable=not progress)):
        out = (
            feature_windows(model, features[i])
            if features is not None
            else clip_windows(model, inputs[i] if inputs is not None else clip_input(cfg, cache, clip), mirror)
        )
        label = cfg.classes.index(clip["action"])
        probs = out["probs"]
        mean = probs.mean(0)
        confusion[label, int(mean.argmax())] += 1
        top5 += int(label in mean.topk(min(5, n_cls)).indices.tolist())
        win_correct += int((probs.argmax(-1) == label).sum())
        win_total += probs.shape[0]
        e, c = token_stability(out["ids"], cfg.shift)
        equal, compared = equal + e, compared + c
        all_ids.append(out["ids"].reshape(-1))
        if "aux" in out:
            _, side, clip_reps = clip_targets(clip, cfg)
            # counting is only asked of repeated actions: a one-off action's window holds it once
            reps = torch.tensor(
                [clip_targets(clip, cfg, (s, s + cfg.W))[2] if clip_reps > 0 else -1 for s in out["starts"]]
            )
            for key, pred, target in (
                ("side", out["aux"][:, :2].argmax(-1), torch.full_like(reps, side)),
                ("repetitions", read_count(out["reps"]) - 1, reps),
            ):  # reps: count - 1
                known = target >= 0
                attr[key][0] += int((pred[known] == target[known]).sum())
                attr[key][1] += int(known.sum())
    ids = torch.cat(all_ids)
    used, perplexity = model.quantizer.usage(ids)
    total = int(confusion.sum())
    per_class = {
        str(a): (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
        for i, a in enumerate(cfg.classes)
    }
    return {
        "clips": total,
        "top1": float(np.trace(confusion) / max(total, 1)),
        "top5": top5 / max(total, 1),
        "window_top1": win_correct / max(win_total, 1),
        "windows": win_total,
        "per_class": per_class,
        "codes_used": used,
        "perplexity": perplexity,
        "token_stability": equal / compared if compared else None,
        "mirror": mirror,
        "tokens_per_window": cfg.T,
        "tokens_per_second": cfg.T * cfg.fps / cfg.S,
        "confusion": confusion.tolist(),
        # window accuracy of the attribute heads on the quantized tokens (side: one-sided actions;
        # repetitions: the count each window holds, clips of more than one); None without targets
        "attributes": {k: (right / n if n else None) for k, (right, n) in attr.items()},
    }


def plot_confusion(confusion, labels: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_eval(
    run: str,
    cache_dir: str,
    protocol: str | None,
    out: str | None = None,
    progress: bool = True,
    mirror: bool = False,
    max_clips: int | None = None,
    inputs_of=None,
    reading: str = "",
) -> dict:
    """max_clips: that many test clips spread over the split. inputs_of(cache, clips) -> what the
    first engine reads of each clip in place of `clip_input` (e.g. the runtime's pose front end
    on the rendered frames, `benchmarks.front_end`), named by `reading` in the output folder."""
    from vst.cache import spread
    from vst.model import load_checkpoint

    model = load_checkpoint(run)
    cache = Cache.open(cache_dir)
    check_cache(cache, model.cfg)
    protocol = protocol or cache.index["protocol"]
    clips = [c for c in cache.split("test", protocol) if c["action"] in model.cfg.classes]
    if not clips:
        from vst.ntu import DatasetError

        raise DatasetError(f"{cache_dir} has no test clips of the model's classes under {protocol}")
    if max_clips:
        clips = spread(clips, max_clips)
    inputs = inputs_of(cache, clips) if inputs_of is not None else None
    metrics = evaluate(model, cache, clips, inputs=inputs, progress=progress, mirror=mirror)
    metrics["protocol"], metrics["reading"] = protocol, reading or "skeletons"
    out = out or os.path.join(
        run, "eval", protocol + (f"-{reading}" if reading else "") + ("-mirror" if mirror else "")
    )
    os.makedirs(out, exist_ok=True)
    names = cache.index.get("classes", {})
    labels = [f"A{a:03d} {names.get(str(a), '')[:22]}" for a in model.cfg.classes]
    plot_confusion(
        metrics["confusion"],
        labels,
        os.path.join(out, "confusion.png"),
        f"VST semantic head{' (mirror reading)' if mirror else ''}, {protocol} test, top-1 {metrics['top1']:.1%}",
    )
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    metrics["out"] = out
    return metrics


def check_cache(cache: Cache, cfg) -> None:
    conv = cache.index["conversion"]
    if conv["width"] != cfg.R or conv["fps"] != cfg.fps:
        from vst.ntu import DatasetError

        raise DatasetError(
            f"{cache.root} holds {conv['width']}px frames at {conv['fps']} fps but the model wants {cfg.R}px at {cfg.fps} fps; "
            f"prepare a cache with --size {cfg.R} --fps {cfg.fps}"
        )
