"""`python -m benchmarks.cuda_check`: the CUDA-path measurements run on any machine; without a GPU
the CUDA columns say why they are missing and the CPU ones are real."""
import json
import math
import subprocess
import sys

from benchmarks.cuda_check import train_check
from edge_runtime import engines
from tests.conftest import TINY_VST, gpu_available


def test_ort_check_reports_cpu_numbers_and_why_cuda_is_missing(tiny_bundle, cache32, tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.cuda_check", "ort", tiny_bundle[0], cache32, str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(tmp_path / "cuda_ort.json"))
    assert res["windows"] > 0 and all(res["encoder_fps"][f"cpu batch {b}"] > 0 for b in (1, 8, 64))
    assert res["token_engine_ms"]["cpu"] > 0 and res["auto_backend"].startswith("onnxruntime")
    if gpu_available():
        assert res["token_agreement"] >= 0.99 or "cuda_error" in res
    else:
        assert "cuda_error" in res and "cuda batch 1" not in res["encoder_fps"]


def test_train_check_trains_on_each_device_present(cache32, tmp_path):
    res = train_check(cache32, str(tmp_path), frame_steps=20, epochs=2, overrides=TINY_VST)
    cpu = res["runs"]["cpu"]
    assert "error" not in cpu, cpu
    assert math.isfinite(cpu["frame_loss"]) and cpu["frame_loss"] < cpu["frame_first_loss"]
    assert cpu["token_stage_s"] > 0 and res["stage1_batch_sampling_ms"] > 0
    if not gpu_available():
        assert res["runs"]["cuda"] == {"error": "no CUDA device"}


def test_onnx_runtime_is_not_asked_for_tensorrt_without_its_libraries(monkeypatch):
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(engines, "NVINFER", ("libnvinfer-absent.so.99",))
    assert not engines.tensorrt_libraries()
    assert engines.ort_providers(listed) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(engines, "tensorrt_libraries", lambda: True)
    assert engines.ort_providers(listed) == listed
    assert engines.ort_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
