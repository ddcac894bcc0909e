"""`lvlm-var data ...`: synthetic dataset generation, cache preparation and dataset statistics."""
from __future__ import annotations

import argparse
import json

from vst.ntu import PROTOCOLS, DatasetError

USER_ERRORS = (DatasetError, ValueError, FileNotFoundError)


def register(sub) -> None:
    data = sub.add_parser("data", help="synthetic NTU-layout data, cache preparation, dataset statistics")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = dsub.add_parser("synth", help="render a synthetic action dataset in NTU RGB+D layout")
    s.add_argument("--out", required=True, help="output folder (resumes a partial dataset made with the same settings)")
    s.add_argument("--classes", default=None, help="comma-separated NTU action ids or slugs (default: all)")
    s.add_argument("--performers", type=int, default=16, help="number of performers P001.. (default 16)")
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
        classes=tuple(a.ntu_id for a in select(args.classes)), performers=args.performers, cameras=args.cameras,
        setups=args.setups, reps=args.reps, size=args.size, fps=args.fps, seconds=args.seconds, seed=args.seed,
        ext="." + args.format,
    )
    summary = generate(cfg, args.out, workers=args.workers)
    print(f"wrote {summary['clips']} clips ({summary['frames']} frames) to {args.out} in {summary['seconds']}s "
          f"= {summary['clips_per_s']} clips/s")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from vst.cache import prepare

    summary = prepare(args.data, args.protocol, args.out, size=args.size, fps=args.fps, crop=not args.no_crop,
                      workers=args.workers)
    print(f"prepared {summary['clips']} clips, {summary['frames']} frames ({summary['bytes'] / 2**20:.0f} MiB) "
          f"into {args.out} in {summary['seconds']}s" + (f"; {summary['failed']} clips failed (see index.json)" if summary["failed"] else ""))
    return 0


def dataset_stats(data: str, protocols) -> dict:
    from vst.ntu import class_names, scan, split

    records = scan(data)
    names = class_names(data)
    out = {}
    for protocol in protocols:
        parts = split(records, protocol)
        out[protocol] = {
            part: {"clips": len(recs), "per_class": {str(a): sum(r.name.action == a for r in recs)
                                                     for a in sorted({r.name.action for r in records})}}
            for part, recs in parts.items()
        }
    return {"clips": len(records), "classes": {str(a): names.get(a, "?") for a in sorted({r.name.action for r in records})},
            "protocols": out}


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
            print(f"  A{int(a):03d} {name[:41]:<41} {parts['train']['per_class'][a]:>6} {parts['test']['per_class'][a]:>6}")
    return 0
