"""The VST's windows as language-model examples: what the fine-tune trains on, calibration and
`eval lvlm` read, and export and bench check against."""

from __future__ import annotations


def build_examples(
    vst_run: str,
    cache_dir: str,
    split: str = "train",
    protocol: str | None = None,
    windows_per_clip: int = 3,
    progress: bool = True,
    views: int = 1,
    seed: int = 0,
    mirror: bool | set[str] = False,
    augmented: set[str] | None = None,
) -> tuple[list[str], list[dict]]:
    """(labels, examples): the VST's tokens for up to `windows_per_clip` sliding windows per clip
    (those covering most of the action first), with the clip's label and the reference
    explanation of what the window shows (`vst.actions.window_attributes`: its repetitions),
    the VST head's own prediction for the window (its provisional label; `head_probs`: its
    probability of every label, what the reader pools with) and, where the VST has
    a repetitions head, the count it reads (`count`, 1..max_reps; else None). `views` > 1 adds
    views of every clip through the VST's training augmentations (crop, colour, flip; a flipped
    view gets the mirrored side in its attributes and reference explanation). `mirror`: the head's
    probabilities from each window and its mirror image (`vst.windows.clip_windows`, the runtime's
    engine.mirror), for every clip (True) or for the clips of the performers in a set (those whose
    windows calibrate; no other example's head probabilities are read while fine-tuning).
    `augmented`: the views after the first only for the clips of these performers (the
    calibration's, when only they need them); None: for every clip."""
    import numpy as np
    from tqdm import tqdm

    from vst.actions import mirror_attributes, window_attributes
    from vst.cache import Cache
    from vst.model import load_checkpoint, read_count
    from vst.ntu import performer_of
    from vst.windows import action_frames, augmented_input, clip_input, clip_windows

    model = load_checkpoint(vst_run)
    cache = Cache.open(cache_dir)
    names = cache.index.get("classes", {})
    labels = [names.get(str(a), f"action {a}") for a in model.cfg.classes]
    out = []
    clips = [c for c in cache.split(split, protocol) if c["action"] in model.cfg.classes]
    for view in range(views):
        todo = [
            (n, clip)
            for n, clip in enumerate(clips)  # n seeds the view's augmentation
            if not view or augmented is None or performer_of(clip["name"]) in augmented
        ]
        for n, clip in tqdm(
            todo,
            desc=f"examples {split}" + (f" view {view + 1}/{views}" if views > 1 else ""),
            unit="clip",
            disable=not progress,
        ):
            attrs = clip.get("attributes") or {}
            if view:
                frames, flipped = augmented_input(model.cfg, cache, clip, np.random.default_rng((seed, view, n)))
                attrs = mirror_attributes(attrs) if flipped else attrs
            else:
                frames = clip_input(model.cfg, cache, clip)
            w = clip_windows(model, frames, mirror is True or (bool(mirror) and performer_of(clip["name"]) in mirror))
            lo, hi = action_frames(clip)
            overlap = [min(hi, s + model.cfg.W) - max(lo, s) for s in w["starts"]]
            best = sorted(range(len(overlap)), key=lambda i: -overlap[i])[:windows_per_clip]
            label = labels[model.cfg.classes.index(clip["action"])]
            for i in sorted(best):
                probs = w["probs"][i]
                head = int(probs.argmax())
                seen = window_attributes(attrs, w["starts"][i], w["starts"][i] + model.cfg.W, len(frames))
                explanation = seen.get("explanation") or f"The person performs the action '{label}'."
                out.append(
                    {
                        "clip": clip["name"],
                        "view": view,
                        "start": w["starts"][i],
                        "tokens": w["ids"][i].tolist(),
                        "count": int(read_count(w["reps"][i])) if "reps" in w else None,
                        "label": label,
                        "explanation": explanation,
                        "attributes": seen,
                        "head_label": labels[head],
                        "head_score": float(probs[head]),
                        "head_probs": probs.tolist(),
                    }
                )
    return labels, out
