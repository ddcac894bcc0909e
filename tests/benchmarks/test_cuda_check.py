"""`python -m benchmarks.cuda_check`: the CUDA-path measurements run on any machine; without a GPU
the CUDA columns say why they are missing and the CPU ones are real."""

import json
import math
import subprocess
import sys

from benchmarks.cuda_check import finetune_check, train_check
from edge_runtime import engines
from tests.conftest import TINY_VST, gpu_available


def test_ort_check_reports_cpu_numbers_and_why_cuda_is_missing(tiny_bundle, cache32, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.cuda_check", "ort", tiny_bundle[0], cache32, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
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


def test_finetune_check_fine_tunes_on_each_device_present(tiny_run, cache32, pristine_tokenizer, tmp_path):
    from transformers import LlamaConfig

    from tests.tiny_models import LLAMA

    base = tmp_path / "base"  # a config and a tokenizer, no weights: --random-weights builds the model
    LlamaConfig(vocab_size=len(pristine_tokenizer), **LLAMA).save_pretrained(base)
    pristine_tokenizer.save_pretrained(base)
    res = finetune_check(
        tiny_run[0], cache32, str(tmp_path / "out"), str(base), random_weights=True, steps=6, cpu_steps=4
    )
    cpu = res["runs"]["cpu"]
    assert "error" not in cpu, cpu
    assert (
        cpu["device"] == "cpu"
        and cpu["steps"] == 4
        and cpu["s_per_step"] > 0
        and res["examples"] == cpu["examples"] > 0
    )
    assert math.isfinite(cpu["first_loss"]) and cpu["last_loss"] < cpu["first_loss"]
    if gpu_available():
        cuda = res["runs"]["cuda"]
        assert cuda["device"] == "cuda" and res["first_loss_rel_diff"] < 0.05
        assert cuda["merged_cpu_reload"]["top1_agreement"] >= 0.99
    else:
        assert res["runs"]["cuda"] == {"error": "no CUDA device"}


def test_onnx_runtime_is_not_asked_for_tensorrt_without_its_libraries(monkeypatch):
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(engines, "NVINFER", ("libnvinfer-absent.so.99",))
    assert not engines.tensorrt_libraries()
    assert engines.ort_providers(listed) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(engines, "tensorrt_libraries", lambda: True)
    assert engines.ort_providers(listed) == listed
    assert engines.ort_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_recipe_check_renders_a_cache_then_trains_and_reads_it(tmp_path):
    from dataclasses import replace

    import numpy as np

    from benchmarks.cuda_check import recipe_check
    from tests.conftest import FAST, TINY
    from vst.cache import Cache
    from vst.ntu import ClipName
    from vst.synth import render_clip
    from vst.train import TrainConfig

    synth = replace(TINY, size=32)
    tc = TrainConfig(**{**FAST, "frame_steps": 20, "epochs": 4, "eval_every_epochs": 2})
    res = recipe_check(str(tmp_path), synth, tc, TINY_VST, workers=2)
    cache = Cache.open(str(tmp_path / "cache"))
    assert res["clips"] == len(cache.clips) == len(synth.names()) and res["frames"] == len(cache.frames)
    clip = cache.clips[7]  # rendered frames in place, and the clip's skeleton beside them
    assert np.array_equal(cache.clip_frames(clip), render_clip(synth, ClipName.parse(clip["name"])).frames)
    assert cache.has_skeleton(clip) and cache.split("train") and cache.split("test")
    assert res["steps"]["frames"] == 20 and res["steps"]["tokens"] > 0
    assert all(v >= 0 for v in res["stages_s"].values()) and res["train_s"] >= res["stages_s"]["frames"]
    for reading in ("eval", "eval_mirror"):
        assert 0 <= res[reading]["top1"] <= 1 and 0 < res[reading]["codes_used"] <= 1
    assert res["render_s"] > 0 and (gpu_available() or res["device"] == "cpu")
