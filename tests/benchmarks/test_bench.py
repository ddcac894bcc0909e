"""`lvlm-var bench --quick` runs on a tiny bundle and writes every output (it checks that the
benchmark runs and reports, not the speed)."""

import json
import os

import pytest

from tests.helpers import run_cli


@pytest.mark.slow
def test_quick_bench_writes_json_markdown_and_plots(tiny_bundle, tmp_path):
    out = tmp_path / "bench"
    r = run_cli("bench", "--quick", "--bundle", tiny_bundle[0], "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(out / "bench.json"))
    assert res["machine"]["cores"] == os.cpu_count() and res["bundle_id"]
    enc = res["encoder"]
    assert any(k.startswith("pytorch eager") for k in enc["fps"]) and all(v > 0 for v in enc["fps"].values())
    assert enc["flops_per_frame"] > 0 and 0 < enc["share_of_peak"] and enc["caching"]["speedup"] > 1
    assert res["llm"]["label_ms_cached_prefix"]["p50"] > 0 and res["llm"]["llava15_ratio"] > 1
    assert res["llm"]["label_ms_llm_alone"]["p50"] > 0 and isinstance(res["llm"]["pooled"], bool)
    assert res["llm"]["label_ms_no_speculation"]["p50"] > 0 and res["llm"]["speculation_speedup_p50"] > 0
    assert res["llm"]["explanation_tokens_per_s"] > 0 and res["llm"]["explanation_tokens_per_s_no_speculation"] > 0
    assert [s["streams"] for s in res["streams"]] == [1, 2] and all(s["windows"] > 0 for s in res["streams"])
    assert set(res["quantization"]) == {"F16", "Q8_0"}
    assert res["quantization"]["Q8_0"]["size_mb"] < res["quantization"]["F16"]["size_mb"]
    md = (out / "bench.md").read_text()
    for section in (
        "## 1. Frame encoder",
        "## 2. Feature caching",
        "## 3. Language model",
        "## 4. End to end",
        "## 5. Quantization",
    ):
        assert section in md
    for png in ("latency_cdf.png", "fps_vs_streams.png"):
        assert (out / png).stat().st_size > 10000
    assert "real time: up to" in r.stdout


@pytest.mark.slow
def test_pose_bundle_bench_times_the_front_end_on_both_runtimes_and_streams_people(tiny_pose_bundle, tmp_path):
    from benchmarks.bench import bench_pose, bench_streams, markdown, realtime_streams

    bundle, manifest = tiny_pose_bundle
    pose = bench_pose(bundle, manifest, seconds=0.3)
    assert set(pose["ms"]) == {"onnxruntime CPU", "LiteRT"}
    for ms in pose["ms"].values():
        assert all(v > 0 for v in ms.values())
        assert ms["front_end_per_frame"] < ms["detector"] + 2 * ms["landmarks"]  # the detector runs on few frames
    assert all(found > 0.9 for found in pose["people_found"].values())  # the rendered person is found on both
    assert pose["ort_vs_litert_front_end"] > 0 and pose["caching"]["speedup"] > 1
    rows = bench_streams(bundle, [1], 5.0, str(tmp_path), llm=False)
    assert rows[0]["frames"] > 40 and rows[0]["windows"] > 0 and rows[0]["results"] == 0 and not rows[0]["llm"]
    assert rows[0]["frames_without_person"] < rows[0]["frames"] // 4  # the streamed person is found
    assert realtime_streams(rows) in (0, 1)
    md = markdown(
        {
            "date": "d",
            "bundle": bundle,
            "bundle_id": "x",
            "machine": {"cpu": "c", "cores": 2, "gpu": None, "python": "3", "versions": {}},
            "encoder": pose,
            "streams": rows,
            "streams_without_llm": rows,
            "max_realtime_streams": 1,
            "max_realtime_streams_without_llm": 1,
            "realtime_streams_ratio": 1.0,
        }
    )
    assert "## 1. Pose front end" in md and "LiteRT" in md and "Without the language model's worker: 1" in md
