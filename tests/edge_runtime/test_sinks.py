"""Sinks with real I/O: rotating JSONL, alert webhooks against a local HTTP server (and a dead
one), Prometheus /metrics and /healthz over HTTP, the console table."""

import io
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edge_runtime.config import AlertRule
from edge_runtime.messages import ActionResult, TokenWindow
from edge_runtime.sinks import Alerts, Console, Fanout, Jsonl, Metrics, Sink
from streams.rtsp_server import free_port
from tests.helpers import action_event


def result(label="falling", p=0.9, t=0.0, stream="cam1", seq=0, track=None):
    return ActionResult(
        stream=stream,
        window_seq=seq,
        t_start_ns=0,
        t_end_ns=int(t * 1e9),
        tokens=(1, 2),
        provisional_label=label,
        provisional_score=0.8,
        label=label,
        probability=p,
        explanation="The person falls.",
        capture_to_tokens_ms=5.0,
        tokens_to_label_ms=30.0,
        tokens_to_explanation_ms=None,
        bundle="b",
        track=track,
    )


def event(eid=0, start=0.0, end=1.0, label="falling", p=0.9, state="update", stream="cam1", track=None):
    return action_event(eid, state, label, start, end, p, stream, track)


def test_jsonl_rotates_and_keeps_every_line(tmp_path):
    path = tmp_path / "r.jsonl"
    sink = Jsonl(str(path), max_bytes=2000, backups=3)
    for i in range(30):
        sink.result(result(seq=i))
    sink.close()
    events = tmp_path / "e.jsonl"
    sink = Jsonl(str(events), max_bytes=10**6, backups=0)
    for state in ("start", "update", "end"):
        sink.event(event(3, state=state))
    sink.close()
    assert [json.loads(x)["event"]["state"] for x in events.read_text().splitlines()] == ["start", "end"]
    files = [path] + [tmp_path / f"r.jsonl.{i}" for i in (1, 2, 3)]
    lines = [json.loads(x) for f in files if f.exists() for x in f.read_text().splitlines()]
    assert (tmp_path / "r.jsonl.1").exists() and all(f.stat().st_size <= 2000 for f in files if f.exists())
    assert sorted(x["window_seq"] for x in lines)[-1] == 29 and len(lines) <= 30


class Hook(BaseHTTPRequestHandler):
    received: list = []
    delay = 0.0

    def do_POST(self):  # noqa: N802
        time.sleep(self.delay)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Hook.received.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alert_rules_duration_cooldown_and_a_dead_webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hook.received = []
    dead = f"http://127.0.0.1:{free_port()}/x"  # nothing listens there
    rules = [
        AlertRule(
            url=f"http://127.0.0.1:{server.server_address[1]}/a",
            labels=["falling"],
            min_probability=0.6,
            min_duration_s=1.0,
            cooldown_s=60,
            retries=0,
        ),
        AlertRule(url=dead, labels=["falling"], min_probability=0.6, retries=2, timeout_s=0.5),
    ]
    alerts = Alerts(rules)
    t0 = time.monotonic()
    alerts.event(event(0, 0.0, 0.5, state="start"))  # too short so far
    alerts.event(event(0, 0.0, 1.2))  # lasted 1.2 s: fires
    alerts.event(event(0, 0.0, 2.0))  # once per event
    alerts.event(event(0, 0.0, 2.0, state="end"))
    alerts.event(event(1, 10.0, 12.0))  # another fall on cam1 within the cooldown
    alerts.event(event(2, 20.0, 22.0, p=0.3))  # too unlikely
    alerts.event(event(3, 0.0, 0.4, stream="cam2"))  # another stream: too short
    alerts.event(event(4, 0.0, 5.0, label="clapping", stream="cam2"))  # not the rule's label
    assert time.monotonic() - t0 < 0.5  # the caller never waits for HTTP
    deadline = time.monotonic() + 10
    while (len(Hook.received) < 1 or alerts.failed < 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    alerts.close()
    server.shutdown()
    assert [(b["stream"], b["label"]) for b in Hook.received] == [("cam1", "falling")]
    assert alerts.sent == 1 and alerts.failed >= 1  # the dead webhook failed after its retries


def test_alerts_and_console_tell_the_people_of_one_stream_apart():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hook.received = []
    alerts = Alerts(
        [
            AlertRule(
                url=f"http://127.0.0.1:{server.server_address[1]}/a",
                labels=["falling"],
                min_probability=0.6,
                min_duration_s=1.0,
                cooldown_s=60,
                retries=0,
            )
        ]
    )
    alerts.event(event(0, 0.0, 1.2, track=0))  # person 0's fall lasted 1.2 s: fires
    alerts.event(event(1, 0.6, 1.3, track=1))  # person 1's only 0.7 s
    alerts.event(event(1, 0.6, 1.7, track=1))  # now 1.1 s: fires, person 0's cooldown is not theirs
    deadline = time.monotonic() + 10
    while len(Hook.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    alerts.close()
    server.shutdown()
    assert [(b["stream"], b["track"]) for b in Hook.received] == [("cam1", 0), ("cam1", 1)]
    out = io.StringIO()
    console = Console(stream=out)
    console.result(result(track=3))
    console.result(result())
    console.event(event(7, 1.0, 1.0, state="start", track=3))
    console.event(event(7, 1.0, 2.5, state="end", track=3))
    text = out.getvalue()
    assert "cam1/3 #0: falling" in text and "\ncam1 #0: falling" in text
    assert "cam1/3 event 7 start: falling" in text and "cam1/3 event 7 end: falling (p=0.90, 1.0-2.5 s)" in text


def test_metrics_and_healthz_over_http():
    state = {"ok": True}
    m = Metrics("127.0.0.1", 0, health=lambda: (state["ok"], "ok" if state["ok"] else "cam1: reconnecting"))
    try:
        w = TokenWindow(
            stream="cam1",
            window_seq=0,
            t_start_ns=0,
            t_end_ns=1,
            tokens=(1,),
            distances=(0.1,),
            provisional_label="a",
            provisional_score=0.5,
            capture_to_tokens_ms=7.0,
            sent_ns=0,
            bundle="b",
        )
        m.window(w)
        m.result(result())
        m.event(event(0, state="start"))
        m.event(event(0, state="update"))
        m.event(event(0, state="end"))
        m.stream("cam1", 14.9, 100, 2, 1)
        m.stream(
            "cam2", 15.0, 90, 0, 0, {"people": 2, "tracks_started": 3, "tracks_ended": 1, "frames_without_person": 7}
        )
        base = f"http://127.0.0.1:{m.port}"
        text = urllib.request.urlopen(base + "/metrics").read().decode()
        assert 'lvlm_var_stream_fps{stream="cam1"} 14.9' in text and 'lvlm_var_windows_total{stream="cam1"} 1.0' in text
        assert "lvlm_var_capture_to_label_ms_bucket" in text and 'lvlm_var_stream_reconnects{stream="cam1"} 1.0' in text
        assert (
            'lvlm_var_stream_people{stream="cam2"} 2.0' in text and 'lvlm_var_stream_people{stream="cam1"}' not in text
        )
        assert 'lvlm_var_stream_tracks{event="started",stream="cam2"} 3.0' in text
        assert 'lvlm_var_stream_frames_without_person{stream="cam2"} 7.0' in text
        assert 'lvlm_var_events_total{label="falling",stream="cam1"} 1.0' in text  # counted once, at its start
        assert urllib.request.urlopen(base + "/healthz").status == 200
        state["ok"] = False
        try:
            urllib.request.urlopen(base + "/healthz")
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and b"reconnecting" in exc.read()
    finally:
        m.close()


def test_console_lines_and_a_failing_sink_does_not_stop_the_others():
    out = io.StringIO()
    console = Console(stream=out)

    class Broken(Sink):
        def result(self, r):
            raise RuntimeError("disk full")

    fan = Fanout([Broken(), console])
    fan.result(result())
    assert "cam1 #0: falling (p=0.90" in out.getvalue() and "The person falls." in out.getvalue()
