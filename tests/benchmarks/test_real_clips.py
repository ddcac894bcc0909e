"""`lvlm-var eval real` on a folder of labelled videos (here rendered ones: tests never read the
shared real clips), through the runtime's own pieces: every output, and bad input as one line."""

import json
import os

import pytest

from tests.helpers import run_cli


@pytest.mark.slow
def test_eval_real_scores_a_folder_and_draws_the_skeletons(tiny_pose_bundle, tmp_path):
    from edge_runtime.demo import render_video

    bundle, manifest = tiny_pose_bundle
    clips = tmp_path / "clips"
    clips.mkdir()
    segments = render_video(str(clips / "wave.mp4"), actions=1, seed=2, fps=15, size=160)
    (clips / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    cls = {"hand waving": "A023", "sitting down": "A008", "standing up (from sitting position)": "A009"}
    truth = cls.get(segments[0]["label"], "A023")  # the rendered action, where the tiny bundle has its class
    (clips / "manifest.tsv").write_text(
        "file\tntu_class_id\tnote\n"
        f"wave.mp4\t{truth}\trendered\nbroken.mp4\tA023\tnot a video\n"
        "wave.mp4\tnone\tno class of the table\n"
    )
    out = tmp_path / "out"
    r = run_cli("eval", "real", "--bundle", bundle, "--clips", str(clips), "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.load(open(out / "metrics.json"))
    assert m["clips"] == 3 and m["scored"] == 2  # "none" is reported, not scored
    wave, broken, none = m["results"]
    assert wave["windows"] >= 1 and wave["tracks"] >= 1 and wave["head"] in manifest["labels"]
    assert wave["pooled"] in manifest["labels"] and 0 < wave["pooled_share"] <= 1
    assert "error" in broken and "Traceback" not in broken["error"]
    assert none["truth"] is None
    assert (
        0 <= m["head_top1"] <= 1
        and 0 <= m["pooled_top1"] <= 1
        and set(m["pooled_per_class"]) <= set(manifest["labels"])
    )
    for png in ("confusion.png", "contact_sheet.png"):
        assert open(out / png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "clip top-1 over 2 labelled clips" in r.stdout


def test_eval_real_bad_input_is_one_line(tiny_bundle, tmp_path):
    r = run_cli("eval", "real", "--bundle", tiny_bundle[0], "--clips", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no such folder" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "manifest.tsv").write_text("name\tlabel\nx.mp4\tA001\n")
    r = run_cli("eval", "real", "--bundle", tiny_bundle[0], "--clips", str(tmp_path / "c"))
    assert r.returncode == 2 and "columns file and ntu_class_id" in r.stderr
    (tmp_path / "c" / "manifest.tsv").write_text("file\tntu_class_id\nx.mp4\tA001\n")
    r = run_cli("eval", "real", "--bundle", tiny_bundle[0], "--clips", str(tmp_path / "c"))
    assert r.returncode == 2 and "pose front end" in r.stderr and "Traceback" not in r.stderr  # a frame-encoder bundle
