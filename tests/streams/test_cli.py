from tests.helpers import run_cli


def test_describe_prints_the_pipeline_without_credentials():
    r = run_cli("streams", "describe", "rtsp://admin:topsecret@127.0.0.1:8554/cam?transport=udp", "--size", "64")
    assert r.returncode == 0, r.stderr
    assert "rtspsrc" in r.stdout and "protocols=udp" in r.stdout and "width=64" in r.stdout
    assert "policy:   newest (live)" in r.stdout and "software decoding" in r.stdout
    assert "topsecret" not in r.stdout + r.stderr


def test_probe_a_file_and_a_test_pattern(tiny_video):
    r = run_cli("streams", "probe", tiny_video, "--seconds", "10")
    assert r.returncode == 0, r.stderr
    assert "decoder: avdec_h264" in r.stdout and "width=(int)48" in r.stdout and "0 dropped" in r.stdout
    r = run_cli("streams", "probe", "test://ball?width=80&height=60&fps=15", "--seconds", "2", "--size", "32")
    assert r.returncode == 0, r.stderr
    assert "output 32x32 RGB" in r.stdout and "width=(int)80" in r.stdout


def test_probe_bad_inputs_give_one_line(tmp_path):
    for uri, why in (
        (str(tmp_path / "missing.mp4"), "no such video file"),
        ("http://example/x", "unsupported source"),
        ("rtsp://127.0.0.1:9/none", "gave up after 0 reconnects"),
    ):
        r = run_cli("streams", "probe", uri, "--seconds", "3")
        assert r.returncode == 2, (uri, r.stdout, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if "error:" in ln]
        assert len(lines) == 1 and why in lines[0] and "Traceback" not in r.stderr, r.stderr
