import json

import numpy as np
import pytest

from streams.pipeline import Conversion
from streams.source import Source
from tests.helpers import run_cli
from vst.cache import Cache, prepare
from vst.ntu import DatasetError


@pytest.fixture(scope="module")
def tiny_cache(tiny_dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cache"))
    summary = prepare(tiny_dataset, "xsub", out, size=32, fps=15, workers=2, progress=False)
    assert summary["clips"] == 54 and summary["failed"] == 0
    return out


def test_cache_layout_and_splits(tiny_cache):
    cache = Cache.open(tiny_cache)
    assert cache.frames.shape[1:] == (32, 32, 3) and cache.frames.dtype == np.uint8
    assert cache.index["conversion"]["fps"] == 15
    assert sum(c["frames"] for c in cache.clips) == cache.frames.shape[0]
    train, test = cache.split("train"), cache.split("test")
    assert {int(c["name"][9:12]) for c in train} == {1, 2} and {int(c["name"][9:12]) for c in test} == {3}
    assert {int(c["name"][5:8]) for c in cache.split("train", "xview")} == {2, 3}
    assert all(c["attributes"]["name"] == c["name"] for c in cache.clips)


def test_prepared_frames_are_bit_identical_to_runtime_frames(tiny_cache, tiny_dataset):
    cache = Cache.open(tiny_cache)
    clip = cache.clips[5]
    with Source(f"{tiny_dataset}/{clip['video']}", Conversion(32, 32, 15)) as src:
        live = np.stack([f.rgb for f in src.frames()])
    assert live.shape == cache.clip_frames(clip).shape
    assert np.array_equal(live, cache.clip_frames(clip))


def test_prepare_reports_a_corrupt_clip_and_keeps_the_rest(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    (data / "rgb").mkdir(parents=True)
    good = sorted(p for p in (__import__("pathlib").Path(tiny_dataset) / "rgb").iterdir())[0]
    (data / "rgb" / good.name).write_bytes(good.read_bytes())
    (data / "rgb" / "S001C001P001R001A099_rgb.avi").write_bytes(b"RIFF not really a video" * 50)
    summary = prepare(str(data), "xview", str(tmp_path / "c"), size=32, workers=1, progress=False)
    assert summary["clips"] == 1 and summary["failed"] == 1
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert "A099" in index["failed"][0] and "decode" in index["failed"][0]


def test_open_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="data prepare"):
        Cache.open(str(tmp_path))


def test_data_cli_stats_and_prepare(tiny_dataset, tmp_path):
    r = run_cli("data", "stats", tiny_dataset, "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["clips"] == 54 and set(stats["protocols"]) == {"xsub", "xview", "xsub120", "xset120"}
    assert stats["protocols"]["xview"]["test"]["clips"] == 18
    assert stats["protocols"]["xsub"]["train"]["per_class"]["8"] == 12
    r = run_cli("data", "stats", tiny_dataset, "--protocol", "xset120")
    assert r.returncode == 0 and "A023 hand waving" in r.stdout and "train 27, test 27" in r.stdout
    r = run_cli(
        "data", "prepare", "--data", str(tmp_path / "missing"), "--protocol", "xsub", "--out", str(tmp_path / "c")
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "dataset folder not found" in r.stderr


def test_data_cli_synth(tmp_path):
    r = run_cli(
        "data",
        "synth",
        "--out",
        str(tmp_path / "d"),
        "--classes",
        "10",
        "--performers",
        "1",
        "--cameras",
        "1",
        "--reps",
        "1",
        "--size",
        "32",
        "--seconds",
        "1",
        "--workers",
        "1",
    )
    assert r.returncode == 0, r.stderr
    assert "wrote 1 clips" in r.stdout and "clips/s" in r.stdout
    assert (tmp_path / "d" / "rgb" / "S001C001P001R001A010_rgb.avi").exists()
    r = run_cli("data", "synth", "--out", str(tmp_path / "e"), "--classes", "moonwalk")
    assert r.returncode == 2 and "unknown action class" in r.stderr and "Traceback" not in r.stderr
