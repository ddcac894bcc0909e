"""`lvlm-var streams ...`: print the pipeline a source builds, or probe a source for frames."""

from __future__ import annotations

import argparse
import time

from streams.errors import SourceError

USER_ERRORS = (SourceError,)


def register(cli) -> None:
    ssub = cli.group("streams", "inspect video sources (describe a pipeline, probe for frames)")
    for name, func, helptext in (
        ("describe", cmd_describe, "print the GStreamer pipeline a source URI builds"),
        ("probe", cmd_probe, "open a source and report resolution, fps, codec and whether frames arrive"),
    ):
        q = ssub.add_parser(name, help=helptext)
        q.add_argument("uri", help="file path, rtsp://, /dev/videoN, csi://N, test:// or pipeline://")
        q.add_argument("--size", type=int, default=112, help="output frame size (square)")
        q.add_argument("--fps", type=int, default=15, help="output frame rate")
        q.add_argument("--realtime", action="store_true", help="pace files at real time")
        if name == "probe":
            q.add_argument("--seconds", type=float, default=5.0, help="how long to read (default 5)")
        q.set_defaults(func=func)


def _source(args):
    from streams.pipeline import Conversion
    from streams.source import Source

    return Source(
        args.uri,
        Conversion(args.size, args.size, args.fps),
        realtime=args.realtime,
        connect_timeout_s=min(10.0, getattr(args, "seconds", 10.0)),
        max_reconnects=0,
    )


def cmd_describe(args: argparse.Namespace) -> int:
    from streams.gst import init
    from streams.pipeline import check_available, decoder_note

    src = _source(args)
    init()
    print(
        f"source:   {src.spec.kind} {src.spec.display()}"
        + (" (credentials set as properties)" if src.spec.user else "")
    )
    print(f"policy:   {src.buffer.policy} ({'live' if src.spec.live else 'file'})")
    print(f"decoding: {decoder_note()}")
    print(f"pipeline: {src.description}")
    check_available(src.spec, src.conversion)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    src = _source(args)
    first = last = None
    count = 0
    with src:
        t0 = (
            time.monotonic()
        )  # from here: GStreamer's own start (a registry rescan can take seconds) is not the source's
        while time.monotonic() - t0 < args.seconds:
            frame = src.read(0.1)
            if frame is None:
                if src.state.final:
                    break
                continue
            count += 1
            first = first or frame
            last = frame
        stats = src.stats()
    if count:
        print(f"source:  {src.spec.display()}")
        print(f"input:   {stats.input_caps}")
        print(f"decoder: {stats.decoder or 'none (raw video)'}")
        span = (last.capture_wall_ns - first.capture_wall_ns) / 1e9
        rate = (count - 1) / span if span > 0 else float("nan")
        print(
            f"frames:  {count} in {args.seconds:.1f}s, output {first.rgb.shape[1]}x{first.rgb.shape[0]} RGB, "
            f"{rate:.1f} fps delivered, {stats.drops} dropped"
        )
        return 0
    if stats.last_error:
        raise SourceError(stats.last_error)
    raise SourceError(f"{src.spec.display()}: no frames arrived within {args.seconds:.1f}s")
