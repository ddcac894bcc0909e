import pytest

from streams.errors import SourceError
from streams.pipeline import Conversion, describe
from streams.uri import parse, redact


def test_parse_every_kind(tmp_path):
    assert parse(str(tmp_path / "a.avi")).kind == "file"
    assert parse("file:///data/x%20y.mp4").location == "/data/x y.mp4"
    assert parse("/dev/video2").kind == "v4l2"
    assert parse("v4l2:///dev/video1").location == "/dev/video1"
    assert parse("csi://1").location == "1"
    assert parse("test://ball?width=64").option("width") == "64"
    assert parse("pipeline://videotestsrc is-live=true").location == "videotestsrc is-live=true"
    spec = parse("rtsp://admin:s3cr%40t@10.0.0.5:8554/stream1?transport=udp&latency=50")
    assert spec.kind == "rtsp" and spec.live
    assert spec.user == "admin" and spec.password == "s3cr@t"
    assert spec.location == "rtsp://10.0.0.5:8554/stream1"
    assert spec.option("transport") == "udp" and spec.option("latency") == "50"
    assert "s3cr" not in repr(spec) and "admin" not in spec.display()


@pytest.mark.parametrize(
    "bad,why",
    [
        ("", "empty"),
        ("http://x/y.mp4", "unsupported"),
        ("rtsp:///nohost", "no host"),
        ("csi://abc", "sensor"),
        ("pipeline://", "needs a GStreamer"),
    ],
)
def test_bad_uris_say_why(bad, why):
    with pytest.raises(SourceError, match=why):
        parse(bad)


def test_redact_never_leaks_credentials():
    assert redact("rtsp://u:pw@host:554/a") == "rtsp://***@host:554/a"
    assert redact("rtsp://host/a") == "rtsp://host/a"


def test_credentials_and_bad_options_stay_out_of_pipelines():
    spec = parse("rtsp://admin:hunter2@127.0.0.1:8554/cam?transport=udp")
    text = describe(spec, Conversion(64, 64, 10))
    assert "hunter2" not in text and "admin" not in text
    assert "protocols=udp" in text and "framerate=10/1" in text and "width=64" in text
    with pytest.raises(SourceError, match="transport"):
        describe(parse("rtsp://h/a?transport=sctp"), Conversion())
    with pytest.raises(SourceError, match="out of range"):
        Conversion(4, 4, 15)
