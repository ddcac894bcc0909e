"""The bundle end to end on a tiny VST and a tiny LLaMA: ONNX and GGUF parity, `check`, tampering."""

import json
import os
import shutil

import numpy as np
import pytest

from export.bundle import BundleError, check_bundle
from lvlm.base import sha256_file
from lvlm.examples import build_examples
from tests.helpers import run_cli

pytestmark = pytest.mark.slow


def test_bundle_holds_verified_engines_and_model(tiny_bundle, tiny_run):
    import onnx

    out, m = tiny_bundle
    assert set(os.listdir(out)) >= {
        "manifest.json",
        "frame_encoder.onnx",
        "frame_encoder.fp16.onnx",
        "token_engine.onnx",
        "lvlm-Q4_K_M.gguf",
        "glossary.json",
        "calibration.npy",
    }
    assert "lvlm-F16.gguf" not in os.listdir(out)  # the intermediate is removed
    assert m["vst"]["W"] == 32 and m["vst"]["resolution"] == 32 and m["lvlm"]["codes"] == 32
    assert m["labels"] == ["sitting down", "standing up (from sitting position)", "hand waving"]
    for name in ("frame_encoder.onnx", "token_engine.onnx"):
        graph = onnx.load(os.path.join(out, name))
        onnx.checker.check_model(graph, full_check=True)
        assert graph.opset_import[0].version >= 17
        assert not any(n.op_type == "BatchNormalization" for n in graph.graph.node)
    assert not [f for f in os.listdir(out) if f.endswith(".data")]  # no external-data side files
    p = m["parity"]
    assert p["onnx"]["max_abs_feature_error"] < 1e-4 and p["onnx"]["token_agreement"] >= 0.995
    assert p["onnx"]["label_agreement"] == 1.0 and p["onnx"]["count_agreement"] == 1.0
    # the tiny VST has a repetitions head: the token engine outputs its count, the GGUF has the count tokens
    assert m["engines"]["token_engine"]["outputs"]["count"] == ["batch"]
    assert m["lvlm"]["counts"] == 6 and m["lvlm"]["prompt_format_version"] == 2
    assert m["lvlm"]["label_pool"] == {"llm": 0.5, "head": 0.8}  # the adapter's pool with the VST head travels
    assert m["lvlm"]["head_mirror"] is True  # and which reading of the head it was fitted on
    assert m["lvlm"]["vocab_size"] == m["lvlm"]["token_id_base"] + 2 + 32 + 6
    f16 = p["gguf_f16_logits"]
    assert (
        f16["positions"] > 500 and f16["p99_probability_difference"] < 0.01 and f16["max_probability_difference"] < 0.05
    )
    # the tiny model has near-ties that F16 rounding may flip; outside them llama.cpp agrees
    assert f16["top1_agreement_outside_ties"] >= 0.995 and f16["top1_agreement"] >= 0.95
    assert 0 <= p["gguf_q4_k_m_labels"]["label_agreement"] <= 1 and p["gguf_q4_k_m_labels"]["windows"] == 12
    calib = np.load(os.path.join(out, "calibration.npy"))
    assert calib.dtype == np.uint8 and calib.shape[1:] == (32, 32, 3) and len(calib) == m["calibration"]["frames"]
    s = check_bundle(out)
    assert s["labels"] == 3 and s["quantization"] == "Q4_K_M" and len(s["id"]) == 12
    # the id names how labels are read too: the same files calibrated again are another bundle
    from export.bundle import bundle_id

    for lvlm in (
        {"label_pool": None},
        {"label_pool": {"llm": 0.5, "head": 1.0}},
        {"label_temperature": 1.5},
        {"head_mirror": False},
    ):
        assert bundle_id({**m, "lvlm": {**m["lvlm"], **lvlm}}) != s["id"]
    # a bundle from before the mirror reading keeps its id
    old = {**m, "lvlm": {k: v for k, v in m["lvlm"].items() if k != "head_mirror"}}
    assert bundle_id(old) == bundle_id({**old, "lvlm": {**old["lvlm"], "head_mirror": False}})


def test_fp16_frame_encoder_matches_fp32(tiny_bundle, cache32):
    import onnxruntime as ort

    from vst.cache import Cache

    out, _ = tiny_bundle
    cache = Cache.open(cache32)
    frames = cache.clip_frames(cache.split("test")[0])[:8]
    run = {
        k: ort.InferenceSession(os.path.join(out, k), providers=["CPUExecutionProvider"])
        for k in ("frame_encoder.onnx", "frame_encoder.fp16.onnx")
    }
    a = run["frame_encoder.onnx"].run(None, {"frames": frames})[0]
    b = run["frame_encoder.fp16.onnx"].run(None, {"frames": frames})[0]
    assert b.dtype == np.float32 and np.abs(a - b).max() < 0.05


def test_check_refuses_tampered_incomplete_and_foreign_bundles(tiny_bundle, tmp_path):
    out, _ = tiny_bundle
    bad = str(tmp_path / "tampered")
    shutil.copytree(out, bad)
    with open(os.path.join(bad, "token_engine.onnx"), "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="token_engine.onnx does not match its sha256"):
        check_bundle(bad)
    r = run_cli("check", bad)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "sha256" in r.stderr and "Traceback" not in r.stderr
    os.remove(os.path.join(bad, "token_engine.onnx"))
    with pytest.raises(BundleError, match="missing"):
        check_bundle(bad)
    m = json.load(open(os.path.join(out, "manifest.json")))
    m["format_version"] = 99
    shutil.copytree(out, str(tmp_path / "future"))
    json.dump(m, open(tmp_path / "future" / "manifest.json", "w"))
    with pytest.raises(BundleError, match="format version 99"):
        check_bundle(str(tmp_path / "future"))
    with pytest.raises(BundleError, match="not a bundle"):
        check_bundle(str(tmp_path))
    # a manifest claiming more count tokens than the GGUF holds, or a token engine without a count output
    m = json.load(open(os.path.join(out, "manifest.json")))
    shutil.copytree(out, str(tmp_path / "counts"))
    json.dump(
        {**m, "lvlm": {**m["lvlm"], "counts": 7, "vocab_size": m["lvlm"]["vocab_size"] + 1}},
        open(tmp_path / "counts" / "manifest.json", "w"),
    )
    with pytest.raises(BundleError, match="tokens, the manifest says"):
        check_bundle(str(tmp_path / "counts"))
    old = str(tmp_path / "no-count-output")
    shutil.copytree(out, old)
    _without_count_output(os.path.join(old, "token_engine.onnx"))
    m["files"]["token_engine.onnx"]["sha256"] = sha256_file(os.path.join(old, "token_engine.onnx"))
    m["files"]["token_engine.onnx"]["size"] = os.path.getsize(os.path.join(old, "token_engine.onnx"))
    json.dump(m, open(os.path.join(old, "manifest.json"), "w"))
    with pytest.raises(BundleError, match="has no count output"):
        check_bundle(old)
    # how the labels are read: a pool with a negative or missing weight, a temperature of 0
    m = json.load(open(os.path.join(out, "manifest.json")))
    for i, lvlm in enumerate(
        (
            {"label_pool": {"llm": -1, "head": 1}},
            {"label_pool": {"head": 1}},
            {"label_temperature": 0},
            {"head_mirror": "yes"},
        )
    ):
        shutil.copytree(out, str(tmp_path / f"reading{i}"))
        json.dump({**m, "lvlm": {**m["lvlm"], **lvlm}}, open(tmp_path / f"reading{i}" / "manifest.json", "w"))
        with pytest.raises(BundleError, match="label pool|label temperature|head_mirror"):
            check_bundle(str(tmp_path / f"reading{i}"))
    r = run_cli("check", out)
    assert r.returncode == 0 and "all hashes match" in r.stdout
    assert "labels: pooled, 0.5 x log p(language model) + 0.8 x log p(VST head, mirror reading)" in r.stdout


def _without_count_output(path):
    import onnx

    graph = onnx.load(path)
    keep = [o for o in graph.graph.output if o.name != "count"]
    del graph.graph.output[:]
    graph.graph.output.extend(keep)
    onnx.save(graph, path)


def test_bundle_gguf_reads_windows_like_transformers(tiny_bundle, tiny_adapter, tiny_run, cache32):
    from lvlm.evaluate import open_reader

    out, m = tiny_bundle
    _, windows = build_examples(tiny_run[0], cache32, "test", windows_per_clip=1, progress=False)
    hf, _ = open_reader(tiny_adapter)
    gg, _ = open_reader(tiny_adapter, os.path.join(out, m["lvlm"]["file"]))
    assert gg.prefix == hf.prefix and gg.suffix == hf.suffix and gg.label_ids == hf.label_ids and gg.stop == hf.stop
    a, b = (r.read(windows[0]["tokens"], count=windows[0]["count"]) for r in (hf, gg))
    assert a.label in m["labels"] and b.label in m["labels"]
    assert abs(sum(a.distribution.values()) - sum(b.distribution.values())) < 0.25
    # speculation: reading with the head feeds its label after the context; every trie node and
    # the explanation are those read node by node
    w = windows[0]
    plain = gg.label_nodes(w["tokens"], w["count"])[0]
    expect = {ids[:i]: plain(ids[:i], []) for ids in map(tuple, gg.label_ids.values()) for i in range(len(ids))}
    for guess in m["labels"]:
        nodes = gg.label_nodes(w["tokens"], w["count"], guess)[0]
        for prefix, p in expect.items():
            assert nodes(list(prefix), []) == pytest.approx(p, abs=0.01), (guess, prefix)  # log-probabilities
    head = np.full(len(m["labels"]), 0.01)
    head[m["labels"].index(b.label)] = 1.0
    spec = gg.read(w["tokens"], count=w["count"], head=head)
    assert (spec.label, spec.explanation) == (b.label, b.explanation)


def test_llama_cpp_feeds_rows_of_one_call_like_one_token_at_a_time(tiny_bundle):
    from lvlm.reader import LlamaCppBackend

    out, m = tiny_bundle
    backend = LlamaCppBackend.open(os.path.join(out, m["lvlm"]["file"]), threads=2, n_ctx=128)
    ids = backend.tokenize("Label: drink water\nExplanation:")
    rows = backend.feed(ids, rows=4)
    assert rows.shape == (4, backend.vocab) and backend.n == len(ids)
    after = backend.feed([ids[0]])  # the call after a batched one continues the same cache
    backend.rewind(0)
    one = [backend.feed(ids[:-3])[0]] + [backend.feed([t])[0] for t in ids[-3:]]
    assert rows == pytest.approx(np.stack(one), abs=0.01)  # log-probabilities
    assert backend.feed([ids[0]]) == pytest.approx(after, abs=0.01)
    for bad in (0, len(ids) + 1):
        with pytest.raises(ValueError, match="rows"):
            backend.feed(ids, rows=bad)
    backend.llm.close()


def test_export_trt_answers_clearly_without_tensorrt(tiny_bundle):
    from export.tensorrt import gpu

    if gpu() is not None:
        pytest.skip("a GPU is here: the gpu tests build real plans")
    out, _ = tiny_bundle
    r = run_cli("export", "trt", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "TensorRT is not installed" in r.stderr or "no CUDA device" in r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_plans_match_pytorch(tiny_bundle, cache32, precision, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed on this GPU machine")
    pytest.importorskip("cuda", reason="cuda-python is not installed")

    from export.tensorrt import build_bundle_plans, strongly_typed

    out, _ = tiny_bundle
    b = str(tmp_path / "b")
    shutil.copytree(out, b)
    if precision == "int8" and strongly_typed(trt):
        with pytest.raises(Exception, match="strongly typed"):
            build_bundle_plans(b, precision, max_batch=64, data=cache32, progress=False)
        return
    e = build_bundle_plans(b, precision, max_batch=64, data=cache32, progress=False)
    assert e["parity"]["token_agreement"] >= (0.995 if precision == "fp32" else 0.9)
    assert e["parity"]["label_agreement"] >= (1.0 if precision == "fp32" else 0.9)
    assert e["parity"]["count_agreement"] >= (1.0 if precision == "fp32" else 0.9)  # the plan outputs the count too
    s = check_bundle(b)
    assert list(s["tensorrt_plans"].values()) == [precision]


def test_pose_bundle_carries_the_pose_models_and_verifies(tiny_pose_bundle, tmp_path):
    import shutil

    from export.bundle import BundleError, check_bundle

    out, m = tiny_pose_bundle
    files = set(os.listdir(out))
    assert {"pose_detector.onnx", "pose_landmarks.onnx", "token_engine.onnx", "manifest.json"} <= files
    assert not {"frame_encoder.onnx", "calibration.npy"} & files  # no frame encoder to run or calibrate
    assert m["vst"]["frontend"] == "pose" and m["vst"]["D"] == 75 and m["calibration"] is None
    pose = m["pose"]
    assert pose["package"].startswith("@mediapipe/pose@") and pose["landmark_model"] == "full"
    assert pose["parity"]["landmark_max_px"] < 0.5 and pose["parity"]["detections_equal"]
    assert m["parity"]["onnx"]["label_agreement"] == 1.0
    summary = check_bundle(out)
    assert summary["frontend"] == "pose"
    r = run_cli("check", out)
    assert r.returncode == 0 and "pose" in r.stdout, r.stdout + r.stderr
    broken = tmp_path / "b"
    shutil.copytree(out, broken)
    with open(broken / "pose_landmarks.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 16)
    with pytest.raises(BundleError, match="pose_landmarks.onnx"):
        check_bundle(str(broken))
