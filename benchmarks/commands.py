"""`lvlm-var bench`: the benchmark suite (benchmarks/bench.py); `lvlm-var eval real`: a bundle on
real videos (benchmarks/real_clips.py)."""

from __future__ import annotations

import argparse

from benchmarks.real_clips import RealClipsError

USER_ERRORS = (RealClipsError,)  # a DatasetError is vst.commands' already


def register(cli) -> None:
    b = cli.add("bench", "throughput, latency and scaling of a bundle on this machine (JSON, Markdown, PNG)")
    b.add_argument("--bundle", default="build/bundle")
    b.add_argument("--out", default="build/bench")
    b.add_argument("--quick", action="store_true", help="short runs (about a minute on a tiny bundle)")
    b.set_defaults(func=cmd_bench)
    e = cli.group("eval", "evaluate a model").add_parser(
        "real",
        help="a pose front-end bundle on real videos with labels: clip top-1 of the head and the pooled label, "
        "a confusion matrix and a contact sheet of the skeletons (PNG)",
    )
    e.add_argument("--bundle", default="build/bundle")
    e.add_argument("--clips", required=True, help="folder of video files")
    e.add_argument(
        "--manifest", default=None, help="TSV with the columns file and ntu_class_id (default: CLIPS/manifest.tsv)"
    )
    e.add_argument("--out", default="build/eval-real")
    e.add_argument(
        "--smoothing", action="store_true", help="the pose front end with its landmark filter (pose.smoothing)"
    )
    e.set_defaults(func=cmd_eval_real)
    f = cli.group("eval", "evaluate a model").add_parser(
        "front-end",
        help="a pose VST on the synthetic test clips through the pose front end, as a camera's video is read",
    )
    f.add_argument("--run", required=True)
    f.add_argument("--data", required=True, help="prepared cache")
    f.add_argument("--protocol", default=None, help="default: the cache's protocol")
    f.add_argument(
        "--max-clips",
        type=int,
        default=240,
        help="test clips, spread over the split (default 240; ~40 ms a frame on one core, 0: all)",
    )
    f.add_argument(
        "--mirror", action="store_true", help="each window's label from it and its mirror image, as the runtime"
    )
    f.add_argument(
        "--smoothing", action="store_true", help="the pose front end with its landmark filter (pose.smoothing)"
    )
    f.add_argument("--out", default=None, help="default: RUN/eval/PROTOCOL-front-end")
    f.set_defaults(func=cmd_eval_front_end)


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.bench import run_bench

    r = run_bench(args.bundle, args.out, args.quick)
    e, lm = r["encoder"], r["llm"]
    if "ms" in e:
        print(
            "pose front end per frame: "
            + ", ".join(f"{k} {v['front_end_per_frame']:.1f} ms" for k, v in e["ms"].items())
        )
    else:
        print(f"frame encoder: {', '.join(f'{k} {v:,.0f} fps' for k, v in e['fps'].items())}")
    print(
        f"caching: {e['caching']['speedup']:.2f}x cheaper per window than re-encoding (W/S = {e['caching']['ideal']:.0f})"
    )
    print(
        f"label p50: {lm['label_ms_cached_prefix']['p50']:.1f} ms with the cached prefix, "
        f"{lm['label_ms_no_cache']['p50']:.1f} ms without; {lm['llava15_ratio']:.0f}x fewer prompt tokens than LLaVA-1.5"
    )
    print(
        f"real time: up to {r['max_realtime_streams']} concurrent 15 fps stream(s)"
        + (
            f" ({r['max_realtime_streams_without_llm']} without the language model)"
            if "streams_without_llm" in r
            else ""
        )
    )
    return 0


def cmd_eval_real(args: argparse.Namespace) -> int:
    from benchmarks.real_clips import evaluate_real

    m = evaluate_real(
        args.bundle,
        args.clips,
        args.manifest or f"{args.clips.rstrip('/')}/manifest.tsv",
        args.out,
        smoothing=args.smoothing,
    )
    for r in m["results"]:
        got = (
            r.get("error")
            or f"head {r.get('head', '-')}, pooled {r.get('pooled', '-')} ({r.get('windows', 0)} windows, "
            f"{r.get('tracks', 0)} track(s))"
        )
        print(f"{r['file']:<40} {r['class']:<5} {got}")
    if m["scored"]:
        print(f"clip top-1 over {m['scored']} labelled clips: head {m['head_top1']:.1%}, pooled {m['pooled_top1']:.1%}")
    print(f"wrote {args.out}/metrics.json, confusion.png, contact_sheet.png")
    return 0


def cmd_eval_front_end(args: argparse.Namespace) -> int:
    from benchmarks.front_end import eval_front_end
    from vst.commands import print_eval

    print_eval(
        eval_front_end(
            args.run,
            args.data,
            args.protocol,
            args.out,
            max_clips=args.max_clips or None,
            mirror=args.mirror,
            smoothing=args.smoothing,
        )
    )
    return 0
