"""`lvlm-var bench`: the benchmark suite (benchmarks/bench.py)."""
from __future__ import annotations

import argparse

USER_ERRORS = ()


def register(cli) -> None:
    b = cli.add("bench", "throughput, latency and scaling of a bundle on this machine (JSON, Markdown, PNG)")
    b.add_argument("--bundle", default="build/bundle")
    b.add_argument("--out", default="build/bench")
    b.add_argument("--quick", action="store_true", help="short runs (about a minute on a tiny bundle)")
    b.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.bench import run_bench

    r = run_bench(args.bundle, args.out, args.quick)
    e, lm = r["encoder"], r["llm"]
    print(f"frame encoder: {', '.join(f'{k} {v:,.0f} fps' for k, v in e['fps'].items())}")
    print(f"caching: {e['caching']['speedup']:.2f}x cheaper per window than re-encoding (W/S = {e['caching']['ideal']:.0f})")
    print(f"label p50: {lm['label_ms_cached_prefix']['p50']:.1f} ms with the cached prefix, "
          f"{lm['label_ms_no_cache']['p50']:.1f} ms without; {lm['llava15_ratio']:.0f}x fewer prompt tokens than LLaVA-1.5")
    print(f"real time: up to {r['max_realtime_streams']} concurrent 15 fps stream(s)")
    return 0
