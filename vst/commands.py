"""`lvlm-var data ...` (synthetic data, cache preparation, statistics), `train vst`, `eval vst` and
`vst glossary`."""

from __future__ import annotations

import argparse
import json

from vst.ntu import PROTOCOLS, DatasetError

USER_ERRORS = (DatasetError, ValueError, FileNotFoundError)


def register(cli) -> None:
    dsub = cli.group("data", "synthetic NTU-layout data, cache preparation, dataset statistics")

    s = dsub.add_parser("synth", help="render a synthetic action dataset in NTU RGB+D layout")
    s.add_argument("--out", required=True, help="output folder (resumes a partial dataset made with the same settings)")
    s.add_argument("--classes", default=None, help="comma-separated NTU action ids or slugs (default: all)")
    s.add_argument("--performers", type=int, default=40, help="number of performers P001.. (default 40, as NTU RGB+D)")
    s.add_argument("--cameras", type=int, default=3, choices=(1, 2, 3), help="cameras C001.. at 0, +45, -45 degrees")
    s.add_argument("--setups", type=int, default=1, help="setups S001.. (camera height/distance, room)")
    s.add_argument("--reps", type=int, default=2, choices=(1, 2), help="replications R001.. (facing +45 / -45 degrees)")
    s.add_argument("--size", type=int, default=112, help="frame size in pixels (square)")
    s.add_argument("--fps", type=int, default=15)
    s.add_argument("--seconds", type=float, default=3.2, help="typical clip length; long actions make longer clips")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=("avi", "mp4"), default="avi")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.set_defaults(func=cmd_synth)

    p = dsub.add_parser("prepare", help="decode a dataset once, through the runtime conversion, into a frame cache")
    p.add_argument("--data", required=True, help="NTU RGB+D folder (real or synthetic)")
    p.add_argument("--protocol", required=True, choices=tuple(PROTOCOLS))
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--size", type=int, default=112, help="model resolution R (square)")
    p.add_argument("--fps", type=int, default=15)
    p.add_argument("--no-crop", action="store_true", help="stretch to square instead of centre-cropping")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=cmd_prepare)

    st = dsub.add_parser("stats", help="clip counts per protocol split and class")
    st.add_argument("data", help="NTU RGB+D folder (real or synthetic)")
    st.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None, help="one protocol (default: all)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_stats)

    t = cli.group("train", "train a model").add_parser("vst", help="train the VST on a prepared cache")
    t.add_argument("--data", required=True, help="prepared cache (lvlm-var data prepare)")
    t.add_argument("--protocol", required=True, choices=tuple(PROTOCOLS))
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument(
        "--size",
        choices=("pose", "small", "base"),
        default="pose",
        help="pose (the default): the temporal half for the pretrained pose front end, trained on the "
        "synthetic skeletons; small, base: the own frame encoder (R=112), base is wider",
    )
    t.add_argument("--frame-steps", type=int, default=None, help="stage 1 steps (single frames; default 6000)")
    t.add_argument("--epochs", type=int, default=None, help="stage 2 epochs over cached features (default 100)")
    t.add_argument("--views", type=int, default=None, help="augmented feature views per training clip (default 6)")
    t.add_argument(
        "--skeleton-views",
        type=int,
        default=None,
        help="stage 2 views per training clip made from its 3D skeleton seen from other azimuths "
        "(synthetic data, pose-only features; default 6 under xview, the cross-view protocol, "
        "when the feature is the joints alone, else 0)",
    )
    t.add_argument(
        "--count-views",
        type=int,
        default=None,
        help="skeleton views per training clip that only the count head reads, for a share of its "
        "windows (synthetic data, pose-only features; default 6, 0: none)",
    )
    t.add_argument("--batch", type=int, default=None, help="stage 2 batch (default 64)")
    t.add_argument("--lr", type=float, default=None, help="stage 2 learning rate (default 3e-3)")
    t.add_argument("--minutes", type=float, default=None, help="stop after this long; continue later with --resume")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--hold-out",
        type=float,
        default=None,
        help="share of training performers the VST does not train on, for the language model's "
        "calibration (default 0: train on every performer)",
    )
    t.add_argument("--resume", action="store_true", help="continue from RUN/last_state.pt")
    t.set_defaults(func=cmd_train)

    e = cli.group("eval", "evaluate a model").add_parser("vst", help="evaluate a VST run on a protocol's test split")
    e.add_argument("--run", required=True)
    e.add_argument("--data", required=True, help="prepared cache")
    e.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None, help="default: the cache's protocol")
    e.add_argument("--out", default=None, help="default: RUN/eval/PROTOCOL (PROTOCOL-mirror with --mirror)")
    e.add_argument(
        "--mirror",
        action="store_true",
        help="label each window from the mean of its and its mirror image's head probabilities, as the "
        "runtime does with engine.mirror = true (twice the frame encoder's work)",
    )
    e.set_defaults(func=cmd_eval)

    g = cli.group("vst", "VST tools").add_parser("glossary", help="what every code stands for (JSON + Markdown)")
    g.add_argument("--run", required=True)
    g.add_argument("--data", required=True, help="prepared cache (synthetic clips give motion attributes and glosses)")
    g.add_argument("--split", choices=("train", "test", "all"), default="train")
    g.add_argument("--max-clips", type=int, default=400)
    g.set_defaults(func=cmd_glossary)


def _check_range(name, value, lo, hi):
    if not lo <= value <= hi:
        raise ValueError(f"--{name} {value} out of range {lo}..{hi}")


def cmd_synth(args: argparse.Namespace) -> int:
    from vst.actions import select
    from vst.synth import SynthConfig, generate

    _check_range("performers", args.performers, 1, 106)
    _check_range("setups", args.setups, 1, 32)
    _check_range("size", args.size, 32, 1024)
    _check_range("fps", args.fps, 5, 60)
    cfg = SynthConfig(
        classes=tuple(a.ntu_id for a in select(args.classes)),
        performers=args.performers,
        cameras=args.cameras,
        setups=args.setups,
        reps=args.reps,
        size=args.size,
        fps=args.fps,
        seconds=args.seconds,
        seed=args.seed,
        ext="." + args.format,
    )
    summary = generate(cfg, args.out, workers=args.workers)
    print(
        f"wrote {summary['clips']} clips ({summary['frames']} frames) to {args.out} in {summary['seconds']}s "
        f"= {summary['clips_per_s']} clips/s"
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from vst.cache import prepare

    summary = prepare(
        args.data, args.protocol, args.out, size=args.size, fps=args.fps, crop=not args.no_crop, workers=args.workers
    )
    print(
        f"prepared {summary['clips']} clips, {summary['frames']} frames ({summary['bytes'] / 2**20:.0f} MiB) "
        f"into {args.out} in {summary['seconds']}s"
        + (f"; {summary['failed']} clips failed (see index.json)" if summary["failed"] else "")
    )
    return 0


def dataset_stats(data: str, protocols) -> dict:
    from vst.ntu import class_names, scan, split

    records = scan(data)
    names = class_names(data)
    out = {}
    for protocol in protocols:
        parts = split(records, protocol)
        out[protocol] = {
            part: {
                "clips": len(recs),
                "per_class": {
                    str(a): sum(r.name.action == a for r in recs) for a in sorted({r.name.action for r in records})
                },
            }
            for part, recs in parts.items()
        }
    return {
        "clips": len(records),
        "classes": {str(a): names.get(a, "?") for a in sorted({r.name.action for r in records})},
        "protocols": out,
    }


def cmd_stats(args: argparse.Namespace) -> int:
    stats = dataset_stats(args.data, [args.protocol] if args.protocol else list(PROTOCOLS))
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    print(f"{args.data}: {stats['clips']} clips, {len(stats['classes'])} classes")
    for protocol, parts in stats["protocols"].items():
        print(f"\n{protocol}: train {parts['train']['clips']}, test {parts['test']['clips']}")
        print(f"  {'class':<46} {'train':>6} {'test':>6}")
        for a, name in stats["classes"].items():
            print(
                f"  A{int(a):03d} {name[:41]:<41} {parts['train']['per_class'][a]:>6} {parts['test']['per_class'][a]:>6}"
            )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vst.train import TrainConfig, train

    if args.hold_out is not None:
        _check_range("hold-out", args.hold_out, 0.0, 0.5)
    if args.skeleton_views is not None:
        _check_range("skeleton-views", args.skeleton_views, 0, 12)
    if args.count_views is not None:
        _check_range("count-views", args.count_views, 0, 12)
    given = {
        "frame_steps": args.frame_steps,
        "epochs": args.epochs,
        "views": args.views,
        "batch": args.batch,
        "lr": args.lr,
        "hold_out": args.hold_out,
        "skeleton_views": args.skeleton_views,
        "count_views": args.count_views,
    }
    tc = TrainConfig(
        protocol=args.protocol,
        size=args.size,
        minutes=args.minutes,
        seed=args.seed,
        **{k: v for k, v in given.items() if v is not None},
    )
    result = train(args.data, args.out, tc, resume=args.resume)
    best = result["best"] or {}
    if result["stopped_early"]:
        print(f"stopped after {result['seconds']:.0f}s (--minutes); continue with --resume")
        return 0
    print(
        f"trained in {result['seconds']:.0f}s; best checkpoint at stage-2 step {best.get('step')}: "
        f"test top-1 {best.get('top1', float('nan')):.3f} (periodic subset) -> {args.out}/model.safetensors"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vst.evaluate import run_eval

    m = run_eval(args.run, args.data, args.protocol, args.out, mirror=args.mirror)
    print_eval(m)
    return 0


def print_eval(m: dict) -> None:
    """The figures of `eval vst` (and of `eval front-end`, which reads the same metrics)."""
    from vst.evaluate import stability_text

    print(
        f"{m['protocol']} test{' through the pose front end' if m['reading'] == 'front-end' else ''}"
        f"{' (mirror reading)' if m['mirror'] else ''}: {m['clips']} clips, top-1 {m['top1']:.1%}, top-5 {m['top5']:.1%}, "
        f"window top-1 {m['window_top1']:.1%}"
    )
    print(
        f"codebook: {m['codes_used']:.0%} of codes used, perplexity {m['perplexity']:.1f}; "
        f"token stability {stability_text(m['token_stability'])}; {m['tokens_per_window']} tokens per window, "
        f"{m['tokens_per_second']:.1f} tokens per second of video"
    )
    known = {k: v for k, v in m["attributes"].items() if v is not None}
    if known:
        print(
            "attributes read per window (the side from the tokens, the repetitions by the count head where the run "
            "has one): " + ", ".join(f"{k} {v:.1%}" for k, v in known.items())
        )
    print(f"wrote {m['out']}/metrics.json and {m['out']}/confusion.png")


def cmd_glossary(args: argparse.Namespace) -> int:
    from vst.glossary import build_glossary

    out = build_glossary(args.run, args.data, split=args.split, max_clips=args.max_clips)
    print(f"glossary of {out['codes_seen']} codes in use -> {out['json']} and {out['markdown']}")
    return 0
