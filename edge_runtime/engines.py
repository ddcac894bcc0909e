"""The VST's two engines at run time, from a verified bundle.

    backend "tensorrt"     the bundle's TensorRT plans for this GPU (key: TensorRT version + compute capability)
    backend "onnxruntime"  the ONNX files with the best provider present: TensorRT, CUDA, then CPU
    backend "auto"         TensorRT plans when the bundle has them for this device, else ONNX Runtime
The choice is logged. A bundle of the pose front end (the default) has three engines, BlazePose's
detector and landmark model (driven by `edge_runtime.pose`) and the token engine; one of the own
frame encoder has two. All take arrays as the streams and the ring buffers give them and return
numpy arrays.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from export.bundle import BundleError, engine_roles

log = logging.getLogger(__name__)


ORT_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
NVINFER = ("libnvinfer.so.10", "libnvinfer.so.11")  # what ONNX Runtime's TensorRT provider loads


def tensorrt_libraries() -> bool:
    """Whether the TensorRT runtime library can be loaded in this process."""
    import ctypes

    for name in NVINFER:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            pass
    return False


def ort_providers(available: list[str]) -> list[str]:
    """The providers to ask ONNX Runtime for, best first. onnxruntime-gpu lists its TensorRT provider
    even without the TensorRT libraries; asking for it then fails loudly (an "EP Error" block on
    stderr per session, seen on an H100 without TensorRT) before ONNX Runtime falls back to CUDA."""
    out = [p for p in ORT_PREFERENCE if p in available]
    if "TensorrtExecutionProvider" in out and not tensorrt_libraries():
        out.remove("TensorrtExecutionProvider")
    return out


class OrtEngine:
    """An ONNX file in ONNX Runtime with the given providers (default: the best present)."""

    def __init__(self, path: str, threads: int = 0, providers: list[str] | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        providers = providers or ort_providers(ort.get_available_providers())
        self.session = ort.InferenceSession(path, opts, providers=providers)
        self.providers = self.session.get_providers()
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict) -> dict:
        return dict(zip(self.outputs, self.session.run(None, feeds)))


class Engines:
    """encode(frames uint8 [N, R, R, 3]) -> [N, D] (the own frame encoder), or `pose_front_end()`
    (the pose front end's engines); tokenize(features [B, W, D]) -> {"ids", "distances", "logits"
    and, from a VST with a repetitions head, "count"} (the token engine's outputs)."""

    def __init__(self, bundle: str, manifest: dict, backend: str = "auto", threads: int = 0):
        self.manifest = manifest
        self.backend = None
        self.roles = engine_roles(manifest)
        self.engines: dict = {}
        if backend in ("auto", "tensorrt"):
            from export.tensorrt import device_plans

            plans = device_plans(manifest)
            if plans is not None:
                from export.tensorrt import TensorRTEngine

                self.engines = {r: TensorRTEngine(os.path.join(bundle, plans["plans"][r])) for r in self.roles}
                self.backend = f"tensorrt {plans['tensorrt']} {plans['precision']} ({plans['gpu']})"
            elif backend == "tensorrt":
                raise BundleError(
                    f"{bundle}: no TensorRT plans for this machine's TensorRT and GPU; "
                    f'build them with `lvlm-var export trt {bundle}` or use backend = "onnxruntime"'
                )
        if self.backend is None:
            e = manifest["engines"]
            self.engines = {r: OrtEngine(os.path.join(bundle, e[r]["file"]), threads) for r in self.roles}
            self.backend = f"onnxruntime {self.engines['token_engine'].providers[0]}"
        self.tokenizer = self.engines["token_engine"]
        log.info("VST engines: %s", self.backend)

    @property
    def pose(self) -> bool:
        return "pose_landmarks" in self.engines

    def pose_front_end(self, settings=None):
        """A `PoseFrontEnd` over this bundle's pose engines (one per ingest: it holds the tracks)."""
        from edge_runtime.pose import PoseFrontEnd, PoseSettings

        return PoseFrontEnd(self.engines["pose_detector"], self.engines["pose_landmarks"], settings or PoseSettings())

    def encode(self, frames: np.ndarray) -> np.ndarray:
        return self.engines["frame_encoder"].run({"frames": np.ascontiguousarray(frames, dtype=np.uint8)})["features"]

    def tokenize(self, feats: np.ndarray) -> dict[str, np.ndarray]:
        return self.tokenizer.run({"features": np.ascontiguousarray(feats, dtype=np.float32)})
