"""The CUDA paths, measured on a GPU machine that need not hold the whole stack (no GStreamer,
no llama.cpp): each comparison is made against the CPU in the same run.

  python -m benchmarks.cuda_check env                 what this machine has (GPU, torch, ONNX Runtime, TensorRT)
  python -m benchmarks.cuda_check train CACHE OUT     VST training (both stages, a few steps) on CUDA and on
                                                      the CPU from the same seed: first losses, steps/s, ratio
  python -m benchmarks.cuda_check ort BUNDLE CACHE OUT  the bundle's ONNX engines in ONNX Runtime CUDA against
                                                      CPU on the cache's test clips: feature error, token
                                                      agreement, frames/s at batch 1 / 8 / 64
  python -m benchmarks.cuda_check recipe ROOT OUT     the default synthetic dataset rendered straight into a
                                                      cache under ROOT (no GStreamer: the frames skip the video
                                                      codec), the default VST recipe trained on it on this
                                                      machine's training device, stage by stage timed, and its
                                                      X-Sub test reading (plain and mirror)
  python -m benchmarks.cuda_check finetune VST CACHE OUT [BASE] [--random-weights]
                                                      the language-model fine-tune (the default 450 steps) on
                                                      CUDA, a few steps of it on the CPU from the same seed, and
                                                      the merged model made on CUDA reloaded on the CPU: its
                                                      logits against CUDA's. BASE: smollm2-135m (default) or a
                                                      Hugging Face folder; --random-weights builds the model from
                                                      BASE's config.json alone (a step costs the same whatever
                                                      the weights, and no weights need to travel)

Each command prints a short table and writes OUT/cuda_<command>.json. Without a CUDA device the
CUDA columns say why they are missing and the CPU ones are still measured.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks.bench import timeit


def _write(out: str, name: str, result: dict) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"cuda_{name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


def env() -> dict:
    """GPU, driver and the versions of what the CUDA paths need; None where a thing is absent."""
    out = {
        "gpu": None,
        "torch": None,
        "torch_cuda": None,
        "onnxruntime": None,
        "ort_providers": None,
        "tensorrt": None,
        "libnvinfer": None,
    }
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        out["gpu"] = r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        out["onnxruntime"] = ort.__version__
        out["ort_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    try:
        import tensorrt

        out["tensorrt"] = tensorrt.__version__
    except ImportError as exc:
        out["tensorrt"] = f"not importable: {exc}"
    try:
        r = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=20)
        out["libnvinfer"] = [line.split()[0] for line in r.stdout.splitlines() if "libnvinfer" in line] or None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def _train_once(cache: str, out: str, device: str, tc_fields: dict, overrides: dict | None) -> dict:
    """One short training run in a child process (so CUDA_VISIBLE_DEVICES decides the device)."""
    code = (
        "import json,sys; from vst.train import TrainConfig, train; "
        f"r = train({cache!r}, {out!r}, TrainConfig(**json.loads(sys.argv[1])), progress=False, "
        f"overrides={overrides!r}); print('RESULT', json.dumps(r))"
    )
    envs = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "" if device == "cpu" else os.environ.get("CUDA_VISIBLE_DEVICES", "0"),
    }
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code, json.dumps(tc_fields)], capture_output=True, text=True, env=envs)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        return {"device": device, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    result = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    history = [json.loads(line) for line in open(os.path.join(out, "history.jsonl"))]
    frames = next(h for h in history if h["stage"] == "frames")
    tokens = [h for h in history if h["stage"] == "tokens"]
    return {
        "device": device,
        "wall_s": round(wall, 1),
        "train_s": result["seconds"],
        "frame_stage_s": frames["elapsed_s"],
        "frame_first_loss": frames["first_loss"],
        "frame_loss": frames["loss"],
        "token_stage_s": round(tokens[-1]["elapsed_s"] - frames["elapsed_s"], 1) if tokens else None,
        "token_first_ce": tokens[-1]["first_ce"] if tokens else None,
        "token_ce": tokens[-1]["ce"] if tokens else None,
        "top1": tokens[-1].get("top1") if tokens else None,
    }


def _sampling_s(cache_dir: str, overrides: dict | None = None, batch: int = 64) -> float:
    """Median seconds to draw one stage-1 batch (decode, augment, pose targets): the CPU side of a step."""
    from vst.cache import Cache
    from vst.model import SIZES, VSTConfig
    from vst.windows import Augment, FrameSampler

    cache = Cache.open(cache_dir)
    clips = cache.split("train")
    cfg = VSTConfig(classes=sorted({c["action"] for c in clips}), **{**SIZES["small"], **(overrides or {})})
    sampler = FrameSampler(cache, clips, cfg, Augment())
    return _median_s(lambda: sampler.sample(batch), 1.0)


def train_check(cache: str, out: str, frame_steps: int = 300, epochs: int = 10, overrides: dict | None = None) -> dict:
    """The default-size VST (or `overrides` of it) trained for a few steps on CUDA and on all CPU
    cores, same seed and data."""
    import torch

    tc = {"frame_steps": frame_steps, "epochs": epochs, "eval_every_epochs": epochs, "eval_clips": 8}
    result = {"config": tc, "cpu_threads": os.cpu_count(), "runs": {}}
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    for device in devices:
        result["runs"][device] = _train_once(cache, os.path.join(out, f"train_{device}"), device, tc, overrides)
    if "cuda" not in result["runs"]:
        result["runs"]["cuda"] = {"error": "no CUDA device"}
    result["stage1_batch_sampling_ms"] = round(1e3 * _sampling_s(cache, overrides), 1)
    ok = [result["runs"][d] for d in ("cuda", "cpu") if "error" not in result["runs"][d]]
    if len(ok) == 2:
        result["frame_stage_speedup"] = round(ok[1]["frame_stage_s"] / ok[0]["frame_stage_s"], 2)
        result["token_stage_speedup"] = round(ok[1]["token_stage_s"] / ok[0]["token_stage_s"], 2)
        result["first_loss_rel_diff"] = (
            abs(ok[0]["frame_first_loss"] - ok[1]["frame_first_loss"]) / ok[1]["frame_first_loss"]
        )
    return result


def _render_job(args) -> tuple:
    from vst.synth import render_clip

    cfg, name, data = args
    clip = render_clip(cfg, name)
    np.savez(
        os.path.join(data, "skeletons", name.stem + ".npz"),
        joints_world=clip.joints_world,
        joints3d=clip.joints3d,
        joints2d=clip.joints2d,
    )
    return name, clip.frames, clip.attributes


def render_cache(cfg, root: str, protocol: str = "xsub", workers: int | None = None) -> str:
    """A synthetic dataset rendered straight into a frame cache, ROOT/cache (skeletons in ROOT/data),
    for a GPU machine without GStreamer. Clips, labels, attributes and skeletons are `data synth`'s;
    the frames skip the H.264 round trip, so they are not bit-identical to a prepared cache's."""
    import multiprocessing as mp

    from streams.pipeline import CONVERSION_VERSION
    from vst.cache import write_index
    from vst.ntu import class_names, split_of

    data, cache = os.path.join(root, "data"), os.path.join(root, "cache")
    os.makedirs(os.path.join(data, "skeletons"), exist_ok=True)
    os.makedirs(cache, exist_ok=True)
    clips, offset = [], 0
    jobs = [(cfg, name, data) for name in cfg.names()]
    # spawned, not forked: a fork of a process with live threads (torch, tqdm) can hang in a lock
    spawn = mp.get_context("spawn")
    with open(os.path.join(cache, "frames.u8"), "wb") as f, spawn.Pool(workers or os.cpu_count()) as pool:
        for name, frames, attributes in pool.imap(_render_job, jobs, chunksize=4):
            f.write(np.ascontiguousarray(frames).tobytes())
            clips.append(
                {
                    "name": name.stem,
                    "action": name.action,
                    "split": split_of(name, protocol),
                    "offset": offset,
                    "frames": len(frames),
                    "attributes": attributes,
                }
            )
            offset += len(frames)
    write_index(
        cache,
        {"width": cfg.size, "height": cfg.size, "fps": cfg.fps, "crop": True, "version": CONVERSION_VERSION},
        protocol,
        data,
        clips,
        class_names(data),
    )
    return cache


def recipe_check(root: str, synth=None, tc=None, overrides: dict | None = None, workers: int | None = None) -> dict:
    """The default recipe end to end on this machine's training device (CUDA when present): render
    (`render_cache`), train (stage 1, stage-2 encoding, stage-2 steps, timed from the run's history),
    and the test reading plain and mirrored. `synth`, `tc`, `overrides`: smaller settings for tests."""
    import torch

    from vst.cache import Cache
    from vst.evaluate import run_eval
    from vst.synth import SynthConfig
    from vst.train import TrainConfig, train

    synth, tc = synth or SynthConfig(), tc or TrainConfig()
    t0 = time.monotonic()
    cache = render_cache(synth, root, tc.protocol, workers)
    result = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpu_threads": os.cpu_count(),
        "render_s": round(time.monotonic() - t0, 1),
    }
    rendered = Cache.open(cache)
    result["clips"], result["frames"] = len(rendered.clips), rendered.index["total_frames"]
    run = os.path.join(root, "vst")
    t0 = time.monotonic()
    trained = train(cache, run, tc, progress=False, overrides=overrides)
    result["train_s"] = round(time.monotonic() - t0, 1)
    if torch.cuda.is_available():
        result["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    history = [json.loads(line) for line in open(os.path.join(run, "history.jsonl"))]
    frames = next(h for h in history if h["stage"] == "frames")
    tokens = [h for h in history if h["stage"] == "tokens"]
    first = tokens[0]
    # the first stage-2 record comes after encoding the views and `first["step"]` steps; the steps between
    # records run at one rate, so the encoding is what is left
    per_step = (tokens[-1]["elapsed_s"] - first["elapsed_s"]) / max(tokens[-1]["step"] - first["step"], 1)
    result["stages_s"] = {
        "frames": frames["elapsed_s"],
        "token_encoding": round(first["elapsed_s"] - frames["elapsed_s"] - per_step * first["step"], 1),
        "token_steps": round(per_step * tokens[-1]["step"], 1),
    }
    result["steps"] = {"frames": frames["step"], "tokens": trained["steps"]}
    for mirror in (False, True):
        t0 = time.monotonic()
        m = run_eval(
            run,
            cache,
            tc.protocol,
            os.path.join(root, "eval-mirror" if mirror else "eval"),
            progress=False,
            mirror=mirror,
        )
        result["eval_mirror" if mirror else "eval"] = {
            "top1": m["top1"],
            "window_top1": m["window_top1"],
            "codes_used": m["codes_used"],
            "token_stability": m["token_stability"],
            **{k: v for k, v in m["attributes"].items() if v is not None},
            "seconds": round(time.monotonic() - t0, 1),
        }
    return result


def _finetune_once(examples_path: str, vst: str, out: str, base: str, random_weights: bool, steps: int) -> dict:
    """One fine-tune in this process (run in a child, where CUDA_VISIBLE_DEVICES decides the device);
    on CUDA, also the merged model's logits against the same merged model reloaded on the CPU."""
    import torch

    from lvlm import prompt
    from lvlm.base import load
    from lvlm.finetune import FinetuneConfig, encode, finetune, merge
    from lvlm.vocab import add_action_tokens
    from vst.glossary import load_glossary
    from vst.model import load_checkpoint

    with open(examples_path) as f:
        data = json.load(f)
    labels, examples = data["labels"], data["examples"]
    vst_model = load_checkpoint(vst)
    if random_weights:  # the same random model in every process: built on the CPU from one seed
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(base)
    else:
        model, tokenizer = load(base)
    codes, counts = vst_model.cfg.K, vst_model.cfg.counts
    first = add_action_tokens(model, tokenizer, codes, load_glossary(vst), counts)
    t0 = time.monotonic()
    result = finetune(
        model,
        tokenizer,
        first,
        codes,
        labels,
        examples,
        out,
        FinetuneConfig(steps=steps),
        progress=False,
        codebook=vst_model.quantizer.codebook,
        counts=counts,
    )
    seconds = time.monotonic() - t0
    run = {
        "device": result["device"],
        "steps": steps,
        "examples": len(examples),
        "seconds": round(seconds, 1),
        "s_per_step": round(result["step_seconds"] / result["steps_run"], 4),
        "first_loss": result["first_loss"],
        "last_loss": result["last_loss"],
    }
    if result["device"] == "cuda":
        from transformers import AutoModelForCausalLM

        run["gpu"] = torch.cuda.get_device_name(0)
        run["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        merged_model = result["model"].merge_and_unload().eval()
        folder = merge(merged_model, tokenizer, os.path.join(out, "merged"))
        p = prompt.build(labels)
        rows = [encode(tokenizer, p, first, codes, ex, counts)[0] for ex in examples[:4]]
        cpu_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        err, agree, total = 0.0, 0, 0
        with torch.no_grad():
            for ids in rows:
                x = torch.tensor([ids])
                a = merged_model(input_ids=x.cuda()).logits[0].float().cpu()
                b = cpu_model(input_ids=x).logits[0]
                err = max(err, float((a - b).abs().max()))
                agree, total = agree + int((a.argmax(-1) == b.argmax(-1)).sum()), total + len(ids)
        run["merged_cpu_reload"] = {
            "positions": total,
            "max_abs_logit_diff": err,
            "top1_agreement": agree / total,
            "logit_std": float(b.std()),
        }
    return run


def finetune_check(
    vst: str,
    cache_dir: str,
    out: str,
    base: str = "smollm2-135m",
    random_weights: bool = False,
    steps: int = 450,
    cpu_steps: int = 10,
) -> dict:
    """The default fine-tune on CUDA and `cpu_steps` of it on all CPU cores (both from the same
    seed and examples, each in a child process): seconds per step, their ratio, the first losses."""
    import torch

    from lvlm.examples import build_examples

    os.makedirs(out, exist_ok=True)
    t0 = time.monotonic()
    labels, examples = build_examples(vst, cache_dir, "train", progress=False)
    examples_path = os.path.join(out, "examples.json")
    with open(examples_path, "w") as f:
        json.dump({"labels": labels, "examples": examples}, f)
    result = {
        "base": base,
        "random_weights": random_weights,
        "examples": len(examples),
        "examples_s": round(time.monotonic() - t0, 1),
        "cpu_threads": os.cpu_count(),
        "runs": {},
    }
    plan = ([("cuda", steps)] if torch.cuda.is_available() else []) + [("cpu", cpu_steps)]
    for device, n in plan:
        code = (
            "import json,sys; from benchmarks.cuda_check import _finetune_once; "
            "print('RESULT', json.dumps(_finetune_once(*json.loads(sys.argv[1]))))"
        )
        args = [examples_path, vst, os.path.join(out, f"finetune_{device}"), base, random_weights, n]
        envs = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": "" if device == "cpu" else os.environ.get("CUDA_VISIBLE_DEVICES", "0"),
        }
        r = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=envs)
        if r.returncode != 0:
            result["runs"][device] = {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
            continue
        result["runs"][device] = json.loads(
            next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:]
        )
    if "cuda" not in result["runs"]:
        result["runs"]["cuda"] = {"error": "no CUDA device"}
    ok = [result["runs"][d] for d in ("cuda", "cpu") if "error" not in result["runs"][d]]
    if len(ok) == 2:
        result["step_speedup"] = round(ok[1]["s_per_step"] / ok[0]["s_per_step"], 1)
        result["first_loss_rel_diff"] = abs(ok[0]["first_loss"] - ok[1]["first_loss"]) / ok[1]["first_loss"]
    return result


def _test_clips(cache_dir: str, W: int, clips: int = 8) -> list[np.ndarray]:
    """The frames of up to `clips` test clips that hold at least one whole window."""
    from vst.cache import Cache, spread

    cache = Cache.open(cache_dir)
    return [np.asarray(cache.clip_frames(c)) for c in spread(cache.split("test"), clips) if c["frames"] >= W]


def _median_s(fn, seconds: float = 2.0) -> float:
    return statistics.median(timeit(fn, seconds, min_runs=5))


def ort_check(bundle: str, cache_dir: str, seconds: float = 2.0) -> dict:
    """The bundle's engines in ONNX Runtime: CUDA vs CPU parity and throughput; what `Engines` picks."""
    import onnxruntime as ort

    from edge_runtime.engines import Engines, OrtEngine

    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    v, e = manifest["vst"], manifest["engines"]
    enc_path, tok_path = (os.path.join(bundle, e[k]["file"]) for k in ("frame_encoder", "token_engine"))
    result = {"onnxruntime": ort.__version__, "available": ort.get_available_providers()}
    t0 = time.monotonic()
    auto = Engines(bundle, manifest, "auto")
    result["auto_backend"], result["auto_s"] = auto.backend, round(time.monotonic() - t0, 2)
    engines = {
        "cpu": (
            OrtEngine(enc_path, providers=["CPUExecutionProvider"]),
            OrtEngine(tok_path, providers=["CPUExecutionProvider"]),
        )
    }
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pair = (
            OrtEngine(enc_path, providers=["CUDAExecutionProvider"]),
            OrtEngine(tok_path, providers=["CUDAExecutionProvider"]),
        )
        if pair[0].providers[0] == "CUDAExecutionProvider":
            engines["cuda"] = pair
        else:
            result["cuda_error"] = f"the CUDA provider did not load (session providers: {pair[0].providers})"
    else:
        result["cuda_error"] = "this ONNX Runtime has no CUDA provider"
    clips = _test_clips(cache_dir, v["W"])
    feats, ids = {}, {}
    for name, (enc, tok) in engines.items():
        feats[name] = [enc.run({"frames": c})["features"] for c in clips]
        # the runtime's windows (vst.windows.sliding_starts, written out: that module needs torch, an edge box may not)
        wins = np.stack([f[s : s + v["W"]] for f in feats[name] for s in range(0, len(f) - v["W"] + 1, v["S"])])
        ids[name] = tok.run({"features": wins.astype(np.float32)})[
            "ids"
        ]  # frames -> tokens, end to end on one provider
    result["clips"], result["windows"] = len(clips), int(len(ids["cpu"]))
    if "cuda" in engines:
        result["max_abs_feature_error"] = float(max(np.abs(a - b).max() for a, b in zip(feats["cuda"], feats["cpu"])))
        result["token_agreement"] = float((ids["cuda"] == ids["cpu"]).mean())
    r = v["resolution"]
    rng = np.random.default_rng(0)
    result["encoder_fps"] = {}
    for name, (enc, _) in engines.items():
        for b in (1, 8, 64):
            x = rng.integers(0, 255, (b, r, r, 3), dtype=np.uint8)
            result["encoder_fps"][f"{name} batch {b}"] = round(
                b / _median_s(lambda x=x, enc=enc: enc.run({"frames": x}), seconds), 1
            )
    win = rng.standard_normal((1, v["W"], v["D"]), dtype=np.float32)
    result["token_engine_ms"] = {
        name: round(1e3 * _median_s(lambda tok=tok: tok.run({"features": win}), seconds), 3)
        for name, (_, tok) in engines.items()
    }
    if "cuda" in engines:
        for b in (1, 8, 64):
            result[f"cuda_vs_cpu_batch{b}"] = round(
                result["encoder_fps"][f"cuda batch {b}"] / result["encoder_fps"][f"cpu batch {b}"], 2
            )
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["env"] and len(argv) in (1, 2):
        result = env()
        if len(argv) == 2:
            _write(argv[1], "env", result)
        else:
            print(json.dumps(result, indent=1))
        return 0
    if argv[:1] == ["train"] and len(argv) == 3:
        _write(argv[2], "train", train_check(argv[1], argv[2]))
        return 0
    if argv[:1] == ["ort"] and len(argv) == 4:
        _write(argv[3], "ort", ort_check(argv[1], argv[2]))
        return 0
    if argv[:1] == ["recipe"] and len(argv) == 3:
        _write(argv[2], "recipe", recipe_check(argv[1]))
        return 0
    if argv[:1] == ["finetune"] and 4 <= len(argv) <= 6:
        rest = [a for a in argv[4:] if a != "--random-weights"]
        _write(
            argv[3],
            "finetune",
            finetune_check(
                argv[1],
                argv[2],
                argv[3],
                *(rest or ["smollm2-135m"])[:1],
                random_weights="--random-weights" in argv[4:],
            ),
        )
        return 0
    print(
        "usage: python -m benchmarks.cuda_check env [OUT] | train CACHE OUT | recipe ROOT OUT | ort BUNDLE CACHE OUT | "
        "finetune VST CACHE OUT [BASE] [--random-weights]",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
