"""`lvlm-var export bundle|trt` and `lvlm-var check`: the deployable bundle."""

from __future__ import annotations

import argparse
import json

from export.bundle import BundleError
from export.gguf_export import QUANTS, ExportError

USER_ERRORS = (BundleError, ExportError)


def register(cli) -> None:
    g = cli.group("export", "build the deployable bundle (ONNX engines, quantized GGUF) and TensorRT plans")
    b = g.add_parser("bundle", help="VST run + fine-tuned language model -> one verified bundle directory")
    b.add_argument("--vst", required=True, help="VST run folder (with glossary.json)")
    b.add_argument("--lvlm", required=True, help="the --out folder of `lvlm-var finetune`")
    b.add_argument("--out", required=True, help="bundle directory")
    b.add_argument(
        "--quant",
        choices=tuple(QUANTS),
        default="Q8_0",
        help="default Q8_0: SmolLM2-135M rows (576 wide) do not fit K-quant blocks, Q4_K_M falls back and loses label agreement",
    )
    b.add_argument(
        "--data", default=None, help="prepared cache for the parity checks (default: the VST's training cache)"
    )
    b.add_argument("--protocol", default=None)
    b.add_argument("--parity-windows", type=int, default=100, help="test windows for the GGUF label agreement")
    b.set_defaults(func=cmd_bundle)

    t = g.add_parser("trt", help="build TensorRT plans for a bundle on this machine's GPU")
    t.add_argument("bundle")
    t.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    t.add_argument("--workspace", type=int, default=1024, help="builder workspace, MiB")
    t.add_argument("--max-batch", type=int, default=64, help="largest frame-encoder batch (streams x frames per step)")
    t.add_argument("--max-windows", type=int, default=16, help="largest token-engine batch")
    t.add_argument("--data", default=None, help="prepared cache for the parity check (default: the VST's)")
    t.set_defaults(func=cmd_trt)

    c = cli.add("check", "verify a bundle (hashes, shapes, versions) and print a summary")
    c.add_argument("bundle")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)


def cmd_bundle(args: argparse.Namespace) -> int:
    from export.bundle import build_bundle, check_bundle

    m = build_bundle(args.vst, args.lvlm, args.out, args.quant, args.data, args.protocol, args.parity_windows)
    s = check_bundle(args.out)
    print(
        f"bundle {s['id']} in {args.out}: {s['files']} files, {s['bytes'] / 1e6:.1f} MB, "
        f"exported in {m['export_seconds']['total']:.0f} s; `lvlm-var check {args.out}` passes"
    )
    return 0


def cmd_trt(args: argparse.Namespace) -> int:
    from export.tensorrt import build_bundle_plans

    e = build_bundle_plans(args.bundle, args.precision, args.workspace, args.max_batch, args.max_windows, args.data)
    p = e["parity"]
    parity = (
        (
            f"token agreement {p['token_agreement']:.2%}, label agreement {p['label_agreement']:.2%}, "
            + (f"count agreement {p['count_agreement']:.2%}, " if p.get("count_agreement") is not None else "")
            + f"max |feature error| {p['max_abs_feature_error']:.2e}"
        )
        if p
        else "parity not checked (VST run or cache not here)"
    )
    print(
        f"TensorRT {e['tensorrt']} {e['precision']} plans for {e['gpu']} (sm {e['compute_capability']}) in "
        f"{e['build_seconds']:.0f} s; {parity}"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from export.bundle import check_bundle

    s = check_bundle(args.bundle)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    plans = ", ".join(f"{k} ({v})" for k, v in s["tensorrt_plans"].items()) or "none"
    print(f"bundle {s['id']} OK: {s['files']} files, {s['bytes'] / 1e6:.1f} MB, all hashes match")
    seen = (
        "the pose front end (BlazePose, whole view, person tracks)"
        if s["frontend"] == "pose"
        else f"the own frame encoder at {s['resolution']} px"
    )
    print(
        f"  {s['labels']} labels; VST W={s['W']} S={s['S']} T={s['T']} K={s['K']} on {seen}, {s['fps']} fps; "
        f"language model {s['quantization']}; TensorRT plans: {plans}"
    )
    pool = s["label_pool"]
    print(
        "  labels: "
        + (
            f"pooled, {pool['llm']:g} x log p(language model) + {pool['head']:g} x log p(VST head"
            f"{', mirror reading' if s['head_mirror'] else ''})"
            if pool
            else f"the language model's at temperature {s['label_temperature']:g}"
        )
    )
    return 0
