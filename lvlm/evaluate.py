"""`lvlm-var eval lvlm`: the fine-tuned language model on a protocol's test windows.

For each test clip, the window covering most of the action (the runtime's windowing) is read by
`lvlm.reader.Reader` exactly as the worker reads it: trie-constrained label with its probability,
then the greedy explanation. Reported next to the VST head's top-1 on the same windows:
label top-1, calibration (ECE of the label probability, 10 equal-width bins, plus a reliability
plot), explanation faithfulness (`lvlm.faithfulness.check`) and ROUGE-L against the reference,
latencies, and a few example outputs.
"""

from __future__ import annotations

import json
import os
import statistics

import numpy as np

from lvlm.faithfulness import check, rouge_l
from vst.cache import spread


class EvalError(RuntimeError):
    """An adapter or model that cannot be evaluated: one clear line."""


def _mean_or_none(values) -> float | None:
    """The mean, or None (JSON null, not NaN) when there is nothing to average."""
    return float(np.mean(values)) if len(values) else None


def expected_calibration_error(confidence, correct, bins: int = 10) -> float:
    conf = np.asarray(confidence, float)
    ok = np.asarray(correct, float)
    if not len(conf):
        return float("nan")
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - ok[m].mean())
    return float(ece)


def plot_reliability(confidence, correct, path: str, title: str, bins: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf, ok = np.asarray(confidence, float), np.asarray(correct, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    centers, accs, counts = [], [], []
    for b in range(bins):
        m = which == b
        if m.any():
            centers.append(conf[m].mean())
            accs.append(ok[m].mean())
            counts.append(int(m.sum()))
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    ax.plot(centers, accs, "o-", c="tab:blue", label="label probability")
    for x, y, n in zip(centers, accs, counts):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("label probability (bin mean)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


TEMPERATURES = np.geomspace(0.5, 4.0, 31)
POOL_WEIGHTS = np.round(np.arange(0.0, 1.501, 0.05), 2)  # the language model's
# the head's reaches further: its mirror reading, a mean of two distributions, is softer and wants
# sharpening (a fit once stopped at 1.5, the edge of the language model's grid)
HEAD_WEIGHTS = np.round(np.arange(0.0, 3.001, 0.05), 2)


def fit_pool(model: np.ndarray, head: np.ndarray, truth: np.ndarray) -> dict:
    """The weights (a, b) of the log-linear pool a * log p_llm + b * log p_head (normalised over
    the labels) that minimise the negative log-likelihood of the true labels, on a grid of
    0..1.5 (a) and 0..3 (b) in steps of 0.05 (`model`, `head`: [windows, labels] probabilities;
    `truth`: label indices), with the pool's top-1 and ECE there and those of each reader alone."""
    lm, lh = np.log(np.maximum(model, 1e-30)), np.log(np.maximum(head, 1e-12))
    rows = np.arange(len(truth))

    def pooled(a, b):
        z = a * lm + b * lh
        return z - np.logaddexp.reduce(z, axis=1, keepdims=True)

    nll, a, b = min((-pooled(a, b)[rows, truth].mean(), a, b) for a in POOL_WEIGHTS for b in HEAD_WEIGHTS if a or b)

    def scores(p):
        ok = p.argmax(1) == truth
        return {"top1": float(ok.mean()), "ece": expected_calibration_error(p.max(1), ok)}

    return {
        "weights": {"llm": float(a), "head": float(b)},
        "windows": len(truth),
        "nll": float(nll),
        **scores(np.exp(pooled(a, b))),
        "llm_alone": scores(model / np.maximum(model.sum(1, keepdims=True), 1e-30)),
        "head_alone": scores(head),
    }


def fit_temperature(reader, examples: list[dict], progress: bool = True, pool_windows: int = 0) -> dict:
    """The label temperature that minimises the negative log-likelihood of the true labels on
    held-out windows (temperature scaling, Guo et al. 2017), with the ECE before and after.
    A window is read once for the fit: the NLL at every temperature follows from the trie nodes
    on its true label's path in closed form
    (log p_T(t) = lp(t) / T - logsumexp(lp / T)); the best-first decode gives the label and its
    probability at T = 1. A second read decodes at the fitted temperature, unless that is 1.

    pool_windows: on that many of the windows (spread over them; they need `head_probs`), every
    label's probability too and the pool with the VST head fitted on them (`fit_pool`,
    result["pool"]). A reader whose backend reads token trees has every node of each window at
    once anyway (`Reader.every_node`); any other reads one model call per label path there."""
    from tqdm import tqdm

    from lvlm.reader import log_softmax, tempered
    from lvlm.trie import decode_label

    if not examples:
        raise EvalError("no held-out windows to fit the label temperature on")
    nll = np.zeros(len(TEMPERATURES))
    one = int(np.argmin(abs(TEMPERATURES - 1.0)))

    def decode(ex, nodes, t):
        r = decode_label(reader.trie, tempered(nodes, t), exhaustive=False)
        return r.probability, r.label == ex["label"]

    at_one = []
    pooling = {id(ex) for ex in spread([ex for ex in examples if "head_probs" in ex], pool_windows)}
    model, head, truth = [], [], []
    for ex, nodes in zip(
        examples,
        tqdm(reader.every_node(examples), desc="calibrate", unit="window", total=len(examples), disable=not progress),
    ):
        path = reader.label_ids[ex["label"]]
        for k, tok in enumerate(path):
            nll -= log_softmax(nodes(path[:k], [tok])[None, :] / TEMPERATURES[:, None])[:, tok]
        at_one.append(decode(ex, nodes, 1.0))
        if id(ex) in pooling:
            every = decode_label(reader.trie, tempered(nodes, 1.0)).distribution
            model.append([every[lab] for lab in reader.labels])
            head.append(ex["head_probs"])
            truth.append(reader.labels.index(ex["label"]))
    best = int(np.argmin(nll))
    at_best = at_one
    if best != one:
        at_best = [
            decode(ex, nodes, float(TEMPERATURES[best]))
            for ex, nodes in zip(
                examples,
                tqdm(
                    reader.every_node(examples),
                    desc=f"calibrate at T={TEMPERATURES[best]:.3f}",
                    unit="window",
                    total=len(examples),
                    disable=not progress,
                ),
            )
        ]
    (conf1, ok1), (conf, ok) = np.array(at_one, float).T, np.array(at_best, float).T
    fitted = {
        "temperature": round(float(TEMPERATURES[best]), 4),
        "windows": len(examples),
        "top1": float(ok.mean()),
        "nll": float(nll[best] / len(examples)),
        "nll_t1": float(nll[one] / len(examples)),
        "ece": expected_calibration_error(conf, ok),
        "ece_t1": expected_calibration_error(conf1, ok1),
    }
    if truth:
        fitted["pool"] = fit_pool(np.array(model), np.array(head), np.array(truth))
    return fitted


def read_meta(adapter: str, merged: bool = False) -> dict:
    """An adapter folder's lvlm.json (`lvlm-var finetune --out`); merged: its merged model must be there too."""
    meta_path = os.path.join(adapter, "lvlm.json")
    if not os.path.exists(meta_path):
        raise EvalError(f"{adapter}: no lvlm.json; pass the --out folder of `lvlm-var finetune`")
    if merged and not os.path.isdir(os.path.join(adapter, "merged")):
        raise EvalError(f"{adapter}: no merged model folder; rerun `lvlm-var finetune`")
    with open(meta_path) as f:
        return json.load(f)


def open_reader(adapter: str, gguf: str | None = None, threads: int | None = None):
    """(Reader, meta) for an adapter folder (`lvlm-var finetune --out`): its merged model through
    transformers, or `gguf` through llama.cpp."""
    from lvlm.reader import LlamaCppBackend, Reader, TransformersBackend

    meta = read_meta(adapter, merged=not gguf)
    if gguf:
        if not os.path.exists(gguf):
            raise EvalError(f"{gguf}: no such GGUF file")
        backend = LlamaCppBackend.open(gguf, threads=threads)
    else:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        merged = os.path.join(adapter, "merged")
        backend = TransformersBackend(
            AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), AutoTokenizer.from_pretrained(merged)
        )
    return Reader(
        backend,
        meta["labels"],
        meta["token_id_base"],
        meta["codes"],
        temperature=meta.get("label_temperature", 1.0),
        counts=meta.get("counts", 0),
        pool=meta.get("label_pool"),
    ), meta


def evaluate(reader, examples: list[dict], explain: int, progress: bool = True) -> tuple[dict, list[dict]]:
    """Metrics and per-window readings; explanations for `explain` of the windows (spread over them)."""
    from tqdm import tqdm

    explain_set = {id(e) for e in spread(examples, explain)}
    readings = []
    for ex in tqdm(examples, desc="eval lvlm", unit="window", disable=not progress):
        r = reader.read(ex["tokens"], explain=id(ex) in explain_set, count=ex.get("count"), head=ex.get("head_probs"))
        row = {
            "clip": ex["clip"],
            "start": ex["start"],
            "tokens": ex["tokens"],
            "count": ex.get("count"),
            "label": ex["label"],
            "predicted": r.label,
            "probability": r.probability,
            "renormalised": r.probability / max(sum(r.distribution.values()), 1e-12),
            "head_label": ex.get("head_label"),
            "head_score": ex.get("head_score"),
            "label_s": r.label_s,
            "reference": ex["explanation"],
            "explanation": r.explanation,
            "explanation_s": r.explanation_s,
        }
        if r.model is not None:  # pooled with the head: what the language model alone reads
            alone = max(r.model, key=r.model.get)
            row.update(llm_alone=alone, llm_alone_probability=r.model[alone] / max(sum(r.model.values()), 1e-12))
        if r.explanation is not None:
            row["rouge_l"] = rouge_l(r.explanation, ex["explanation"])
            attrs = ex.get("attributes") or {}
            if {"limb", "motion", "repetitions"} <= set(attrs):
                row["check"] = check(r.explanation, attrs)
                if "clip_repetitions" in attrs:  # the count the whole clip has, beyond the window
                    whole_clip = {**attrs, "repetitions": attrs["clip_repetitions"]}
                    row["check"]["clip_repetitions"] = check(r.explanation, whole_clip)["repetitions"]
                if reader.counts and ex.get("count") is not None and attrs.get("clip_repetitions", 0) > 1:
                    # a repeated action: is the count token right, and does the explanation state it?
                    row["count_token"] = {
                        "right": ex["count"] == attrs["repetitions"],
                        "stated": check(r.explanation, {**attrs, "repetitions": ex["count"]})["repetitions"],
                    }
        readings.append(row)
    n = len(readings)
    correct = [r["predicted"] == r["label"] for r in readings]
    head = [r["head_label"] == r["label"] for r in readings if r["head_label"] is not None]
    explained = [r for r in readings if r["explanation"] is not None]
    checked = [r["check"] for r in explained if "check" in r]
    counted = [r["count_token"] for r in explained if "count_token" in r]
    labels = sorted({r["label"] for r in readings})
    metrics = {
        "windows": n,
        "llm_top1": _mean_or_none(correct),
        "vst_head_top1": _mean_or_none(head),
        "llm_head_agreement": float(np.mean([r["predicted"] == r["head_label"] for r in readings])) if head else None,
        "ece": expected_calibration_error([r["probability"] for r in readings], correct),
        "ece_renormalised": expected_calibration_error([r["renormalised"] for r in readings], correct),
        "mean_probability": _mean_or_none([r["probability"] for r in readings]),
        "explained": len(explained),
        "rouge_l": _mean_or_none([r["rouge_l"] for r in explained]),
        "faithfulness": {
            k: float(np.mean([c[k] for c in checked])) for k in ("faithful", "limb", "motion", "repetitions")
        }
        if checked
        else None,
        "repetitions_clip_count": _mean_or_none([c["clip_repetitions"] for c in checked if "clip_repetitions" in c]),
        # the count may be the window's moved by up to vst.actions.EDGE_FRAMES frames (reported, not the target)
        "faithfulness_edge_tolerant": {
            k: float(np.mean([c[k + "_near"] for c in checked])) for k in ("faithful", "repetitions")
        }
        if checked and all("faithful_near" in c for c in checked)
        else None,
        # windows of repeated actions read with a count token: how often the token (the VST's
        # repetitions head) is right, and how often the explanation states the token's count
        "count_token": {
            "windows": len(counted),
            "right": float(np.mean([c["right"] for c in counted])),
            "stated": float(np.mean([c["stated"] for c in counted])),
        }
        if counted
        else None,
        "faithfulness_when_label_correct": _mean_or_none(
            [r["check"]["faithful"] for r in explained if "check" in r and r["predicted"] == r["label"]]
        ),
        "label_latency_ms_p50": 1000 * statistics.median(r["label_s"] for r in readings) if n else None,
        "explanation_latency_ms_p50": 1000 * statistics.median(r["explanation_s"] for r in explained)
        if explained
        else None,
        "per_class": {
            lab: float(np.mean([r["predicted"] == lab for r in readings if r["label"] == lab])) for lab in labels
        },
        # labels pooled with the VST head: llm_top1 and ece are the pool's; these, the language model's alone
        "pool": reader.pool,
        "llm_alone": {
            "top1": float(np.mean([r["llm_alone"] == r["label"] for r in readings])),
            "ece": expected_calibration_error(
                [r["llm_alone_probability"] for r in readings], [r["llm_alone"] == r["label"] for r in readings]
            ),
            "agreement_with_head": float(np.mean([r["llm_alone"] == r["head_label"] for r in readings])),
        }
        if readings and all("llm_alone" in r for r in readings)
        else None,
    }
    return metrics, readings


def run_eval(
    adapter: str,
    vst_run: str,
    cache_dir: str,
    protocol: str | None,
    out: str | None = None,
    max_windows: int = 400,
    explain: int = 150,
    gguf: str | None = None,
    progress: bool = True,
) -> dict:
    from lvlm.examples import build_examples
    from vst.cache import Cache

    protocol = protocol or Cache.open(cache_dir).index["protocol"]
    reader, meta = open_reader(adapter, gguf)
    labels, examples = build_examples(
        vst_run,
        cache_dir,
        "test",
        protocol,
        windows_per_clip=1,
        progress=progress,
        mirror=bool(meta.get("head_mirror")),
    )
    if labels != meta["labels"]:
        raise EvalError(f"{vst_run}'s classes differ from the labels {adapter} was fine-tuned on")
    if not examples:
        raise EvalError(f"{cache_dir} has no test windows of the model's classes")
    examples = spread(examples, max_windows)
    metrics, readings = evaluate(reader, examples, explain, progress)
    metrics.update(
        {
            "protocol": protocol,
            "model": gguf or os.path.join(adapter, "merged"),
            "adapter": adapter,
            "examples": [
                {k: r[k] for k in ("clip", "label", "predicted", "probability", "explanation", "reference")}
                for r in readings
                if r["explanation"] is not None
            ][:8],
        }
    )
    out = out or os.path.join(adapter, "eval", os.path.basename(gguf) if gguf else "merged")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    with open(os.path.join(out, "readings.jsonl"), "w") as f:
        for r in readings:
            f.write(json.dumps(r) + "\n")
    plot_reliability(
        [r["probability"] for r in readings],
        [r["predicted"] == r["label"] for r in readings],
        os.path.join(out, "reliability.png"),
        f"LLM label probability, {metrics['windows']} test windows, ECE {metrics['ece']:.3f}",
    )
    metrics["out"] = out
    return metrics
