"""Message schema (msgpack, versioned, validated) and the config schema (errors name the field)."""

import time

import msgpack
import pytest

from edge_runtime import messages
from edge_runtime.config import EXAMPLE, ConfigError, load, parse_value
from edge_runtime.messages import ActionResult, Health, MessageError, TokenWindow
from tests.helpers import run_cli

WINDOW = TokenWindow(
    stream="cam1",
    window_seq=3,
    t_start_ns=1,
    t_end_ns=2,
    tokens=(1, 2, 3),
    distances=(0.1, 0.2, 0.3),
    provisional_label="hand waving",
    provisional_score=0.9,
    capture_to_tokens_ms=4.5,
    sent_ns=10,
    bundle="abc",
)


def test_messages_round_trip():
    assert messages.decode(messages.encode(WINDOW)) == WINDOW
    r = ActionResult(
        stream="cam1",
        window_seq=3,
        t_start_ns=1,
        t_end_ns=2,
        tokens=(1, 2),
        provisional_label="a",
        provisional_score=0.5,
        label="b",
        probability=0.7,
        explanation=None,
        capture_to_tokens_ms=1.0,
        tokens_to_label_ms=20.0,
        tokens_to_explanation_ms=None,
        bundle="abc",
        worker="w",
    )
    assert messages.decode(messages.encode(r)) == r
    h = Health(service="ingest", name="n", state="ok", counters={"frames": 3}, sent_ns=5)
    assert messages.decode(messages.encode(h)) == h


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\xc1garbage", "not a msgpack"),
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({"v": 99, "kind": "window"}), "schema version 99"),
        (msgpack.packb({"v": 1, "kind": "pickle"}), "unknown message kind"),
        (msgpack.packb({"v": 1, "kind": "window", "stream": "x"}), "missing"),
        (b"\x00" * (messages.MAX_BYTES + 1), "exceeds"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(data, match):
    with pytest.raises(MessageError, match=match):
        messages.decode(data)


def test_field_types_are_checked():
    body = msgpack.unpackb(messages.encode(WINDOW))
    for field, bad in (
        ("tokens", ["a"]),
        ("window_seq", "3"),
        ("provisional_score", True),
        ("stream", 5),
        ("count", "3"),
        ("count", 2.5),
    ):
        with pytest.raises(MessageError, match=field):
            messages.decode(msgpack.packb({**body, field: bad}))


def test_window_count_is_optional_and_carried():
    import dataclasses

    counted = dataclasses.replace(WINDOW, count=3)
    assert messages.decode(messages.encode(counted)).count == 3
    body = msgpack.unpackb(messages.encode(counted))
    del body["count"]  # a sender from before the count (or a VST without a repetitions head)
    assert messages.decode(msgpack.packb(body)) == WINDOW and WINDOW.count is None


def test_config_errors_name_the_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE)
    cfg = load(str(path))
    assert len(cfg.streams) == 2 and cfg.sinks.alerts[0].labels == ["falling"]
    path.write_text(EXAMPLE.replace('backend = "auto"', 'backend = "cuda-magic"'))
    with pytest.raises(ConfigError, match=r"engine\.backend"):
        load(str(path))
    path.write_text(EXAMPLE + "\n[llm.extra]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"llm\.extra"):
        load(str(path))
    with pytest.raises(ConfigError, match=r"bus\.windows"):
        load(None, {"bundle": "b", "bus": {"windows": "http://x"}})
    with pytest.raises(ConfigError, match="unique"):
        load(None, {"bundle": "b", "streams": [{"id": "a", "uri": "x"}, {"id": "a", "uri": "y"}]})
    with pytest.raises(ConfigError, match="no such config file"):
        load(str(tmp_path / "nope.toml"))
    path.write_text(EXAMPLE)
    assert load(str(path), {"llm.threads": 7, "sinks.console": False}).llm.threads == 7  # CLI overrides win
    assert parse_value("4") == 4 and parse_value("false") is False and parse_value("rtsp://x") == "rtsp://x"


def test_config_check_command(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.replace("max_batch = 32", "max_batch = 0"))
    r = run_cli("config", "check", str(path))
    assert r.returncode == 2 and "engine.max_batch" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("config", "example")
    path.write_text(r.stdout)
    assert run_cli("config", "check", str(path)).returncode == 0


def test_explanations_can_be_disabled_or_rate_limited_per_stream():
    import threading

    from edge_runtime.worker import LLMWorker

    cfg = load(
        None,
        {
            "bundle": "b",
            "llm": {"explain": True, "explain_interval_s": 0.0},
            "streams": [
                {"id": "quiet", "uri": "test://", "explain": False},
                {"id": "slow", "uri": "test://", "explain_interval_s": 3600},
                {"id": "plain", "uri": "test://"},
            ],
        },
    )
    w = LLMWorker(cfg, "b", {}, "id", threading.Event())
    assert not w._explain_now("quiet") and w._explain_now("plain") and w._explain_now("unknown-stream")
    assert w._explain_now("slow")
    w.last_explained["slow"] = time.monotonic()
    assert not w._explain_now("slow") and w._explain_now("plain")


def test_person_track_is_carried_and_checked():
    import dataclasses

    tracked = dataclasses.replace(WINDOW, track=2)
    assert messages.decode(messages.encode(tracked)).track == 2
    body = msgpack.unpackb(messages.encode(tracked))
    with pytest.raises(MessageError, match="track"):
        messages.decode(msgpack.packb({**body, "track": "2"}))
    del body["track"]  # a whole-view sender (a frame-encoder bundle) has no track
    assert messages.decode(msgpack.packb(body)).track is None


def test_pose_settings_are_validated(tmp_path):
    cfg = load(None, {"bundle": "b", "pose": {"detect_every": 5, "max_people": 2}})
    assert (cfg.pose.detect_every, cfg.pose.max_people, cfg.pose.min_presence) == (5, 2, 0.5)
    with pytest.raises(ConfigError, match="pose.max_people"):
        load(None, {"bundle": "b", "pose": {"max_people": 0}})
