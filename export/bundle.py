"""The deployable bundle: one directory the edge runtime loads.

    manifest.json         format version, labels, VST geometry, prompt/token layout, quantization,
                          sha256 + size of every file, tool versions, parity results, TensorRT plans
    pose_detector.onnx    \\  the pose front end (a VST of frontend "pose", the default): BlazePose's
    pose_landmarks.onnx   /  detector and landmark model (export.pose_assets, edge_runtime.pose)
    frame_encoder.onnx    \\  or the own frame encoder (frontend "cnn"), also as
                          /  frame_encoder.fp16.onnx for TensorRT 11's strongly typed FP16
    token_engine.onnx     the VST's temporal half (export.onnx_engines)
    lvlm-<QUANT>.gguf     the merged, quantized language model (export.gguf_export)
    glossary.json         what every action token stands for (vst.glossary)
    calibration.npy       uint8 frames [N, R, R, 3] from training clips, for TensorRT INT8 calibration
                          of the own frame encoder (frontend "cnn" only)

`check_bundle` verifies a bundle before anything loads it: every file present with its recorded
size and hash, the ONNX inputs and the GGUF vocabulary agreeing with the manifest, versions that
this code understands.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from importlib import metadata

import numpy as np

from export.gguf_export import QUANTS, ExportError
from lvlm import prompt
from lvlm.base import sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENGINES = ("frame_encoder", "token_engine")
POSE_ENGINES = ("pose_detector", "pose_landmarks", "token_engine")
POSE_INPUTS = {"pose_detector": 224, "pose_landmarks": 256}  # square RGB, float
POSE_FRAME = (640, 360)  # what the streams deliver to the pose front end: the whole view, letterboxed


def engine_roles(manifest: dict) -> tuple[str, ...]:
    """The engines a bundle runs, in order: the pose front end's or the own frame encoder, then the token engine."""
    return POSE_ENGINES if manifest["vst"].get("frontend") == "pose" else ENGINES


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete, tampered with or from an unknown version: one line."""


def tool_versions() -> dict[str, str]:
    out = {}
    for dist in (
        "lvlm-var",
        "torch",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
        "gguf",
        "llama-cpp-python",
        "transformers",
        "peft",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[export] {msg}", flush=True)


def build_bundle(
    vst_run: str,
    adapter: str,
    out: str,
    quant: str = "Q8_0",
    data: str | None = None,
    protocol: str | None = None,
    parity_windows: int = 100,
    calibration_clips: int = 8,
    landmarks: str = "full",
    progress: bool = True,
) -> dict:
    import torch

    from export.gguf_export import label_agreement, logit_parity, quantize, write_gguf
    from export.onnx_engines import export_engines, onnx_parity, token_engine_outputs
    from lvlm.evaluate import open_reader
    from lvlm.examples import build_examples
    from vst.cache import Cache, spread
    from vst.evaluate import check_cache
    from vst.model import load_checkpoint
    from vst.run_record import training_cache
    from vst.windows import clip_input

    if quant not in QUANTS:
        raise ExportError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANTS)}")
    for path, what in (
        (os.path.join(vst_run, "glossary.json"), "run `lvlm-var vst glossary` on the VST run first"),
        (os.path.join(adapter, "lvlm.json"), "pass the --out folder of `lvlm-var finetune`"),
        (os.path.join(adapter, "merged", "config.json"), "the adapter has no merged model; rerun finetune"),
    ):
        if not os.path.exists(path):
            raise ExportError(f"{path} is missing: {what}")
    with open(os.path.join(adapter, "lvlm.json")) as f:
        meta = json.load(f)
    model = load_checkpoint(vst_run)
    cfg = model.cfg
    if meta["codes"] != cfg.K:
        raise ExportError(f"{adapter} was fine-tuned for {meta['codes']} codes but {vst_run} has K={cfg.K}")
    counts = meta.get("counts", 0)  # 0: a format-1 adapter, without count tokens
    if counts not in (0, cfg.counts):
        raise ExportError(
            f"{adapter} reads counts 1..{counts} but {vst_run}'s repetitions head "
            + (f"reads 1..{cfg.counts}" if cfg.counts else "is missing")
        )
    data = data or training_cache(vst_run)
    if not data or not os.path.exists(os.path.join(data, "index.json")):
        raise ExportError(f"no prepared cache for the parity checks ({data}); pass --data")
    cache = Cache.open(data)
    check_cache(cache, cfg)
    protocol = protocol or cache.index["protocol"]
    t_start = time.monotonic()
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)

    # 1. VST engines
    t0 = time.monotonic()
    paths = export_engines(model, out)
    test_clips = spread(cache.split("test", protocol), 24)
    onnx = onnx_parity(model, paths, [clip_input(cfg, cache, c) for c in test_clips])
    pose = None
    if cfg.frontend == "pose":
        from export.pose_assets import PACKAGE, VERSION, fetch, onnx_models, pose_parity

        models = onnx_models(landmarks)
        for role, key in (("pose_detector", "detector"), ("pose_landmarks", "landmarks")):
            shutil.copyfile(models[key], os.path.join(out, f"{role}.onnx"))
        tflite = fetch()
        frames = np.stack([cache.clip_frames(c)[0] for c in test_clips])
        pose = {
            "package": f"{PACKAGE}@{VERSION}",
            "landmark_model": landmarks,
            "frame": list(POSE_FRAME),
            "parity": pose_parity({"detector": tflite["detector"], "landmarks": tflite[landmarks]}, models, frames),
        }
        _log(
            progress,
            f"pose models ({landmarks}): landmark error vs LiteRT {pose['parity']['landmark_max_px']:.4f} px, "
            f"detections equal: {pose['parity']['detections_equal']}",
        )
    onnx["seconds"] = round(time.monotonic() - t0, 1)
    _log(
        progress,
        f"ONNX engines: max |feature error| {onnx['max_abs_feature_error']:.2e}, token agreement "
        f"{onnx['token_agreement']:.2%}, head label agreement {onnx['label_agreement']:.2%}"
        + (f", count agreement {onnx['count_agreement']:.2%}" if onnx["count_agreement"] is not None else "")
        + f" ({onnx['windows']} windows of {onnx['clips']} test clips)",
    )
    shutil.copyfile(os.path.join(vst_run, "glossary.json"), os.path.join(out, "glossary.json"))
    rng = np.random.default_rng(0)
    frames = []
    if cfg.frontend == "cnn":
        for clip in spread(cache.split("train", protocol), calibration_clips):
            f = cache.clip_frames(clip)
            frames.append(f[np.sort(rng.choice(len(f), min(16, len(f)), replace=False))])
        np.save(os.path.join(out, "calibration.npy"), np.concatenate(frames))

    # 2. language model
    t0 = time.monotonic()
    gguf_name = f"lvlm-{quant}.gguf"
    f16 = os.path.join(out, "lvlm-F16.gguf")
    write_gguf(os.path.join(adapter, "merged"), f16 + ".part")
    os.replace(f16 + ".part", f16)
    if quant != "F16":
        quantize(f16, os.path.join(out, gguf_name), quant)
    gguf_seconds = time.monotonic() - t0
    _, windows = build_examples(
        vst_run, data, "test", protocol, windows_per_clip=1, progress=progress, mirror=bool(meta.get("head_mirror"))
    )
    windows = spread(windows, parity_windows)
    hf, _ = open_reader(adapter)
    sequences = [hf.ids(w["tokens"], w["count"]) + hf.label_ids[lab] for w, lab in zip(windows[:16], hf.labels * 16)]
    logits = logit_parity(hf.backend.model, f16, sequences)
    gguf_reader, _ = open_reader(adapter, os.path.join(out, gguf_name))
    if gguf_reader.prefix != hf.prefix or gguf_reader.label_ids != hf.label_ids:
        raise ExportError("llama.cpp tokenizes the prompt differently from transformers; the GGUF tokenizer is wrong")
    labels = label_agreement(hf, gguf_reader, windows, progress)
    gguf_reader.backend.llm.close()
    if quant != "F16":
        os.remove(f16)
    _log(
        progress,
        f"GGUF {quant}: F16 top-1 agreement with transformers {logits['top1_agreement']:.2%} over "
        f"{logits['positions']} positions ({logits['top1_agreement_outside_ties']:.2%} outside near-ties); label agreement {quant} vs transformers {labels['label_agreement']:.2%} "
        f"on {labels['windows']} test windows",
    )

    if cfg.frontend == "pose":
        engines = {
            role: {"file": f"{role}.onnx", "inputs": {"input_1": ["batch", size, size, 3]}}
            for role, size in POSE_INPUTS.items()
        }
        files = ["pose_detector.onnx", "pose_landmarks.onnx", "token_engine.onnx", gguf_name, "glossary.json"]
        vst_input = "pose features float32 [N, 25 x (x, y, visibility)]: x, y in frame heights (vst.joints)"
    else:
        engines = {
            "frame_encoder": {
                "file": "frame_encoder.onnx",
                "fp16_file": "frame_encoder.fp16.onnx",
                "inputs": {"frames": ["n", cfg.R, cfg.R, 3]},
                "outputs": {"features": ["n", cfg.feature_size]},
            }
        }
        files = [
            "frame_encoder.onnx",
            "frame_encoder.fp16.onnx",
            "token_engine.onnx",
            gguf_name,
            "glossary.json",
            "calibration.npy",
        ]
        vst_input = "uint8 RGB NHWC [N, R, R, 3]"
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "labels": meta["labels"],
        "classes": cfg.classes,
        "vst": {
            "W": cfg.W,
            "S": cfg.S,
            "T": cfg.T,
            "K": cfg.K,
            "D": cfg.feature_size,
            "fps": cfg.fps,
            "resolution": cfg.R,
            "frontend": cfg.frontend,
            "input": vst_input,
            "normalisation": {"mean": list(cfg.mean), "std": list(cfg.std), "scale": 255.0, "inside_graph": True},
            "run": os.path.abspath(vst_run),
        },
        "engines": {
            **engines,
            "token_engine": {
                "file": "token_engine.onnx",
                "inputs": {"features": ["batch", cfg.W, cfg.feature_size]},
                "outputs": token_engine_outputs(cfg),
            },
        },
        "lvlm": {
            "file": gguf_name,
            "quantization": quant,
            "token_id_base": meta["token_id_base"],
            "codes": meta["codes"],
            "counts": counts,
            "vocab_size": meta["token_id_base"] + len(prompt.added_tokens(meta["codes"], counts)),
            "prompt_format_version": meta["prompt_format_version"],
            "label_temperature": meta.get("label_temperature", 1.0),
            "label_pool": meta.get("label_pool"),
            "head_mirror": bool(meta.get("head_mirror")),
            "base": meta.get("base"),
            "adapter": os.path.abspath(adapter),
        },
        "calibration": {"file": "calibration.npy", "frames": int(sum(len(f) for f in frames))} if frames else None,
        "pose": pose,
        "parity": {"onnx": onnx, "gguf_f16_logits": logits, f"gguf_{quant.lower()}_labels": labels},
        "export_seconds": {
            "onnx": onnx["seconds"],
            "gguf": round(gguf_seconds, 1),
            "total": round(time.monotonic() - t_start, 1),
        },
        "tools": tool_versions(),
        "files": {
            name: {"sha256": sha256_file(os.path.join(out, name)), "size": os.path.getsize(os.path.join(out, name))}
            for name in files
        },
        "tensorrt": {},
    }
    write_manifest(out, manifest)
    return manifest


def write_manifest(folder: str, manifest: dict) -> None:
    path = os.path.join(folder, MANIFEST)
    with open(path + ".part", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(path + ".part", path)


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isdir(folder):
        raise BundleError(f"{folder}: no such bundle directory")
    if not os.path.exists(path):
        raise BundleError(f"{folder}: no {MANIFEST}; not a bundle (build one with `lvlm-var export bundle`)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        got = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise BundleError(f"{path}: bundle format version {got}, this lvlm-var reads version {FORMAT_VERSION}")
    return manifest


def bundle_id(manifest: dict) -> str:
    """A short id of a bundle's content: its files' hashes, its labels and how its labels are read
    (temperature, pool with the VST head, the head's mirror reading), so that results name the
    bundle that made them and a bundle calibrated again is another bundle."""
    lv = manifest.get("lvlm", {})
    blob = json.dumps(
        {
            "files": {k: v["sha256"] for k, v in sorted(manifest["files"].items())},
            "labels": manifest["labels"],
            "reading": {k: lv.get(k) for k in ("label_temperature", "label_pool")}
            | ({"head_mirror": True} if lv.get("head_mirror") else {}),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _verify_file(folder: str, name: str, entry: dict) -> None:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        raise BundleError(f"{folder}: {name} is missing (incomplete bundle)")
    if os.path.getsize(path) != entry["size"]:
        raise BundleError(
            f"{folder}: {name} is {os.path.getsize(path)} bytes, the manifest says {entry['size']} (truncated or replaced)"
        )
    if sha256_file(path) != entry["sha256"]:
        raise BundleError(f"{folder}: {name} does not match its sha256 in the manifest (modified after export)")


def check_bundle(folder: str) -> dict:
    """Verify a bundle; returns a summary. Raises BundleError with one line on the first problem."""
    m = read_manifest(folder)
    try:
        required = (
            {m["engines"][e]["file"] for e in engine_roles(m)}
            | {m["lvlm"]["file"], "glossary.json"}
            | ({m["calibration"]["file"]} if m.get("calibration") else set())
        )
        vst, lv = m["vst"], m["lvlm"]
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{folder}: manifest lacks {exc}") from None
    missing = required - set(m["files"])
    if missing:
        raise BundleError(f"{folder}: manifest lists no hash for {', '.join(sorted(missing))}")
    for name, entry in m["files"].items():
        _verify_file(folder, name, entry)
    if lv["prompt_format_version"] not in prompt.READS_FORMATS:
        raise BundleError(
            f"{folder}: prompt format version {lv['prompt_format_version']}, this lvlm-var reads "
            f"{', '.join(map(str, prompt.READS_FORMATS))}; re-export the bundle"
        )
    _check_reading(folder, lv)
    _check_onnx(folder, m)
    _check_gguf(folder, m)
    plans = {}
    for key, entry in (m.get("tensorrt") or {}).items():
        for role in engine_roles(m):
            name = entry["plans"][role]
            _verify_file(folder, name, entry["files"][name])
        plans[key] = entry.get("precision")
    size = sum(e["size"] for e in m["files"].values())
    return {
        "bundle": os.path.abspath(folder),
        "id": bundle_id(m),
        "labels": len(m["labels"]),
        "W": vst["W"],
        "S": vst["S"],
        "frontend": vst.get("frontend", "cnn"),
        "T": vst["T"],
        "K": vst["K"],
        "fps": vst["fps"],
        "resolution": vst["resolution"],
        "quantization": lv["quantization"],
        "files": len(m["files"]),
        "bytes": size,
        "tensorrt_plans": plans,
        "tools": m.get("tools", {}),
        "label_temperature": lv.get("label_temperature", 1.0),
        "label_pool": lv.get("label_pool"),
        "head_mirror": bool(lv.get("head_mirror")),
    }


def _check_reading(folder: str, lv: dict) -> None:
    """How the labels are read: a temperature > 0, no pool or one with two weights >= 0, and the
    head's mirror reading true or false."""
    t, pool = lv.get("label_temperature", 1.0), lv.get("label_pool")
    if not isinstance(lv.get("head_mirror", False), bool):
        raise BundleError(f"{folder}: head_mirror {lv['head_mirror']!r} in the manifest; it must be true or false")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0:
        raise BundleError(f"{folder}: label temperature {t!r} in the manifest; it must be a number > 0")
    if pool is not None and not (
        isinstance(pool, dict)
        and set(pool) == {"llm", "head"}
        and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in pool.values())
    ):
        raise BundleError(
            f'{folder}: label pool {pool!r} in the manifest; it must be {{"llm": a, "head": b}} with a, b >= 0'
        )


def _check_onnx(folder: str, m: dict) -> None:
    """The engines' input shapes, read with ONNX Runtime (what the edge box has)."""
    import onnxruntime as ort

    vst = m["vst"]
    want = {
        "frame_encoder": [None, vst["resolution"], vst["resolution"], 3],
        "token_engine": [None, vst["W"], vst["D"]],
        **{role: [None, size, size, 3] for role, size in POSE_INPUTS.items()},
    }
    want = {role: want[role] for role in engine_roles(m)}
    for role, shape in want.items():
        name = m["engines"][role]["file"]
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            session = ort.InferenceSession(os.path.join(folder, name), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any load failure is a broken file
            raise BundleError(
                f"{folder}: {name} is not a loadable ONNX model ({str(exc).splitlines()[0][:80]})"
            ) from None
        dims = [d if isinstance(d, int) else None for d in session.get_inputs()[0].shape]
        if dims != shape:
            raise BundleError(f"{folder}: {name} takes {dims}, the manifest says {shape}")
        if (
            role == "token_engine"
            and m["lvlm"].get("counts")
            and "count" not in {o.name for o in session.get_outputs()}
        ):
            raise BundleError(f"{folder}: the language model reads count tokens but {name} has no count output")


def _check_gguf(folder: str, m: dict) -> None:
    import gguf

    lv = m["lvlm"]
    try:
        reader = gguf.GGUFReader(os.path.join(folder, lv["file"]))
        tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    except Exception as exc:  # noqa: BLE001 - any parse failure is a broken file
        raise BundleError(f"{folder}: {lv['file']} is not a readable GGUF ({str(exc)[:80]})") from None
    if len(tokens) != lv["vocab_size"]:
        raise BundleError(f"{folder}: {lv['file']} has {len(tokens)} tokens, the manifest says {lv['vocab_size']}")
    base = lv["token_id_base"]
    added = prompt.added_tokens(lv["codes"], lv.get("counts", 0))
    if tokens[base : base + len(added)] != added:
        raise BundleError(
            f"{folder}: {lv['file']} does not hold the action tokens at ids {base}..; wrong model for this bundle"
        )
