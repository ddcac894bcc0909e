"""TensorRT plans for a bundle's VST engines, built on the target device.

Supports TensorRT 10.x (JetPack 6 ships 10.3) and 11.x by feature detection:
  - 10.x: weakly typed networks; FP16 and INT8 are builder flags; INT8 uses entropy calibration
    on the bundle's calibration frames.
  - 11.x: networks are strongly typed and the FP16/INT8 flags are gone; FP16 means building from
    the bundle's frame_encoder.fp16.onnx (FP16 inside, same inputs and outputs); INT8 would need
    a Q/DQ ONNX, which this export does not make, so it is refused with a clear line.
The frame encoder gets an optimisation profile over its batch (1 .. max_batch), the token engine
over windows (1 .. max_windows). The timing cache is kept beside the plans. Plans are recorded in
the manifest under a key of TensorRT version and GPU compute capability; the runtime loads only
the plan whose key matches its own device, so a plan is never loaded on the wrong device.

Importable without TensorRT or CUDA: `require()` raises ExportError with one line instead.
"""

from __future__ import annotations

import os
import subprocess
import time

import numpy as np

from export.bundle import POSE_INPUTS, check_bundle, read_manifest, write_manifest
from export.gguf_export import ExportError
from lvlm.base import sha256_file

PRECISIONS = ("fp32", "fp16", "int8")


def require():
    """The tensorrt module, or ExportError saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ExportError(
            "TensorRT is not installed (pip install tensorrt on x86-64 CUDA machines; JetPack provides it on Jetson)"
        ) from None
    if gpu() is None:
        raise ExportError("no CUDA device: TensorRT plans are built on the machine that runs them")
    return trt


def gpu() -> dict | None:
    """{name, compute_capability} of GPU 0, or None when there is no CUDA device."""
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        r = None
    if r is not None and r.returncode == 0 and "," in r.stdout:
        name, cc = [x.strip() for x in r.stdout.strip().splitlines()[0].split(",", 1)]
        return {"name": name, "compute_capability": cc}
    try:  # Jetson: no nvidia-smi on older JetPacks, but torch sees the integrated GPU
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    return None


def plan_key(trt_version: str, compute_capability: str) -> str:
    return f"trt{trt_version}-sm{compute_capability.replace('.', '')}"


def device_plans(manifest: dict) -> dict | None:
    """The manifest's TensorRT entry for this machine's TensorRT and GPU, or None."""
    entries = manifest.get("tensorrt") or {}
    if not entries:
        return None
    try:
        import tensorrt as trt
    except ImportError:
        return None
    dev = gpu()
    return entries.get(plan_key(trt.__version__, dev["compute_capability"])) if dev else None


def strongly_typed(trt) -> bool:
    """TensorRT 11 builds only strongly typed networks (no FP16/INT8 builder flags)."""
    return not hasattr(trt.BuilderFlag, "FP16")


def cudart():
    """CUDA runtime bindings from cuda-python (no torch on the edge box)."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError:
            raise ExportError(
                "cuda-python is not installed (pip install cuda-python): TensorRT needs it for GPU buffers"
            ) from None
    return runtime


def _ok(result):
    """cuda-python returns (error, value...); raise on error, return the value(s)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class DeviceBuffer:
    """A growable CUDA allocation."""

    def __init__(self, rt):
        self.rt, self.ptr, self.nbytes = rt, 0, 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            if self.ptr:
                _ok(self.rt.cudaFree(self.ptr))
            self.ptr, self.nbytes = int(_ok(self.rt.cudaMalloc(nbytes))), nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            self.rt.cudaFree(self.ptr)
            self.ptr, self.nbytes = 0, 0


def EntropyCalibrator(trt, frames: np.ndarray, batch: int, cache_path: str):  # noqa: N802 - a class factory
    """INT8 entropy calibration over the bundle's calibration frames (TensorRT 10)."""
    rt = cudart()

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.pos = 0
            self.buf = DeviceBuffer(rt)

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            if self.pos + batch > len(frames):
                return None
            host = np.ascontiguousarray(frames[self.pos : self.pos + batch])
            ptr = self.buf.ensure(host.nbytes)
            _ok(rt.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice))
            self.pos += batch
            return [ptr]

        def read_calibration_cache(self):
            if os.path.exists(cache_path):
                with open(cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache):
            with open(cache_path, "wb") as f:
                f.write(cache)

    return _Calibrator()


def build_plan(
    trt,
    onnx_path: str,
    input_name: str,
    shapes: tuple[tuple, tuple, tuple],
    precision: str,
    workspace_mb: int,
    timing_cache: str,
    calibrator=None,
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed(trt):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # deprecated no-op in 10.x, needed before
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT cannot parse {os.path.basename(onnx_path)}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if not strongly_typed(trt):
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = calibrator
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *shapes)
    config.add_optimization_profile(profile)
    if calibrator is not None and hasattr(config, "set_calibration_profile"):
        config.set_calibration_profile(profile)
    blob = b""
    if os.path.exists(timing_cache):
        with open(timing_cache, "rb") as f:
            blob = f.read()
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT could not build {os.path.basename(onnx_path)} at {precision}")
    with open(timing_cache + ".part", "wb") as f:
        f.write(memoryview(config.get_timing_cache().serialize()))
    os.replace(timing_cache + ".part", timing_cache)
    return bytes(plan)


class TensorRTEngine:
    """A deserialised plan with CUDA buffers from cuda-python: `run({name: array}) -> {name: array}`."""

    def __init__(self, plan_path: str):
        import tensorrt as trt

        self.trt, self.rt = trt, cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        with open(plan_path, "rb") as f:
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise ExportError(f"{plan_path}: TensorRT could not load this plan (built for another version or device)")
        self.context = self.engine.create_execution_context()
        self.stream = _ok(self.rt.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.buffers = {n: DeviceBuffer(self.rt) for n in names}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt, h2d, d2h = (
            self.rt,
            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
        )
        for name in self.inputs:
            x = np.ascontiguousarray(feeds[name])
            ptr = self.buffers[name].ensure(x.nbytes)
            _ok(rt.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self.stream))
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, ptr)
        outs = {}
        for name in self.outputs:
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            outs[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype)
            self.context.set_tensor_address(name, self.buffers[name].ensure(max(outs[name].nbytes, 1)))
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execution failed")
        for name, y in outs.items():
            _ok(rt.cudaMemcpyAsync(y.ctypes.data, self.buffers[name].ptr, y.nbytes, d2h, self.stream))
        _ok(rt.cudaStreamSynchronize(self.stream))
        return outs

    def close(self) -> None:
        for b in self.buffers.values():
            b.free()


def build_bundle_plans(
    bundle: str,
    precision: str = "fp16",
    workspace_mb: int = 1024,
    max_batch: int = 64,
    max_windows: int = 16,
    data: str | None = None,
    progress: bool = True,
) -> dict:
    """Build both plans for this device, check parity against PyTorch and record them in the manifest."""
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    check_bundle(bundle)
    trt = require()
    if precision == "int8" and strongly_typed(trt):
        raise ExportError(
            f"TensorRT {trt.__version__} builds strongly typed networks only: INT8 needs a Q/DQ ONNX, "
            "which this export does not make; use --precision fp16"
        )
    m = read_manifest(bundle)
    dev = gpu()
    key = plan_key(trt.__version__, dev["compute_capability"])
    folder = os.path.join(bundle, "trt", key)
    os.makedirs(folder, exist_ok=True)
    timing = os.path.join(bundle, "trt", f"timing-{key}.cache")
    vst = m["vst"]
    r = vst["resolution"]
    t0 = time.monotonic()
    pose = vst.get("frontend") == "pose"
    if pose and precision == "int8":
        raise ExportError("the pose front end's models have no INT8 calibration here; use --precision fp16")
    specs = {}
    if pose:  # BlazePose: FP32 graphs with FP16-exact weights; weakly typed FP16 on TensorRT 10, FP32 on 11
        for role, size in POSE_INPUTS.items():
            specs[role] = (
                m["engines"][role]["file"],
                "input_1",
                ((1, size, size, 3), (max(1, max_batch // 8), size, size, 3), (max(1, max_batch // 4), size, size, 3)),
                None,
            )
    else:
        encoder_onnx = m["engines"]["frame_encoder"]["file"]
        if precision == "fp16" and strongly_typed(trt):
            encoder_onnx = m["engines"]["frame_encoder"]["fp16_file"]
        calibrator = None
        if precision == "int8":
            frames = np.load(os.path.join(bundle, m["calibration"]["file"]))
            calibrator = EntropyCalibrator(
                trt, frames, min(16, len(frames)), os.path.join(folder, "int8-calibration.cache")
            )
        specs["frame_encoder"] = (
            encoder_onnx,
            "frames",
            ((1, r, r, 3), (max(1, max_batch // 2), r, r, 3), (max_batch, r, r, 3)),
            calibrator,
        )
    specs["token_engine"] = (
        m["engines"]["token_engine"]["file"],
        "features",
        ((1, vst["W"], vst["D"]), (1, vst["W"], vst["D"]), (max_windows, vst["W"], vst["D"])),
        None,
    )
    plans = {}
    for role, (onnx_name, input_name, shapes, calib) in specs.items():
        if progress:
            print(f"[trt] building {role} ({precision}) from {onnx_name} ...", flush=True)
        # the token engine stays FP32 in strongly typed mode (its ONNX is FP32); it is tiny
        plan = build_plan(
            trt,
            os.path.join(bundle, onnx_name),
            input_name,
            shapes,
            precision if role != "token_engine" else ("fp16" if precision != "fp32" else "fp32"),
            workspace_mb,
            timing,
            calib,
        )
        rel = os.path.join("trt", key, f"{role}.{precision}.plan")
        with open(os.path.join(bundle, rel), "wb") as f:
            f.write(plan)
        plans[role] = rel
    build_s = time.monotonic() - t0
    parity = plan_parity(bundle, m, plans, data)
    m.setdefault("tensorrt", {})[key] = {
        "precision": precision,
        "tensorrt": trt.__version__,
        "gpu": dev["name"],
        "compute_capability": dev["compute_capability"],
        "max_batch": max_batch,
        "max_windows": max_windows,
        "plans": plans,
        "build_seconds": round(build_s, 1),
        "files": {
            rel: {"sha256": sha256_file(os.path.join(bundle, rel)), "size": os.path.getsize(os.path.join(bundle, rel))}
            for rel in plans.values()
        },
        "parity": parity,
    }
    write_manifest(bundle, m)
    return m["tensorrt"][key]


def plan_parity(bundle: str, manifest: dict, plans: dict, data: str | None) -> dict | None:
    """The ONNX export's parity check, run against the built plans (needs the VST run and its cache)."""
    from export.onnx_engines import engine_parity
    from vst.cache import Cache, spread
    from vst.model import load_checkpoint
    from vst.run_record import training_cache

    run = manifest["vst"].get("run")
    if not run or not os.path.isdir(run):
        return None
    model = load_checkpoint(run)
    data = data or training_cache(run)
    if not data or not os.path.exists(os.path.join(data, "index.json")):
        return None
    from vst.windows import clip_input

    cache = Cache.open(data)
    clips = [clip_input(model.cfg, cache, c) for c in spread(cache.split("test"), 24)]
    tok = TensorRTEngine(os.path.join(bundle, plans["token_engine"]))
    if "frame_encoder" not in plans:  # the pose front end: its features are the token engine's input
        return engine_parity(model, lambda x: x, lambda f: tok.run({"features": f}), clips)
    enc = TensorRTEngine(os.path.join(bundle, plans["frame_encoder"]))
    return engine_parity(model, lambda x: enc.run({"frames": x})["features"], lambda f: tok.run({"features": f}), clips)
