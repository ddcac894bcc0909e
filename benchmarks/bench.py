"""`lvlm-var bench`: throughput, latency and scaling of a bundle on this machine, each comparison
measured side by side in one run. Writes OUT/bench.json, OUT/bench.md and PNG plots
(latency CDF, fps vs number of streams), every figure naming the machine and the versions.

  1. frame encoder   frames/s at batch 1 and 8: PyTorch eager vs ONNX Runtime (CPU, or the
                     providers present); FLOPs per frame and the share of the CPU's measured peak.
                     A pose front-end bundle: the pose models' ms per frame and the whole front
                     end's (detector, tracked landmarks) on ONNX Runtime vs LiteRT, one thread each
  2. feature caching cost per window: two engines (S new frames + the token engine) vs
                     re-encoding all W frames per window with the same encoder
  3. language model  label latency p50/p99 with and without the cached instruction prefix;
                     explanation tokens/s; prompt tokens per second of video vs LLaVA-1.5's
                     576 image tokens per frame at 1 frame/s
  4. end to end      live 15 fps streams through the whole pipeline (one process): test patterns,
                     or for a pose front-end bundle a rendered person over a local RTSP server; the
                     most streams kept in real time (frame drops < 1 %), latencies, CPU, RSS; for a
                     pose bundle also without the language model (the ingest's own capacity)
  5. quantization    label agreement with F16 and label latency of F16 / Q8_0 / Q5_K_M / Q4_K_M
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time

import numpy as np


def machine() -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = None
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        gpu = r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    from export.bundle import tool_versions

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "versions": tool_versions(),
    }


def timeit(fn, seconds: float, min_runs: int = 3) -> list[float]:
    """Per-call seconds of fn over about `seconds` (after one warm-up call)."""
    fn()
    out, t_end = [], time.perf_counter() + seconds
    while len(out) < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def peak_gflops(seconds: float) -> float:
    """The CPU's measured float32 matrix-multiply rate (numpy BLAS, all cores)."""
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    t = statistics.median(timeit(lambda: a @ a, seconds))
    return 2 * 1024**3 / t / 1e9


def encoder_flops(model) -> int:
    """Multiply-adds x 2 of one frame through the frame encoder (convolutions and linear layers)."""
    import torch

    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total += 2 * out.numel() * m.in_features

    hooks = [
        m.register_forward_hook(hook)
        for m in model.encoder.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    r = model.cfg.R
    with torch.no_grad():
        model.encode_frames(torch.zeros(1, r, r, 3, dtype=torch.uint8))
    for h in hooks:
        h.remove()
    return total


def encoder_variants(bundle: str, manifest: dict) -> dict:
    """{name: frames -> features} for every frame-encoder engine this machine can run: ONNX
    Runtime CPU always; ONNX Runtime CUDA and every TensorRT plan of this device when present."""
    import onnxruntime as ort

    from edge_runtime.engines import OrtEngine

    path = os.path.join(bundle, manifest["engines"]["frame_encoder"]["file"])
    out = {"onnxruntime CPU": OrtEngine(path, providers=["CPUExecutionProvider"])}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        out["onnxruntime CUDA"] = OrtEngine(path, providers=["CUDAExecutionProvider"])
    from export.tensorrt import TensorRTEngine, device_plans

    entry = device_plans(manifest)
    if entry:
        out[f"TensorRT {entry['precision']}"] = TensorRTEngine(os.path.join(bundle, entry["plans"]["frame_encoder"]))
    return {k: (lambda x, e=e: e.run({"frames": x})["features"]) for k, e in out.items()}


def bench_encoder(bundle: str, manifest: dict, seconds: float) -> dict:
    from edge_runtime.engines import Engines

    v = manifest["vst"]
    r = v["resolution"]
    engines = Engines(bundle, manifest, "auto")
    frames = {b: np.random.default_rng(b).integers(0, 255, (b, r, r, 3), dtype=np.uint8) for b in (1, 8)}
    out = {"backend": engines.backend, "fps": {}}
    for name, run_encoder in encoder_variants(bundle, manifest).items():
        for b, x in frames.items():
            out["fps"][f"{name} batch {b}"] = b / statistics.median(timeit(lambda x=x, f=run_encoder: f(x), seconds))
    run = v.get("run")
    if run and os.path.exists(os.path.join(run, "model.safetensors")):
        import torch

        from vst.model import load_checkpoint

        torch.set_num_threads(os.cpu_count() or 1)
        model = load_checkpoint(run)
        for b, x in frames.items():
            t = torch.from_numpy(x)
            with torch.no_grad():
                out["fps"][f"pytorch eager batch {b}"] = b / statistics.median(
                    timeit(lambda t=t: model.encode_frames(t), seconds)
                )
        out["flops_per_frame"] = encoder_flops(model)
        out["ort_vs_pytorch_batch8"] = out["fps"]["onnxruntime CPU batch 8"] / out["fps"]["pytorch eager batch 8"]
        out["ort_vs_pytorch_batch1"] = out["fps"]["onnxruntime CPU batch 1"] / out["fps"]["pytorch eager batch 1"]
    peak = peak_gflops(seconds)
    out["cpu_peak_gflops"] = peak
    if "flops_per_frame" in out:
        best = max(out["fps"].values())
        out["share_of_peak"] = best * out["flops_per_frame"] / (peak * 1e9)
    # 2. feature caching, same engines
    W, S = v["W"], v["S"]
    feats = np.random.default_rng(0).standard_normal((1, W, v["D"]), dtype=np.float32)
    t_tok = statistics.median(timeit(lambda: engines.tokenize(feats), seconds))
    xs = np.random.default_rng(1).integers(0, 255, (W, r, r, 3), dtype=np.uint8)
    t_s = statistics.median(timeit(lambda: engines.encode(xs[:S]), seconds))
    t_w = statistics.median(timeit(lambda: engines.encode(xs), seconds))
    out["caching"] = {
        "W": W,
        "S": S,
        "two_engines_ms_per_window": 1000 * (t_s + t_tok),
        "reencode_ms_per_window": 1000 * (t_w + t_tok),
        "token_engine_ms": 1000 * t_tok,
        "speedup": (t_w + t_tok) / (t_s + t_tok),
        "ideal": W / S,
    }
    return out


def person_frames(n: int = 30, size: int = 360, frame: tuple[int, int] = (640, 360)) -> np.ndarray:
    """n frames of a rendered person (a held-out performer waving), centred in a 16:9 view as
    the ingest hands them to the pose front end."""
    from vst.ntu import ClipName
    from vst.synth import SynthConfig, render_clip

    clip = render_clip(
        SynthConfig(size=size, fps=15), ClipName(setup=1, camera=1, performer=3, replication=1, action=23)
    )
    w, h = frame
    out = np.zeros((n, h, w, 3), np.uint8)
    idx = (np.arange(h) * size / h).astype(int)
    for k in range(n):
        out[k, :, (w - h) // 2 : (w - h) // 2 + h] = clip.frames[k % len(clip.frames)][idx][:, idx]
    return out


def bench_pose(bundle: str, manifest: dict, seconds: float) -> dict:
    """The pose models and the whole front end (detector every `detect_every` frames, landmarks
    on the tracked person every frame) in ms per frame, ONNX Runtime vs LiteRT, one thread each
    (an ingest serves several streams; one core per engine call is what it has)."""
    from edge_runtime.engines import Engines, OrtEngine
    from edge_runtime.pose import DETECTOR_SIZE, LANDMARK_SIZE, PoseFrontEnd
    from export.pose_assets import fetch
    from export.tflite_onnx import LiteRTEngine

    tflite = fetch()
    onnx = {
        role: os.path.join(bundle, manifest["engines"][role]["file"]) for role in ("pose_detector", "pose_landmarks")
    }
    variants = {
        "onnxruntime CPU": (OrtEngine(onnx["pose_detector"], threads=1), OrtEngine(onnx["pose_landmarks"], threads=1)),
        "LiteRT": (LiteRTEngine(tflite["detector"]), LiteRTEngine(tflite[manifest["pose"]["landmark_model"]])),
    }
    frames = person_frames()
    rng = np.random.default_rng(0)
    det_x = rng.uniform(-1, 1, (1, DETECTOR_SIZE, DETECTOR_SIZE, 3)).astype(np.float32)
    lmk_x = {b: rng.uniform(0, 1, (b, LANDMARK_SIZE, LANDMARK_SIZE, 3)).astype(np.float32) for b in (1, 4)}
    out = {"landmark_model": manifest["pose"]["landmark_model"], "ms": {}, "people_found": {}}

    def measure(det, lmk) -> tuple[dict, float]:
        front = PoseFrontEnd(det, lmk)
        k = iter(range(10**9))
        found = []

        def step():
            found.append(len(front.process([("bench", frames[next(k) % len(frames)])])[0]))

        ms = {
            "detector": 1000 * statistics.median(timeit(lambda: det.run({"input_1": det_x}), seconds)),
            "landmarks": 1000 * statistics.median(timeit(lambda: lmk.run({"input_1": lmk_x[1]}), seconds)),
            "landmarks_per_person_batch4": 1000
            * statistics.median(timeit(lambda: lmk.run({"input_1": lmk_x[4]}), seconds))
            / 4,
            "front_end_per_frame": 1000 * statistics.median(timeit(step, max(seconds, 2.0), min_runs=30)),
        }
        return ms, float(np.mean(found))

    for name, (det, lmk) in variants.items():
        out["ms"][name], out["people_found"][name] = measure(det, lmk)
    ort_ms, lite_ms = (out["ms"][n]["front_end_per_frame"] for n in variants)
    out["ort_vs_litert_front_end"] = lite_ms / ort_ms
    out["pytorch"] = (
        "none: BlazePose ships as TFLite only; the ONNX conversion is the project's own (export.tflite_onnx)"
    )
    engines = Engines(bundle, manifest, "auto")
    v = manifest["vst"]
    W, S = v["W"], v["S"]
    feats = np.random.default_rng(0).standard_normal((1, W, v["D"]), dtype=np.float32)
    t_tok = statistics.median(timeit(lambda: engines.tokenize(feats), seconds))
    per_frame = min(ort_ms, lite_ms) / 1000
    out["caching"] = {
        "W": W,
        "S": S,
        "two_engines_ms_per_window": 1000 * (S * per_frame + t_tok),
        "reencode_ms_per_window": 1000 * (W * per_frame + t_tok),
        "token_engine_ms": 1000 * t_tok,
        "speedup": (W * per_frame + t_tok) / (S * per_frame + t_tok),
        "ideal": W / S,
    }
    return out


def _windows(manifest: dict, n: int) -> list[dict]:
    """Test windows ({"tokens", "count", "head"}: the VST head's label probabilities) of the
    bundle's VST on its cache, or random windows (no head) when they are not here."""
    from vst.run_record import training_cache

    run = manifest["vst"].get("run")
    cache = training_cache(run) if run else None
    if cache is None:
        rng = np.random.default_rng(0)
        counts = manifest["lvlm"].get("counts", 0)
        return [
            {
                "tokens": rng.integers(0, manifest["vst"]["K"], manifest["vst"]["T"]).tolist(),
                "count": int(rng.integers(1, counts + 1)) if counts else None,
                "head": None,
            }
            for _ in range(n)
        ]
    from lvlm.examples import build_examples
    from vst.cache import spread

    _, ex = build_examples(
        run, cache, "test", None, windows_per_clip=1, progress=False, mirror=bool(manifest["lvlm"].get("head_mirror"))
    )
    return [{"tokens": e["tokens"], "count": e["count"], "head": e["head_probs"]} for e in spread(ex, n)]


def _reader(bundle: str, manifest: dict, gguf: str | None = None, threads: int | None = None):
    from lvlm.reader import LlamaCppBackend, Reader

    lv = manifest["lvlm"]
    backend = LlamaCppBackend.open(gguf or os.path.join(bundle, lv["file"]), threads=threads)
    return Reader.for_bundle(backend, manifest)


def bench_llm(bundle: str, manifest: dict, windows: list[dict]) -> dict:
    reader = _reader(bundle, manifest)
    reader.read(windows[0]["tokens"], explain=False, count=windows[0]["count"])
    cached, uncached, alone, unspeculated, expl_tps, expl_plain = [], [], [], [], [], []
    for w in windows:  # as the worker reads: pooled with the head where the bundle has a pool
        t0 = time.perf_counter()
        reader.read(w["tokens"], explain=False, exhaustive=False, count=w["count"], head=w["head"])
        cached.append(time.perf_counter() - t0)
        reader.speculate = False  # every trie node a call of its own
        t0 = time.perf_counter()
        reader.read(w["tokens"], explain=False, exhaustive=False, count=w["count"], head=w["head"])
        unspeculated.append(time.perf_counter() - t0)
        reader.speculate = True
        t0 = time.perf_counter()
        reader.read(w["tokens"], explain=False, exhaustive=False, count=w["count"])  # the language model alone
        alone.append(time.perf_counter() - t0)
        reader.forget_prefix()  # the naive way: the whole prompt evaluated for every window
        t0 = time.perf_counter()
        reader.read(w["tokens"], explain=False, exhaustive=False, count=w["count"], head=w["head"])
        uncached.append(time.perf_counter() - t0)
    timed = max(3, len(windows) // 4)
    for w in windows[timed:]:  # a running worker's drafts: the explanations it wrote for other windows (lvlm.reader)
        reader.read(w["tokens"], explain=True, exhaustive=False, count=w["count"], head=w["head"])
    for w in windows[:timed]:
        for speculate, tps in ((True, expl_tps), (False, expl_plain)):
            reader.speculate = speculate
            r = reader.read(w["tokens"], explain=True, exhaustive=False, count=w["count"], head=w["head"])
            n = len(reader.backend.tokenize(r.explanation or "")) + len(reader.explanation_head) + 1
            tps.append(n / r.explanation_s)
    reader.speculate = True
    reader.backend.llm.close()
    v = manifest["vst"]
    # <video> + T tokens (+ the count token) + </video> per window, a window every S frames
    ours = (v["T"] + 2 + bool(manifest["lvlm"].get("counts"))) * v["fps"] / v["S"]
    return {
        "windows": len(windows),
        "prefix_tokens": len(reader.prefix),
        "label_ms_cached_prefix": {
            "p50": 1000 * float(np.percentile(cached, 50)),
            "p99": 1000 * float(np.percentile(cached, 99)),
        },
        "label_ms_no_cache": {
            "p50": 1000 * float(np.percentile(uncached, 50)),
            "p99": 1000 * float(np.percentile(uncached, 99)),
        },
        "pooled": bool(reader.pool and windows[0]["head"] is not None),
        "label_ms_llm_alone": {
            "p50": 1000 * float(np.percentile(alone, 50)),
            "p99": 1000 * float(np.percentile(alone, 99)),
        },
        "label_ms_no_speculation": {
            "p50": 1000 * float(np.percentile(unspeculated, 50)),
            "p99": 1000 * float(np.percentile(unspeculated, 99)),
        },
        "speculation_speedup_p50": float(np.percentile(unspeculated, 50) / np.percentile(cached, 50)),
        "explanation_tokens_per_s": float(np.median(expl_tps)),
        "explanation_tokens_per_s_no_speculation": float(np.median(expl_plain)),
        "prompt_tokens_per_video_second": ours,
        "llava15_tokens_per_video_second": 576.0,
        "llava15_ratio": 576.0 / ours,
        "latencies_cached_ms": [1000 * x for x in cached],
        "latencies_no_cache_ms": [1000 * x for x in uncached],
        "latencies_no_speculation_ms": [1000 * x for x in unspeculated],
    }


def bench_quant(bundle: str, manifest: dict, windows: list[dict], quants: list[str]) -> dict | None:
    from export.gguf_export import quantize, write_gguf

    merged = os.path.join(manifest["lvlm"].get("adapter") or "", "merged")
    if not os.path.isdir(merged):
        return None
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        f16 = write_gguf(merged, os.path.join(tmp, "F16.gguf"))
        ref_reader = _reader(bundle, manifest, f16)
        ref = [ref_reader.label(w["tokens"], exhaustive=False, count=w["count"])[0].label for w in windows]
        ref_reader.backend.llm.close()
        for q in quants:
            path = f16 if q == "F16" else quantize(f16, os.path.join(tmp, f"{q}.gguf"), q)
            reader = _reader(bundle, manifest, path)
            reader.read(windows[0]["tokens"], explain=False, count=windows[0]["count"])
            labels, times = [], []
            for w in windows:
                t0 = time.perf_counter()
                labels.append(reader.label(w["tokens"], exhaustive=False, count=w["count"])[0].label)
                times.append(time.perf_counter() - t0)
            reader.backend.llm.close()
            out[q] = {
                "size_mb": os.path.getsize(path) / 1e6,
                "agreement_with_f16": float(np.mean([a == b for a, b in zip(labels, ref)])),
                "label_ms_p50": 1000 * float(np.median(times)),
            }
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def person_video(out: str, seconds: float) -> str:
    """An H.264 file of consecutive synthetic actions (held-out performers), at least `seconds`
    long, rendered once into OUT."""
    from edge_runtime.demo import render_video

    path = os.path.join(out, "person.mp4")
    if not os.path.exists(path):
        render_video(path, actions=max(2, int(seconds / 3) + 2), seed=5, fps=15, size=256)
    return path


def bench_streams(
    bundle: str, counts: list[int], seconds: float, out: str | None = None, llm: bool = True
) -> list[dict]:
    """Whole pipeline in one process on N live 15 fps streams: test patterns, or for a pose
    front-end bundle (which reads people) a rendered person served over a local RTSP server.
    Frame drops are the sources' own count (a live source keeps only the newest frame: a frame
    replaced before the pipeline took it is a drop); fps per stream is measured between frames.
    llm=False: the ingest alone (no LLM worker), its own capacity."""
    from edge_runtime.service import open_bundle
    from streams.rtsp_server import RtspServer

    manifest, _ = open_bundle(bundle)
    server = None
    if manifest["vst"].get("frontend") == "pose":
        server = RtspServer()
        video = person_video(out or os.path.dirname(os.path.abspath(bundle)), seconds + 5)
        uris = [server.add_file(f"/p{i}", video) for i in range(max(counts))]
        server.start()
    else:
        uris = [f"test://{['ball', 'smpte', 'snow', 'circular'][i % 4]}" for i in range(max(counts))]
    try:
        return [_stream_row(bundle, uris[:n], seconds, llm) for n in counts]
    finally:
        if server is not None:
            server.stop()


def _stream_row(bundle: str, uris: list[str], seconds: float, llm: bool) -> dict:
    from edge_runtime.config import load
    from edge_runtime.demo import Recorder
    from edge_runtime.service import serve

    rec = Recorder()
    cfg = load(
        None,
        {
            "bundle": bundle,
            "name": "bench",
            "streams": [{"id": f"s{i}", "uri": uri} for i, uri in enumerate(uris)],
            "bus": {"windows": "inproc://w", "collect": "inproc://c", "results": "inproc://r"},
            "llm": {"threads": 1, "explain": False, "deadline_s": 2.0},
            "sinks": {"console": False},
        },
    )
    rss = [rss_mb()]
    cpu0, t0 = time.process_time(), time.monotonic()
    stats = serve(
        cfg,
        workers=None if llm else 0,
        duration_s=seconds,
        extra_sinks=[rec],
        on_tick=lambda hub, pool: rss.append(rss_mb()),
    )
    cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
    streams = stats["streams"].values()
    frames, drops = sum(s["frames"] for s in streams), sum(s["drops"] for s in streams)
    tok = [w.capture_to_tokens_ms for w in rec.windows]
    lab = [r.capture_to_tokens_ms + r.tokens_to_label_ms for r in rec.results]
    return {
        "streams": len(uris),
        "seconds": seconds,
        "llm": llm,
        "fps_per_stream": float(np.mean([s["fps"] for s in streams])),
        "frames": frames,
        "frame_drop_share": drops / max(frames + drops, 1),
        "frames_without_person": sum(s.get("frames_without_person", 0) for s in streams),
        "capture_to_provisional_ms": {
            "p50": float(np.percentile(tok, 50)) if tok else None,
            "p99": float(np.percentile(tok, 99)) if tok else None,
        },
        "capture_to_label_ms": {
            "p50": float(np.percentile(lab, 50)) if lab else None,
            "p99": float(np.percentile(lab, 99)) if lab else None,
        },
        "windows": len(rec.windows),
        "results": len(rec.results),
        "stale_or_superseded": sum(
            w.get("stale", 0) + w.get("superseded", 0) for w in stats.get("workers", {}).values()
        ),
        "cpu_cores_used": cpu,
        "max_rss_mb": max(rss),
        "label_latencies_ms": lab,
    }


def plots(result: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = result["machine"]
    name = f"{m['cpu']} ({m['cores']} cores){', ' + m['gpu'] if m['gpu'] else ', no GPU'}"
    versions = ", ".join(
        f"{k} {v}" for k, v in m["versions"].items() if k in ("lvlm-var", "onnxruntime", "llama-cpp-python", "torch")
    )
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    llm = result.get("llm") or {}
    for key, lab in (
        ("latencies_cached_ms", "label, cached prefix"),
        ("latencies_no_speculation_ms", "label, cached prefix, no speculation"),
        ("latencies_no_cache_ms", "label, no prefix cache"),
    ):
        xs = np.sort(llm.get(key, []))
        if len(xs):
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=lab)
    for row in result.get("streams", []):
        xs = np.sort(row["label_latencies_ms"])
        if len(xs):
            ax.plot(
                xs, np.arange(1, len(xs) + 1) / len(xs), ls="--", label=f"capture -> label, {row['streams']} stream(s)"
            )
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("share of windows")
    ax.set_title(f"latency CDF\n{name}", fontsize=8)
    paths.append(_save(fig, ax, os.path.join(out, "latency_cdf.png"), versions))
    rows = result.get("streams", [])
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["streams"] for r in rows], [r["fps_per_stream"] for r in rows], "o-", label="decoded fps per stream")
        alone = result.get("streams_without_llm") or []
        if alone:
            ax.plot(
                [r["streams"] for r in alone],
                [r["fps_per_stream"] for r in alone],
                "s--",
                label="decoded fps per stream, no language model",
            )
        ax.axhline(15 * 0.99, ls="--", c="grey", lw=1, label="real time (15 fps, 1 % drops)")
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("fps per stream")
        ax.set_ylim(0, 17)
        ax.set_title(f"fps vs streams\n{name}", fontsize=8)
        paths.append(_save(fig, ax, os.path.join(out, "fps_vs_streams.png"), versions))
    return paths


def _save(fig, ax, path: str, footer: str) -> str:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=7)
    fig.text(0.01, 0.005, footer, fontsize=6, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# lvlm-var benchmark ({r['date']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"Bundle: {r['bundle']} ({r['bundle_id']})",
        "",
    ]
    e = r["encoder"]
    if "ms" in e:  # the pose front end
        lines += [
            "## 1. Pose front end (one thread per engine)",
            "",
            f"| runtime | detector ms | landmarks ({e['landmark_model']}) ms | landmarks per person at batch 4 ms | "
            "front end ms per frame | people found per frame |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {k} | {v['detector']:.1f} | {v['landmarks']:.1f} | {v['landmarks_per_person_batch4']:.1f} | "
            f"{v['front_end_per_frame']:.1f} | {e['people_found'][k]:.2f} |"
            for k, v in e["ms"].items()
        ]
        lines += [
            "",
            f"The front end on ONNX Runtime is {e['ort_vs_litert_front_end']:.2f}x LiteRT's speed (LiteRT ms / ONNX "
            f"Runtime ms; the detector runs on every 15th frame while a person is tracked). PyTorch: {e['pytorch']}.",
        ]
    else:
        lines += ["## 1. Frame encoder", "", "| engine | frames/s |", "| --- | ---: |"]
        lines += [f"| {k} | {v:,.0f} |" for k, v in e["fps"].items()]
    if "flops_per_frame" in e:
        lines += [
            "",
            f"ONNX Runtime / PyTorch eager: {e['ort_vs_pytorch_batch1']:.2f}x at batch 1, {e['ort_vs_pytorch_batch8']:.2f}x at batch 8. "
            f"{e['flops_per_frame'] / 1e6:.1f} MFLOPs per frame; the fastest rate uses {e['share_of_peak']:.1%} of the "
            f"CPU's measured {e['cpu_peak_gflops']:.0f} GFLOP/s (float32 matmul).",
        ]
    c = e["caching"]
    lines += [
        "",
        "## 2. Feature caching",
        "",
        f"Per window (W={c['W']}, S={c['S']}): two engines {c['two_engines_ms_per_window']:.2f} ms vs re-encoding W frames "
        f"{c['reencode_ms_per_window']:.2f} ms: {c['speedup']:.2f}x cheaper (W/S = {c['ideal']:.0f}; the token engine's "
        f"{c['token_engine_ms']:.2f} ms is paid by both).",
    ]
    if r.get("llm"):
        lm = r["llm"]
        lines += [
            "",
            "## 3. Language model",
            "",
            "| | p50 ms | p99 ms |",
            "| --- | ---: | ---: |",
            f"| label, cached instruction prefix | {lm['label_ms_cached_prefix']['p50']:.1f} | {lm['label_ms_cached_prefix']['p99']:.1f} |",
            f"| label, prompt evaluated each window | {lm['label_ms_no_cache']['p50']:.1f} | {lm['label_ms_no_cache']['p99']:.1f} |",
            f"| label, cached prefix, the language model alone | {lm['label_ms_llm_alone']['p50']:.1f} | "
            f"{lm['label_ms_llm_alone']['p99']:.1f} |",
            f"| label, cached prefix, without speculation | {lm['label_ms_no_speculation']['p50']:.1f} | "
            f"{lm['label_ms_no_speculation']['p99']:.1f} |",
            "",
            (
                "Rows 1, 2 and 4 read as the worker does, pooled with the VST head's label probabilities; row 3 "
                "reads without them."
                if lm["pooled"]
                else "This bundle has no pool with the VST head: every row is the language model alone."
            ),
            "",
            f"Speculation (the head's label fed with the window's context, `lvlm.reader`): row 1 is "
            f"{lm['speculation_speedup_p50']:.2f}x faster p50 than row 4, which asks for every trie node on its own.",
            "",
            f"Explanation: {lm['explanation_tokens_per_s']:.0f} tokens/s with the label's last explanation as the draft, "
            f"{lm['explanation_tokens_per_s_no_speculation']:.0f} without ("
            f"{lm['explanation_tokens_per_s'] / lm['explanation_tokens_per_s_no_speculation']:.2f}x; drafts written "
            f"for the other test windows first). Prompt tokens per second of video: "
            f"{lm['prompt_tokens_per_video_second']:.1f} here vs 576 for LLaVA-1.5 image tokens at 1 frame/s "
            f"({lm['llava15_ratio']:.0f}x fewer).",
        ]
    if r.get("streams"):
        what = "a rendered person over RTSP" if "streams_without_llm" in r else "test patterns"
        lines += [
            "",
            f"## 4. End to end (one process, live 15 fps streams of {what})",
            "",
            "| streams | language model | fps/stream | drops | capture->provisional p50/p99 ms | capture->label p50/p99 ms "
            "| CPU cores | RSS MB |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for s in r["streams"] + r.get("streams_without_llm", []):
            cp, cl = s["capture_to_provisional_ms"], s["capture_to_label_ms"]
            fmt = lambda d: f"{d['p50']:.0f}/{d['p99']:.0f}" if d["p50"] is not None else "-"  # noqa: E731
            lines.append(
                f"| {s['streams']} | {'yes' if s.get('llm', True) else 'no'} | {s['fps_per_stream']:.1f} | "
                f"{s['frame_drop_share']:.1%} | {fmt(cp)} | {fmt(cl)} | "
                f"{s['cpu_cores_used']:.2f} | {s['max_rss_mb']:.0f} |"
            )
        lines += [
            "",
            f"Most streams in real time (drops < 1 %): {r['max_realtime_streams']} (the largest count tried: "
            f"{max(s['streams'] for s in r['streams'])}).",
        ]
        if "streams_without_llm" in r:
            ratio = r["realtime_streams_ratio"]
            lines += [
                "",
                f"Without the language model's worker: {r['max_realtime_streams_without_llm']}; with it the ingest keeps "
                + (f"{ratio:.2f}x that." if ratio is not None else "- (none in real time alone)."),
            ]
    if r.get("quantization"):
        lines += [
            "",
            "## 5. Quantization",
            "",
            "| GGUF | MB | label agreement with F16 | label p50 ms |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {q} | {v['size_mb']:.0f} | {v['agreement_with_f16']:.1%} | {v['label_ms_p50']:.1f} |"
            for q, v in r["quantization"].items()
        ]
    return "\n".join(lines) + "\n"


def realtime_streams(rows: list[dict]) -> int:
    """The most streams of a run kept in real time (frame drops < 1 %)."""
    ok = [r["streams"] for r in rows if r["frame_drop_share"] < 0.01]
    return max(ok) if ok else 0


def run_bench(bundle: str, out: str, quick: bool = False, progress: bool = True) -> dict:
    from edge_runtime.service import open_bundle

    manifest, bid = open_bundle(bundle)
    os.makedirs(out, exist_ok=True)
    seconds = 0.5 if quick else 3.0

    def say(msg):
        if progress:
            print(f"[bench] {msg}", flush=True)

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "bundle": os.path.abspath(bundle),
        "bundle_id": bid,
        "quick": quick,
        "machine": machine(),
    }
    pose = manifest["vst"].get("frontend") == "pose"
    say("1/5 end to end (first, so the RSS is the runtime's own)")
    counts = ([1, 2] if quick else [1, 2, 3, 4, 5]) if pose else ([1, 2] if quick else [1, 2, 4, 6, 8])
    duration = 6.0 if quick else 20.0
    result["streams"] = bench_streams(bundle, counts, duration, out)
    result["max_realtime_streams"] = realtime_streams(result["streams"])
    if pose:  # what the language model's worker costs the ingest: the same streams without it
        result["streams_without_llm"] = bench_streams(bundle, counts, duration, out, llm=False)
        alone = realtime_streams(result["streams_without_llm"])
        result["max_realtime_streams_without_llm"] = alone
        result["realtime_streams_ratio"] = result["max_realtime_streams"] / alone if alone else None
    say("2-3/5 " + ("pose front end" if pose else "frame encoder") + " and feature caching")
    result["encoder"] = bench_pose(bundle, manifest, seconds) if pose else bench_encoder(bundle, manifest, seconds)
    windows = _windows(manifest, 8 if quick else 60)
    say("4/5 language model")
    result["llm"] = bench_llm(bundle, manifest, windows)
    say("5/5 quantization")
    result["quantization"] = bench_quant(
        bundle, manifest, windows, ["F16", "Q8_0"] if quick else ["F16", "Q8_0", "Q5_K_M", "Q4_K_M"]
    )
    result["plots"] = plots(result, out)
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(markdown(result))
    say(f"wrote {out}/bench.json, bench.md and {len(result['plots'])} plots")
    return result
