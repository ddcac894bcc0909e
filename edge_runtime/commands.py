"""`lvlm-var run | ingest | llm-worker | monitor | config | keys | demo`: the edge runtime's commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from edge_runtime.bus import BusError
from edge_runtime.config import ConfigError
from export.bundle import BundleError
from streams.errors import SourceError

USER_ERRORS = (ConfigError, BusError, BundleError, SourceError)


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="TOML config file (lvlm-var config example)")
    p.add_argument("--bundle", default=None, help="override: bundle directory")
    p.add_argument(
        "--stream", action="append", default=[], metavar="ID=URI", help="override: add a stream (repeatable)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any field, e.g. --set llm.threads=4 --set sinks.console=false",
    )


def register(cli) -> None:
    r = cli.add("run", "everything in one process: streams -> VST -> bus (inproc) -> LLM workers -> sinks")
    _service_args(r)
    r.add_argument(
        "--until-done",
        action="store_true",
        help="exit once every source has ended and its results are in (the default when every stream is a file)",
    )
    r.set_defaults(func=cmd_run, ingest=True, workers=None)

    i = cli.add("ingest", "streams + VST engines -> windows on the bus; results from the workers -> sinks and PUB")
    _service_args(i)
    i.set_defaults(func=cmd_run, ingest=True, workers=0, until_done=False)

    w = cli.add("llm-worker", "windows from the bus -> llama.cpp -> results back to the ingest")
    _service_args(w)
    w.set_defaults(func=cmd_run, ingest=False, workers=1, until_done=False)

    m = cli.add("monitor", "subscribe to the results and print them")
    _service_args(m)
    m.add_argument("--streams", default="", help="comma-separated stream ids (default: all)")
    m.add_argument("--count", type=int, default=None, help="exit after this many results (events are shown too)")
    m.add_argument("--timeout", type=float, default=None, help="exit after this many seconds")
    m.add_argument("--json", action="store_true", help="one JSON object per line")
    m.add_argument("--health", action="store_true", help="also show the ingest's Health messages (every 5 s)")
    m.set_defaults(func=cmd_monitor)

    c = cli.group("config", "configuration files")
    chk = c.add_parser("check", help="validate a TOML config (errors name the field)")
    chk.add_argument("file")
    chk.set_defaults(func=cmd_config_check)
    ex = c.add_parser("example", help="print an example config")
    ex.set_defaults(func=cmd_config_example)

    k = cli.group("keys", "CURVE keys for tcp:// endpoints")
    gen = k.add_parser("generate", help="write NAME.key (public) and NAME.key_secret into a folder")
    gen.add_argument("--out", required=True)
    gen.add_argument("--name", required=True)
    gen.set_defaults(func=cmd_keys)

    d = cli.add(
        "demo", "the live demo: a synthetic multi-action video over a local RTSP server through the whole pipeline"
    )
    d.add_argument("--bundle", default="build/bundle")
    d.add_argument("--actions", type=int, default=8, help="consecutive actions in the video")
    d.add_argument("--seed", type=int, default=2026)
    d.add_argument("--out", default=None, help="folder for the video, results and report (default: BUNDLE/../demo)")
    d.add_argument("--no-console", action="store_true", help="no live table (results are still written)")
    d.set_defaults(func=cmd_demo)


def overrides(args: argparse.Namespace) -> dict:
    from edge_runtime.config import parse_value

    out: dict = {}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value.strip())
    if args.bundle:
        out["bundle"] = args.bundle
    return out


def load_config(args: argparse.Namespace):
    from edge_runtime.config import load

    cfg = load(args.config, overrides(args))
    if args.stream:
        streams = [s.model_dump() for s in cfg.streams]
        for item in args.stream:
            if "=" not in item:
                raise ConfigError(f"--stream {item!r}: expected ID=URI")
            sid, uri = item.split("=", 1)
            streams.append({"id": sid, "uri": uri})
        cfg = load(args.config, {**overrides(args), "streams": streams})
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from edge_runtime.service import serve

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    cfg = load_config(args)
    if args.ingest and not cfg.streams:
        raise ConfigError("no streams: add [[streams]] to the config or pass --stream ID=URI")
    from streams.uri import parse as parse_uri

    # `run` over recorded files alone ends with them; the services (ingest, llm-worker) keep running
    files_only = args.command == "run" and all(not parse_uri(s.uri).live for s in cfg.streams)
    from edge_runtime.sinks import EventLog

    events = EventLog() if args.ingest else None
    result = serve(
        cfg,
        ingest=args.ingest,
        workers=args.workers,
        until_done=args.until_done or files_only,
        extra_sinks=[events] if events is not None else None,
    )
    print(json.dumps(result, indent=1), file=sys.stderr)
    if files_only:
        print(events.summary())
    if result.get("error"):
        print(f"lvlm-var {args.command}: error: {result['error']}", file=sys.stderr)
        return 1
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    import time

    import zmq

    from edge_runtime import messages
    from edge_runtime.bus import client_socket

    cfg = load_config(args) if (args.config or args.bundle) else None
    if cfg is None:
        from edge_runtime.config import load

        cfg = load(None, {**overrides(args), "bundle": "-"})
    ctx = zmq.Context()
    s = client_socket(ctx, zmq.SUB, cfg.bus.results, cfg.bus)
    topics = [t for t in args.streams.split(",") if t] or [""]
    for t in topics:
        s.setsockopt(zmq.SUBSCRIBE, t.encode())
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    seen, bad, t0 = 0, 0, time.monotonic()
    try:
        while args.count is None or seen < args.count:
            if args.timeout is not None and time.monotonic() - t0 > args.timeout:
                break
            if not dict(poller.poll(200)):
                continue
            parts = s.recv_multipart()
            try:
                r = messages.decode(parts[-1])
            except messages.MessageError as exc:
                bad += 1
                print(f"rejected a message: {exc}", file=sys.stderr)
                continue
            if isinstance(r, messages.Health):
                if args.health:
                    print(f"[health] {r.name}: {r.state} {json.dumps(r.counters)}", flush=True)
                continue
            event = isinstance(r, messages.ActionEvent)
            if event and r.state == "update":  # an event is shown where it starts and where it ends
                continue
            seen += not event  # --count counts results
            if args.json:
                import dataclasses

                print(json.dumps({"kind": messages.KIND_OF[type(r)], **dataclasses.asdict(r)}), flush=True)
            elif event:
                from edge_runtime.sinks import event_line

                print(event_line(r), flush=True)
            else:
                print(
                    f"{messages.who(r)} #{r.window_seq}: {r.label} (p={r.probability:.2f}; VST {r.provisional_label} "
                    f"{r.provisional_score:.2f}) {r.explanation or ''}",
                    flush=True,
                )
    except KeyboardInterrupt:
        pass
    finally:
        s.close(0)
        ctx.term()
    return 0 if args.count is None or seen >= args.count else 1


def cmd_config_check(args: argparse.Namespace) -> int:
    from edge_runtime.config import load

    cfg = load(args.file)
    print(
        f"{args.file}: OK ({len(cfg.streams)} stream(s), bundle {cfg.bundle}, backend {cfg.engine.backend}, "
        f"{cfg.llm.workers} LLM worker(s))"
    )
    return 0


def cmd_config_example(args: argparse.Namespace) -> int:
    from edge_runtime.config import EXAMPLE

    print(EXAMPLE, end="")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from edge_runtime.bus import generate_keys

    public, secret = generate_keys(args.out, args.name)
    print(f"public key {public} (give it to the other side), secret key {secret} (keep it here, mode 600)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge_runtime.demo import run_demo

    return run_demo(args.bundle, args.actions, args.seed, args.out, console=not args.no_console)
