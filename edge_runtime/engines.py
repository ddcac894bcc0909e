"""The VST's two engines at run time, from a verified bundle.

    backend "tensorrt"     the bundle's TensorRT plans for this GPU (key: TensorRT version + compute capability)
    backend "onnxruntime"  the ONNX files with the best provider present: TensorRT, CUDA, then CPU
    backend "auto"         TensorRT plans when the bundle has them for this device, else ONNX Runtime
The choice is logged. Both take uint8 RGB frames exactly as the streams deliver them (the
normalisation is inside the graph) and return numpy arrays.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from export.bundle import BundleError

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
    """encode(frames uint8 [N, R, R, 3]) -> [N, D]; tokenize(features [B, W, D]) -> {"ids", "distances",
    "logits" and, from a VST with a repetitions head, "count"} (the token engine's outputs)."""

    def __init__(self, bundle: str, manifest: dict, backend: str = "auto", threads: int = 0):
        self.manifest = manifest
        self.backend = None
        if backend in ("auto", "tensorrt"):
            from export.tensorrt import device_plans

            plans = device_plans(manifest)
            if plans is not None:
                from export.tensorrt import TensorRTEngine

                self.encoder = TensorRTEngine(os.path.join(bundle, plans["plans"]["frame_encoder"]))
                self.tokenizer = TensorRTEngine(os.path.join(bundle, plans["plans"]["token_engine"]))
                self.backend = f"tensorrt {plans['tensorrt']} {plans['precision']} ({plans['gpu']})"
            elif backend == "tensorrt":
                raise BundleError(f"{bundle}: no TensorRT plans for this machine's TensorRT and GPU; "
                                  f"build them with `lvlm-var export trt {bundle}` or use backend = \"onnxruntime\"")
        if self.backend is None:
            e = manifest["engines"]
            self.encoder = OrtEngine(os.path.join(bundle, e["frame_encoder"]["file"]), threads)
            self.tokenizer = OrtEngine(os.path.join(bundle, e["token_engine"]["file"]), threads)
            self.backend = f"onnxruntime {self.encoder.providers[0]}"
        log.info("VST engines: %s", self.backend)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        return self.encoder.run({"frames": np.ascontiguousarray(frames, dtype=np.uint8)})["features"]

    def tokenize(self, feats: np.ndarray) -> dict[str, np.ndarray]:
        return self.tokenizer.run({"features": np.ascontiguousarray(feats, dtype=np.float32)})
