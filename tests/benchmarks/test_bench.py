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
    for section in ("## 1. Frame encoder", "## 2. Feature caching", "## 3. Language model", "## 4. End to end", "## 5. Quantization"):
        assert section in md
    for png in ("latency_cdf.png", "fps_vs_streams.png"):
        assert (out / png).stat().st_size > 10000
    assert "real time: up to" in r.stdout
