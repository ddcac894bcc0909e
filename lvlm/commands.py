"""`lvlm-var finetune`: LoRA fine-tuning of the language model on a VST's action tokens."""

from __future__ import annotations

import argparse
import json
import os

from lvlm.base import BaseModelError
from lvlm.evaluate import EvalError
from lvlm.finetune import FinetuneConfig, FinetuneError

USER_ERRORS = (BaseModelError, EvalError, FinetuneError)


def register(cli) -> None:
    f = cli.add("finetune", "LoRA fine-tune the language model on a trained VST's action tokens")
    f.add_argument("--vst", required=True, help="VST run folder (lvlm-var train vst)")
    f.add_argument("--data", required=True, help="prepared cache the VST was trained on")
    f.add_argument("--protocol", default=None, help="protocol whose training split to use (default: the cache's)")
    f.add_argument(
        "--base", default="smollm2-135m", help="smollm2-135m (default) or a local Hugging Face model directory"
    )
    f.add_argument("--out", required=True, help="adapter folder; the merged model goes to OUT/merged")
    d = FinetuneConfig()
    f.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    f.add_argument("--batch", type=int, default=d.batch)
    f.add_argument("--seed", type=int, default=d.seed, help="batch order, LoRA initialisation and dropout")
    f.add_argument(
        "--steps",
        type=int,
        default=d.steps,
        help=f"default {d.steps}: ~21 min of steps for SmolLM2-135M at batch {d.batch} on 2 CPU cores, "
        "~28 min for the whole command",
    )
    f.add_argument("--windows-per-clip", type=int, default=3)
    f.add_argument(
        "--views",
        type=int,
        default=1,
        help="views per training clip: 1 = as recorded; more adds the VST's augmentations (flip swaps the side)",
    )
    f.add_argument(
        "--calibration-windows",
        type=int,
        default=800,
        help="windows of held-out training performers that fit the label temperature: those the "
        "VST was not trained on either (train vst --hold-out), else augmented windows of 15 %% "
        "of the performers; 0: none",
    )
    _pool_args(f)
    f.add_argument(
        "--recipe",
        default=None,
        metavar="FILE",
        help="TOML or JSON with the research switches the defaults settle (lvlm/recipe.py: LoRA rank, alpha and "
        "dropout, schedule, code_tie, prefix_grad, count_token)",
    )
    f.add_argument(
        "--resume", action="store_true", help="continue from OUT/finetune_state.pt (checkpointed every 25 steps)"
    )
    f.set_defaults(func=cmd_finetune)

    c = cli.add("calibrate", "fit a fine-tuned model's label temperature and its pool with the VST head again")
    c.add_argument(
        "--adapter", required=True, help="the --out folder of `lvlm-var finetune` (its lvlm.json is updated)"
    )
    c.add_argument("--vst", required=True, help="the VST run the adapter was fine-tuned on")
    c.add_argument("--data", required=True, help="prepared cache the VST was trained on")
    c.add_argument("--protocol", default=None, help="default: the cache's")
    c.add_argument("--windows-per-clip", type=int, default=3)
    c.add_argument("--calibration-windows", type=int, default=800)
    _pool_args(c)
    c.set_defaults(func=cmd_calibrate)

    e = cli.group("eval", "evaluate a model").add_parser(
        "lvlm", help="the fine-tuned language model on a protocol's test windows (labels, calibration, explanations)"
    )
    e.add_argument("--adapter", required=True, help="the --out folder of `lvlm-var finetune`")
    e.add_argument("--vst", required=True, help="the VST run the adapter was fine-tuned on")
    e.add_argument("--data", required=True, help="prepared cache")
    e.add_argument("--protocol", default=None, help="default: the cache's")
    e.add_argument("--gguf", default=None, help="evaluate this GGUF through llama.cpp instead of the merged model")
    e.add_argument("--max-windows", type=int, default=400, help="test windows (one per clip, spread over the split)")
    e.add_argument("--explain", type=int, default=150, help="how many of them also get an explanation")
    e.add_argument("--out", default=None, help="default: ADAPTER/eval/merged or ADAPTER/eval/GGUF-NAME")
    e.set_defaults(func=cmd_eval)


def _pool_args(parser) -> None:
    parser.add_argument(
        "--pool-windows",
        type=int,
        default=None,
        help="of the calibration windows, how many fit the label pool with the VST head (default: all "
        "of them, as fits on 200 swung with the sample; the calibration reads every label's "
        "probability on every window anyway); 0: no pool, the model alone labels",
    )
    parser.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit the pool on the VST head's probabilities read from each window and its mirror image, "
        "as the runtime then reads them (the bundle's default for engine.mirror); --no-mirror: "
        "from the window alone",
    )


def _examples(args: argparse.Namespace, views: int, calibrate: bool):
    """(labels, training windows, calibration windows, whether the VST never saw the calibration
    performers) of `args.vst` over `args.data`'s training split; the calibration windows' head
    probabilities read as `args.mirror` says."""
    from lvlm.examples import build_examples
    from lvlm.finetune import calibration_performers, calibration_split

    held, vst_unseen = calibration_performers(args.vst, args.data, args.protocol, 0.15 if calibrate else 0.0)
    # calibration on performers the VST saw needs one more view: their augmented windows
    labels, examples = build_examples(
        args.vst,
        args.data,
        "train",
        args.protocol,
        args.windows_per_clip,
        views=max(views, 2) if held and not vst_unseen else views,
        mirror=held if args.mirror else False,
        augmented=held if views == 1 else None,
    )
    return (labels, *calibration_split(examples, views, held, vst_unseen), vst_unseen)


def _calibrate(
    args, model, tokenizer, labels, base: int, codes: int, held: list[dict], counts: int, vst_unseen: bool
) -> dict:
    """The lvlm.json fields the calibration windows fit (label temperature, pool with the VST head), printed."""
    from vst.cache import spread
    from vst.ntu import performer_of

    windows = spread(held, args.calibration_windows)
    cal = _fit_temperature(
        model,
        tokenizer,
        labels,
        base,
        codes,
        windows,
        counts,
        len(windows) if args.pool_windows is None else args.pool_windows,
    )
    cal.update(performers=sorted({performer_of(ex["clip"]) for ex in held}), unseen_by_vst=vst_unseen)
    print(
        f"label temperature {cal['temperature']:.3f} on {cal['windows']} windows of held-out performers "
        f"{', '.join(cal['performers'])}{'' if vst_unseen else ' (augmented; the VST trained on them)'} "
        f"(ECE {cal['ece_t1']:.3f} -> {cal['ece']:.3f}, label top-1 {cal['top1']:.1%}; {cal['seconds']:.0f} s "
        f"through {cal['backend']})"
    )
    fields = {"label_temperature": cal["temperature"], "calibration": cal, "label_pool": None, "head_mirror": False}
    if "pool" in cal:
        p = cal["pool"]
        fields.update(label_pool=p["weights"], head_mirror=args.mirror)
        print(
            f"label pool {p['weights']['llm']:.2f} x log p(LLM) + {p['weights']['head']:.2f} x log p(VST head) on "
            f"{p['windows']} of them{' (head: mirror reading)' if args.mirror else ''}: top-1 {p['top1']:.1%}, "
            f"ECE {p['ece']:.3f} (LLM alone {p['llm_alone']['top1']:.1%}, head alone {p['head_alone']['top1']:.1%})"
        )
    return fields


def _write_meta(adapter: str, meta: dict) -> None:
    for folder in (adapter, os.path.join(adapter, "merged")):
        with open(os.path.join(folder, "lvlm.json"), "w") as fh:
            json.dump(meta, fh, indent=1)


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from lvlm.base import load
    from lvlm.finetune import FinetuneConfig, finetune, merge
    from lvlm.recipe import load_recipe
    from lvlm.vocab import add_action_tokens
    from vst.glossary import load_glossary
    from vst.model import load_checkpoint

    recipe = load_recipe(args.recipe)  # a bad recipe fails before anything loads
    torch.set_num_threads(os.cpu_count() or 1)
    vst_model = load_checkpoint(args.vst)
    codes = vst_model.cfg.K
    calibrate = args.calibration_windows > 0
    labels, examples, held, vst_unseen = _examples(args, args.views, calibrate)
    glossary = load_glossary(args.vst)
    model, tokenizer = load(args.base)
    counts = vst_model.cfg.counts if recipe.count_token else 0
    base = add_action_tokens(model, tokenizer, codes, glossary, counts)
    cfg = FinetuneConfig(**recipe.model_dump(), lr=args.lr, batch=args.batch, steps=args.steps, seed=args.seed)
    result = finetune(
        model,
        tokenizer,
        base,
        codes,
        labels,
        examples,
        args.out,
        cfg,
        resume=args.resume,
        codebook=vst_model.quantizer.codebook,
        counts=counts,
    )
    meta = {k: v for k, v in result.items() if k != "model"}
    meta.update({"base": args.base, "vst": os.path.abspath(args.vst), "examples": len(examples)})
    merged_model = result["model"].merge_and_unload()
    merged = merge(merged_model, tokenizer, os.path.join(args.out, "merged"))
    if held:
        meta.update(_calibrate(args, merged_model, tokenizer, labels, base, codes, held, counts, vst_unseen))
    _write_meta(args.out, meta)
    print(
        f"fine-tuned on {len(examples)} windows for {args.steps} steps on {meta['device']} "
        f"({meta['step_seconds'] / 60:.1f} min of steps): loss {meta['first_loss']:.3f} -> "
        f"{meta['last_loss']:.3f}; adapter in {args.out}, merged model in {merged}"
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """The calibration step of `finetune` alone, on its merged model: after a change to how
    labels are calibrated, or to give an older adapter a pool with its VST head."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lvlm.evaluate import read_meta

    torch.set_num_threads(os.cpu_count() or 1)
    meta = read_meta(args.adapter, merged=True)
    labels, _, held, vst_unseen = _examples(args, 1, True)
    if labels != meta["labels"]:
        raise EvalError(f"{args.vst}'s classes differ from the labels {args.adapter} was fine-tuned on")
    if not held:
        raise EvalError(f"{args.data} has no training windows of held-out performers to calibrate on")
    merged = os.path.join(args.adapter, "merged")
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32),
        AutoTokenizer.from_pretrained(merged),
    )
    meta.update(
        _calibrate(
            args,
            model,
            tokenizer,
            labels,
            meta["token_id_base"],
            meta["codes"],
            held,
            meta.get("counts", 0),
            vst_unseen,
        )
    )
    _write_meta(args.adapter, meta)
    print(f"updated {args.adapter}/lvlm.json; export the bundle again to ship it")
    return 0


def _fit_temperature(
    model, tokenizer, labels, base: int, codes: int, windows: list[dict], counts: int = 0, pool_windows: int = 0
) -> dict:
    """`fit_temperature` on the merged model through transformers, batches of windows with the
    whole label trie in one forward (`Reader.every_node`): 777 windows took 282 s on 2 CPU cores
    for both reads (every label's probability on every window, then the best-first decode at the
    fitted temperature), against 482 s through llama.cpp (F16), one label path a call."""
    import time

    from lvlm.evaluate import fit_temperature
    from lvlm.reader import Reader, TransformersBackend

    t0 = time.monotonic()
    cal = fit_temperature(
        Reader(TransformersBackend(model, tokenizer), labels, base, codes, counts=counts),
        windows,
        pool_windows=pool_windows,
    )
    return {**cal, "backend": "transformers (label trie batched)", "seconds": round(time.monotonic() - t0, 1)}


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from lvlm.evaluate import run_eval
    from vst.actions import EDGE_FRAMES

    torch.set_num_threads(os.cpu_count() or 1)
    m = run_eval(args.adapter, args.vst, args.data, args.protocol, args.out, args.max_windows, args.explain, args.gguf)
    print(
        f"{m['protocol']} test, {m['windows']} windows: LLM label top-1 {m['llm_top1']:.1%} "
        f"(VST head {m['vst_head_top1']:.1%} on the same windows, agreement {m['llm_head_agreement']:.1%}); "
        f"ECE {m['ece']:.3f}; label latency p50 {m['label_latency_ms_p50']:.0f} ms (every label's probability "
        f"computed; the worker's best-first search is faster: `lvlm-var bench`)"
    )
    if m["llm_alone"]:
        a, p = m["llm_alone"], m["pool"]
        print(
            f"  labels pooled with the VST head ({p['llm']:.2f} x log p(LLM) + {p['head']:.2f} x log p(head)); "
            f"the language model alone: top-1 {a['top1']:.1%}, agreement with the head {a['agreement_with_head']:.1%}, "
            f"ECE {a['ece']:.3f} (its own probability, renormalised over the labels)"
        )
    if m["faithfulness"]:
        f = m["faithfulness"]
        print(
            f"explanations ({m['explained']}): faithful {f['faithful']:.1%} (limb {f['limb']:.1%}, motion {f['motion']:.1%}, "
            f"repetitions {f['repetitions']:.1%}), ROUGE-L {m['rouge_l']:.3f}"
        )
        if m["faithfulness_edge_tolerant"]:
            near = m["faithfulness_edge_tolerant"]
            print(
                f"  accepting a count the window holds when moved by up to {EDGE_FRAMES} frames: "
                f"faithful {near['faithful']:.1%} (repetitions {near['repetitions']:.1%})"
            )
        if m["count_token"]:
            c = m["count_token"]
            print(
                f"  count token (the VST's count) on {c['windows']} windows of repeated actions: "
                f"right {c['right']:.1%}, stated by the explanation {c['stated']:.1%}"
            )
    for ex in m["examples"][:3]:
        print(f"  {ex['clip']}: {ex['predicted']} ({ex['probability']:.2f}) - {ex['explanation']}")
    print(f"wrote {m['out']}/metrics.json, readings.jsonl and reliability.png")
    return 0
