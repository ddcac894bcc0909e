"""Shared fixtures: a tiny synthetic NTU-layout dataset, its 32-px cache and a tiny VST run, and a local RTSP server."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from streams.rtsp_server import RtspServer
from vst.cache import prepare
from vst.synth import SynthConfig, generate
from vst.train import TrainConfig, train

TINY = SynthConfig(classes=(8, 9, 23), performers=3, cameras=3, setups=2, reps=1, size=48, fps=15, seconds=1.6, seed=7)


def gpu_available() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synth"))
    generate(TINY, out, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_video(tiny_dataset) -> str:
    rgb = os.path.join(tiny_dataset, "rgb")
    return os.path.join(rgb, sorted(os.listdir(rgb))[0])


@pytest.fixture(scope="session")
def pristine_tokenizer():
    """The real SmolLM2 tokenizer (from the default base GGUF), without action tokens."""
    from transformers import AutoTokenizer

    from lvlm.base import fetch

    gguf = fetch()
    return AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))


@pytest.fixture()
def tokenizer(pristine_tokenizer):
    import copy

    return copy.deepcopy(pristine_tokenizer)  # each test adds the tokens it needs


@pytest.fixture()
def rtsp_server():
    server = RtspServer(host="127.0.0.1", port=0)
    yield server
    server.stop()


TINY_VST = dict(R=32, widths=(8, 16, 16, 32), D=32, hidden=48, code_dim=16, spatial_channels=8, K=32, W=32, T=8)


@pytest.fixture(scope="session")
def cache32(tiny_dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cache32"))
    prepare(tiny_dataset, "xsub", out, size=32, workers=2, progress=False)
    return out


FAST = dict(frame_steps=150, frame_batch=16, views=2, epochs=40, batch=8, eval_every_epochs=20)


@pytest.fixture(scope="session")
def tiny_run(cache32, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    result = train(cache32, out, TrainConfig(**FAST), progress=False, overrides=TINY_VST)
    return out, result


def make_adapter(run: str, cache: str, pristine_tokenizer, out: str) -> str:
    """A tiny LLaMA fine-tuned on a tiny VST's tokens (adapter folder with merged/)."""
    import copy

    from lvlm.examples import build_examples
    from lvlm.finetune import FinetuneConfig, finetune, merge
    from lvlm.vocab import add_action_tokens
    from tests.tiny_models import tiny_llama
    from vst.glossary import build_glossary
    from vst.model import load_checkpoint

    build_glossary(run, cache, progress=False)
    tok = copy.deepcopy(pristine_tokenizer)
    labels, examples = build_examples(run, cache, "train", windows_per_clip=2, progress=False)
    model = tiny_llama(len(tok))
    vst = load_checkpoint(run).cfg
    counts = vst.counts  # the tiny VST has a repetitions head: format 2, with count tokens
    base = add_action_tokens(model, tok, vst.K, counts=counts)
    result = finetune(
        model,
        tok,
        base,
        vst.K,
        labels,
        examples,
        out,
        FinetuneConfig(steps=40, batch=8, lr=1e-2),
        progress=False,
        counts=counts,
    )
    meta = {k: v for k, v in result.items() if k != "model"}
    # a pool with the VST head (what `finetune` fits on calibration windows; tested there), so that the
    # bundle, the worker and the benchmark read pooled labels as a default bundle does
    meta["label_pool"] = {"llm": 0.5, "head": 0.8}
    meta["head_mirror"] = True  # fitted on the head's mirror reading, as `finetune` does by default
    merge(result["model"], tok, os.path.join(out, "merged"), meta)
    with open(os.path.join(out, "lvlm.json"), "w") as f:
        json.dump(meta, f)
    return out


@pytest.fixture(scope="session")
def tiny_adapter(tiny_run, cache32, pristine_tokenizer, tmp_path_factory):
    return make_adapter(tiny_run[0], cache32, pristine_tokenizer, str(tmp_path_factory.mktemp("adapter")))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tiny_adapter, cache32, tmp_path_factory):
    from export.bundle import build_bundle

    out = str(tmp_path_factory.mktemp("bundle") / "b")
    manifest = build_bundle(tiny_run[0], tiny_adapter, out, "Q4_K_M", data=cache32, parity_windows=12, progress=False)
    return out, manifest


TINY_POSE_VST = dict(
    R=32,
    D=32,
    hidden=48,
    code_dim=16,
    K=32,
    W=32,
    T=8,
    pose_joints=0,
    appearance=False,
    count_head=True,
    frontend="pose",
)


@pytest.fixture(scope="session")
def tiny_pose_run(cache32, tmp_path_factory):
    """A tiny VST of the pose front end: its temporal half trained on the tiny clips' skeletons."""
    out = str(tmp_path_factory.mktemp("pose-run"))
    result = train(cache32, out, TrainConfig(**FAST), progress=False, overrides=TINY_POSE_VST)
    return out, result


@pytest.fixture(scope="session")
def tiny_pose_bundle(tiny_pose_run, cache32, pristine_tokenizer, tmp_path_factory):
    from export.bundle import build_bundle

    adapter = make_adapter(tiny_pose_run[0], cache32, pristine_tokenizer, str(tmp_path_factory.mktemp("pose-adapter")))
    out = str(tmp_path_factory.mktemp("pose-bundle") / "b")
    manifest = build_bundle(tiny_pose_run[0], adapter, out, "Q4_K_M", data=cache32, parity_windows=12, progress=False)
    return out, manifest
