"""The runtime end to end on a tiny bundle with real components: a local RTSP server, GStreamer,
ONNX Runtime, ZeroMQ (inproc, ipc, CURVE tcp) and llama.cpp; in one process and as services."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq

from edge_runtime import messages
from edge_runtime.config import load
from streams.rtsp_server import free_port

pytestmark = pytest.mark.slow
EXE = os.path.join(os.path.dirname(sys.executable), "lvlm-var")


@pytest.fixture(scope="session")
def actions_video(tmp_path_factory):
    """About 10 s of three consecutive synthetic actions, and their ground truth."""
    from edge_runtime.demo import render_video

    path = str(tmp_path_factory.mktemp("video") / "actions.mp4")
    return path, render_video(path, actions=3, seed=1, fps=15, size=48)


def test_one_process_rtsp_to_labels(tiny_bundle, actions_video, rtsp_server, tmp_path):
    from edge_runtime.demo import Recorder
    from edge_runtime.service import serve

    bundle, manifest = tiny_bundle
    url = rtsp_server.add_file("/a", actions_video[0])
    rtsp_server.start()
    rec = Recorder()
    cfg = load(
        None,
        {
            "bundle": bundle,
            "streams": [{"id": "cam1", "uri": url, "max_reconnects": 0}],
            "bus": {"windows": "inproc://w", "collect": "inproc://c", "results": "inproc://r"},
            "llm": {"threads": 1, "explain_interval_s": 0.0},
            "sinks": {"console": False, "jsonl": str(tmp_path / "r.jsonl")},
        },
    )
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stats = serve(cfg, until_done=True, duration_s=60, extra_sinks=[rec])
    # the signal handlers serve installs go when it returns (a caller can still be interrupted)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    frames = stats["streams"]["cam1"]["frames"]
    assert frames >= 100 and stats["streams"]["cam1"]["windows"] == len(rec.windows) >= 5, stats
    assert rec.windows[0].window_seq == 0 and all(w.provisional_label in manifest["labels"] for w in rec.windows)
    assert len(rec.results) >= 3 and all(r.label in manifest["labels"] and 0 < r.probability <= 1 for r in rec.results)
    assert all(
        r.bundle == rec.windows[0].bundle and r.tokens_to_label_ms > 0 and r.capture_to_tokens_ms >= 0
        for r in rec.results
    )
    assert any(r.explanation for r in rec.results)
    # the bundle reads count tokens: every window carries the VST's count, every result the one it read
    counts = manifest["lvlm"]["counts"]
    assert counts == 6 and all(1 <= w.count <= counts for w in rec.windows)
    sent = {w.window_seq: w.count for w in rec.windows}
    assert all(r.count == sent[r.window_seq] for r in rec.results)
    lines = [json.loads(x) for x in open(tmp_path / "r.jsonl")]
    results = [x for x in lines if "event" not in x]
    assert len(results) == len(rec.results) and results[0]["stream"] == "cam1"
    ended = [x["event"] for x in lines if "event" in x and x["event"]["state"] == "end"]
    assert len(ended) == len([e for e in rec.events if e.state == "end"])
    # over RTSP the stream's clock is the file's: the server plays it from its start for the client
    assert 0 <= rec.windows[0].pts_start_ns < 0.5e9, rec.windows[0]
    from edge_runtime.demo import score_demo_events

    timeline = tmp_path / "timeline.png"
    ev = score_demo_events(rec, actions_video[1], 15, frames / 15, str(timeline))
    assert ev["true_segments"] == 3 and 0 <= ev["frame_accuracy"] <= 1 and timeline.stat().st_size > 1000


def test_a_recorded_file_is_read_whole_with_events_on_its_own_clock(tiny_bundle, actions_video, tmp_path):
    """A file decoded much faster than real time, one worker with a short deadline: every window
    reaches the worker and gets a result (none superseded, none stale), results carry the file's
    own timestamps, and the events opened on them lie inside the video and end by its end."""
    from edge_runtime.demo import Recorder
    from edge_runtime.service import serve

    bundle, manifest = tiny_bundle
    rec = Recorder()
    cfg = load(
        None,
        {
            "bundle": bundle,
            "streams": [{"id": "f", "uri": actions_video[0]}],
            "bus": {"windows": "inproc://lw", "collect": "inproc://lc", "results": "inproc://lr"},
            "llm": {"threads": 1, "explain": False, "deadline_s": 0.2},
            "events": {"min_probability": 0.05, "open_windows": 1, "close_windows": 1},
            "sinks": {"console": False},
        },
    )
    stats = serve(cfg, until_done=True, duration_s=120, extra_sinks=[rec])
    worker = next(iter(stats["workers"].values()))
    windows = stats["streams"]["f"]["windows"]
    assert windows >= 10 and len(rec.results) == windows == worker["read"], (stats, len(rec.results))
    assert worker["superseded"] == 0 and worker["stale"] == 0 and stats["streams"]["f"]["windows_unanswered"] == 0
    assert all(w.lossless for w in rec.windows)
    seconds = stats["streams"]["f"]["frames"] / 15
    assert all(0 <= r.pts_start_ns < r.pts_end_ns <= seconds * 1e9 + 1e8 for r in rec.results)
    ended = [e for e in rec.events if e.state == "end"]
    assert ended and len(ended) == len({e.event_id for e in rec.events})  # every event that started has ended
    assert all(-0.5 <= e.start_s < e.end_s <= seconds + 0.5 for e in ended)
    assert all(e.label in manifest["labels"] for e in ended)


def test_run_over_a_file_exits_by_itself_with_a_summary_of_events(tiny_bundle, actions_video, tmp_path):
    bundle, _ = tiny_bundle
    bus = [f"--set=bus.{k}=ipc://{tmp_path}/{k}" for k in ("windows", "collect", "results")]
    r = subprocess.run(
        [EXE, "run", "--bundle", bundle, "--stream", f"f={actions_video[0]}", "--set", "sinks.console=false"]
        + ["--set", "llm.threads=1", "--set", "llm.explain=false", "--set", "events.min_probability=0.05", *bus],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()
    n = int(summary[0].split()[0])
    assert summary[0].endswith("event(s)") and n == len(summary) - 1 >= 1, r.stdout
    assert all(line.startswith("f event ") and " end: " in line for line in summary[1:])


def test_pose_bundle_reads_each_person_and_nobody_gives_no_window(tiny_pose_bundle, tmp_path):
    """A pose front-end bundle: the whole view letterboxed to the pose frame, one track per
    person with its own windows, and a view with nobody in it gives no window at all."""
    import numpy as np

    from edge_runtime.demo import Recorder, render_video
    from edge_runtime.service import serve
    from streams.writer import VideoWriter

    bundle, manifest = tiny_pose_bundle
    person = str(tmp_path / "person.mp4")
    render_video(person, actions=2, seed=3, fps=15, size=128)
    empty = str(tmp_path / "empty.mp4")
    with VideoWriter(empty, 160, 90, 15) as w:  # a 16:9 view of an empty room
        for k in range(60):
            w.write(np.full((90, 160, 3), 80 + k % 5, np.uint8))
    rec = Recorder()
    cfg = load(
        None,
        {
            "bundle": bundle,
            "streams": [
                {"id": "room", "uri": person, "max_reconnects": 0},
                {"id": "empty", "uri": empty, "max_reconnects": 0},
            ],
            "bus": {"windows": "inproc://pw", "collect": "inproc://pc", "results": "inproc://pr"},
            "llm": {"threads": 1, "explain": False},
            "sinks": {"console": False},
        },
    )
    stats = serve(cfg, until_done=True, duration_s=90, extra_sinks=[rec])
    room, nobody = stats["streams"]["room"], stats["streams"]["empty"]
    assert nobody["frames"] == 60 and nobody["windows"] == 0 and nobody["frames_without_person"] == 60
    assert nobody["tracks_started"] == 0
    assert room["frames"] >= 60 and room["tracks_started"] >= 1 and room["windows"] >= 2, room
    assert room["frames_without_person"] < room["frames"] // 4  # the synthetic figure is found
    windows = [w for w in rec.windows if w.stream == "room"]
    assert len(windows) == room["windows"] and all(w.track is not None and w.stream == "room" for w in windows)
    assert not [w for w in rec.windows if w.stream == "empty"]
    assert rec.results and all(
        r.track in {w.track for w in windows} and r.label in manifest["labels"] for r in rec.results
    )


def test_mirror_reading_averages_the_head_over_each_window_and_its_mirror(tiny_bundle, actions_video, tmp_path):
    """engine.mirror: the same tokens and counts, and head probabilities that are the mean of the
    window's own (the plain run's) and another distribution (its mirror image's)."""
    from edge_runtime.demo import Recorder
    from edge_runtime.service import serve

    bundle, manifest = tiny_bundle
    runs = {}
    for mirror in (False, True):
        rec = Recorder()
        cfg = load(
            None,
            {
                "bundle": bundle,
                "streams": [{"id": "f", "uri": actions_video[0]}],
                "engine": {"mirror": mirror},
                "bus": {
                    "windows": f"inproc://w{mirror}",
                    "collect": f"inproc://c{mirror}",
                    "results": f"inproc://r{mirror}",
                },
                "llm": {"threads": 1, "explain": False},
                "sinks": {"console": False},
            },
        )
        serve(cfg, until_done=True, duration_s=60, extra_sinks=[rec])
        runs[mirror] = {w.window_seq: w for w in rec.windows}
        assert rec.results and all(r.label in manifest["labels"] for r in rec.results)
    plain, mirror = runs[False], runs[True]
    assert plain.keys() == mirror.keys() and len(plain) >= 5
    differ = 0
    for seq, w in mirror.items():
        assert (w.tokens, w.count) == (plain[seq].tokens, plain[seq].count)
        other = [2 * m - p for m, p in zip(w.provisional_probs, plain[seq].provisional_probs)]
        assert min(other) > -1e-5 and abs(sum(other) - 1) < 1e-5  # 2 x mean - own: the mirror image's distribution
        differ += max(abs(m - p) for m, p in zip(w.provisional_probs, plain[seq].provisional_probs)) > 1e-4
    assert differ >= len(mirror) // 2


def test_engine_mirror_follows_the_bundle_unless_set(tiny_bundle, caplog):
    """engine.mirror unset: as the bundle's pool was fitted (lvlm.head_mirror); set against it: a warning."""
    from edge_runtime.ingest import head_mirror

    bundle, manifest = tiny_bundle
    plain = {**manifest, "lvlm": {**manifest["lvlm"], "head_mirror": False}}
    cfg = {
        m: load(None, {"bundle": bundle, "streams": [{"id": "f", "uri": "test://"}], "engine": {"mirror": m}})
        for m in (None, False, True)
    }
    assert manifest["lvlm"]["head_mirror"] is True and head_mirror(cfg[None], manifest) is True
    assert head_mirror(cfg[None], plain) is False
    assert head_mirror(cfg[True], manifest) is True and not caplog.records
    assert head_mirror(cfg[False], manifest) is False
    assert "fitted on the head read with its mirror image" in caplog.text


def test_worker_refuses_windows_its_bundle_cannot_read(tiny_bundle):
    import dataclasses

    from edge_runtime.messages import Health, MessageError, TokenWindow
    from edge_runtime.worker import check_window

    _, manifest = tiny_bundle
    w = TokenWindow(
        stream="cam1",
        window_seq=0,
        t_start_ns=1,
        t_end_ns=2,
        tokens=(1,) * manifest["vst"]["T"],
        distances=(0.1,) * manifest["vst"]["T"],
        provisional_label="a",
        provisional_score=0.5,
        capture_to_tokens_ms=1.0,
        sent_ns=3,
        bundle="b",
        count=2,
    )
    assert check_window(manifest, w) is w
    ok = dataclasses.replace(w, provisional_probs=(1.0,) + (0.0,) * (len(manifest["labels"]) - 1))
    assert check_window(manifest, ok) is ok
    for bad, match in (
        (dataclasses.replace(w, count=None), "count None"),
        (dataclasses.replace(w, count=7), "count 7"),
        (dataclasses.replace(w, tokens=(1, 2)), "T/K"),
        (dataclasses.replace(w, tokens=(manifest["vst"]["K"],) * manifest["vst"]["T"]), "T/K"),
        (dataclasses.replace(w, provisional_probs=(0.5, 0.5)), "head probabilities"),
        (
            dataclasses.replace(w, provisional_probs=(1.5,) + (0.0,) * (len(manifest["labels"]) - 1)),
            "head probabilities",
        ),
        (Health(service="x", name="y", state="z"), "expected a window"),
    ):
        with pytest.raises(MessageError, match=match):
            check_window(manifest, bad)
    format1 = {**manifest, "lvlm": {**manifest["lvlm"], "counts": 0}}
    assert check_window(format1, dataclasses.replace(w, count=None)).count is None  # a bundle without count tokens


def _config(tmp_path, bundle, endpoints, curve=None, stream=None):
    streams = stream or {"id": "cam1", "uri": "test://ball"}
    text = [f'bundle = "{bundle}"', 'name = "test"', "[[streams]]"] + [
        f"{k} = {json.dumps(v)}" for k, v in streams.items()
    ]
    text += ["[bus]"] + [f'{k} = "{v}"' for k, v in endpoints.items()]
    if curve:
        text += ["[bus.curve]"] + [f'{k} = "{v}"' for k, v in curve.items()]
    text += ["[llm]", "threads = 1", "deadline_s = 2.0", "[sinks]", "console = false"]
    path = tmp_path / "cfg.toml"
    path.write_text("\n".join(text) + "\n")
    return str(path)


def _spawn(*args, env=None):
    return subprocess.Popen(
        [EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )


def _stop(proc, seconds=5.0):
    """SIGTERM; returns how long it took to exit."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=seconds + 5)
    return time.monotonic() - t0


def _results(endpoint, cfg_path, count, timeout):
    r = subprocess.run(
        [EXE, "monitor", "--config", cfg_path, "--count", str(count), "--timeout", str(timeout), "--json"],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    return [
        x for x in map(json.loads, (y for y in r.stdout.splitlines() if y.startswith("{"))) if x["kind"] == "result"
    ]


def _endpoints(kind, tmp_path):
    if kind == "ipc":
        return {k: f"ipc://{tmp_path}/{k}" for k in ("windows", "collect", "results")}
    return {k: f"tcp://127.0.0.1:{free_port()}" for k in ("windows", "collect", "results")}


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_services_over_ipc_and_curve_tcp(kind, tiny_bundle, tmp_path):
    from edge_runtime.bus import generate_keys

    bundle, manifest = tiny_bundle
    ep = _endpoints(kind, tmp_path)
    curve = None
    if kind == "tcp":
        keys, allowed = tmp_path / "keys", tmp_path / "allowed"
        allowed.mkdir()
        _, server_secret = generate_keys(str(keys), "server")
        client_public, client_secret = generate_keys(str(keys), "client")
        os.replace(client_public, allowed / "client.key")
        curve = {
            "server_secret_key": server_secret,
            "authorized_keys": str(allowed),
            "client_secret_key": client_secret,
            "server_public_key": str(keys / "server.key"),
        }
    cfg = _config(tmp_path, bundle, ep, curve)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.2)
    notes, listening = [], threading.Event()
    listening.set()

    def listen():  # as systemd does, read the notifications as they come
        while listening.is_set():
            try:
                notes.append(notify.recv(4096).decode())
            except OSError:
                continue

    threading.Thread(target=listen, daemon=True).start()
    ingest = _spawn(
        "ingest", "--config", cfg, env={"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"}
    )
    worker = _spawn("llm-worker", "--config", cfg)
    try:
        got = _results(ep["results"], cfg, 3, 90)
        assert len(got) == 3 and all(r["label"] in manifest["labels"] and r["stream"] == "cam1" for r in got)
        if kind == "ipc":  # garbage into the ingest's collect socket: rejected, counted, survived
            ctx = zmq.Context()
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 1000)
            s.connect(ep["collect"])
            for junk in (b"junk", b"\x81\xa1v\x63", messages.encode(messages.Health(service="x", name="y", state="z"))):
                s.send(junk)
            s.close()
            ctx.term()
        else:  # a client whose key is not on the allow-list gets nothing; the others keep getting results
            ctx = zmq.Context()
            rogue = ctx.socket(zmq.SUB)
            rogue.setsockopt(zmq.LINGER, 0)
            pub, sec = zmq.curve_keypair()
            rogue.curve_secretkey, rogue.curve_publickey = sec, pub
            rogue.curve_serverkey = zmq.auth.load_certificate(str(tmp_path / "keys" / "server.key"))[0]
            rogue.setsockopt(zmq.SUBSCRIBE, b"")
            rogue.connect(ep["results"])
            poller = zmq.Poller()
            poller.register(rogue, zmq.POLLIN)
            assert not dict(poller.poll(4000))
            rogue.close()
            ctx.term()
        assert len(_results(ep["results"], cfg, 2, 60)) == 2
        assert ingest.poll() is None and worker.poll() is None
    finally:
        took = [_stop(p) for p in (ingest, worker)]
    assert max(took) < 5.0, took
    assert ingest.returncode == 0, ingest.stderr.read()[-2000:]
    final = _last_json(ingest.stderr)
    if kind == "ipc":
        assert final["ingest"]["bad_messages"] == 3
    time.sleep(0.5)
    listening.clear()
    text = "\n".join(notes)
    assert "READY=1" in text and "STATUS=" in text and "WATCHDOG=1" in text and "STOPPING=1" in text


def _last_json(stream) -> dict:
    text = stream.read() if hasattr(stream, "read") else stream
    start = text.rfind("\n{\n") + 1 if "\n{\n" in text else text.find("{\n")
    return json.loads(text[start:])


def test_killed_worker_windows_are_dropped_and_a_new_worker_resumes(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    ep = _endpoints("ipc", tmp_path)
    cfg = _config(tmp_path, bundle, ep)
    ingest = _spawn("ingest", "--config", cfg, "--set", "sinks.metrics_port=0")
    worker = _spawn("llm-worker", "--config", cfg)
    try:
        assert len(_results(ep["results"], cfg, 2, 90)) == 2
        worker.kill()
        worker.wait(10)
        time.sleep(4)  # windows now go nowhere: dropped and counted
        assert ingest.poll() is None
        worker = _spawn("llm-worker", "--config", cfg)
        assert len(_results(ep["results"], cfg, 2, 90)) == 2  # the restarted worker serves again
    finally:
        for p in (ingest, worker):
            if p.poll() is None:
                _stop(p)
    final = _last_json(ingest.stderr)
    assert final["bus"]["windows_dropped_no_worker"] > 0 and final["bus"]["windows_sent"] > 0


def test_bad_bundle_and_dead_source_give_one_line(tiny_bundle, tmp_path):
    from tests.helpers import run_cli

    r = run_cli("run", "--bundle", str(tmp_path), "--stream", "a=test://")
    assert r.returncode == 2 and "not a bundle" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("run", "--bundle", tiny_bundle[0])
    assert r.returncode == 2 and "no streams" in r.stderr
    r = run_cli(
        "run",
        "--bundle",
        tiny_bundle[0],
        "--stream",
        "a=/no/such/file.mp4",
        "--until-done",
        "--set",
        "sinks.console=false",
        "--set",
        "bus.windows=inproc://w",
        "--set",
        "bus.collect=inproc://c",
        "--set",
        "bus.results=inproc://r",
        timeout=120,
    )
    assert r.returncode == 0 and "no such video file" in r.stderr and "Traceback" not in r.stderr


def test_systemd_units_verify(tmp_path):
    import shutil

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    root = os.path.join(os.path.dirname(__file__), "..", "..", "systemd")
    units = []
    for name in os.listdir(root):
        if not name.endswith((".service", ".target")):
            continue
        text = open(os.path.join(root, name)).read().replace("/opt/lvlm-var/bin/lvlm-var", EXE)
        for instance in ["edge01"] if "@" in name else [None]:
            unit = name.replace("@.", f"@{instance}.") if instance else name
            (tmp_path / unit).write_text(text)
            units.append(str(tmp_path / unit))
    assert len(units) == 3
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    ours = [line for line in r.stderr.splitlines() if str(tmp_path) in line]
    assert r.returncode == 0 and not ours, r.stderr
    text = open(os.path.join(root, "lvlm-var-ingest@.service")).read()
    for must in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=",
        "CacheDirectory=",
        "DeviceAllow=char-video4linux",
    ):
        assert must in text
    assert "\nPrivateDevices=" not in text


@pytest.mark.gpu
def test_tensorrt_backend_runs_the_pipeline(tiny_bundle, actions_video, cache32, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed on this GPU machine")
    pytest.importorskip("cuda", reason="cuda-python is not installed")
    import shutil

    from edge_runtime.demo import Recorder
    from edge_runtime.engines import Engines
    from edge_runtime.service import open_bundle, serve
    from export.tensorrt import build_bundle_plans

    bundle = str(tmp_path / "b")
    shutil.copytree(tiny_bundle[0], bundle)
    build_bundle_plans(bundle, "fp16", max_batch=64, data=cache32, progress=False)
    manifest, _ = open_bundle(bundle)
    assert Engines(bundle, manifest, "auto").backend.startswith("tensorrt")
    rec = Recorder()
    cfg = load(
        None,
        {
            "bundle": bundle,
            "engine": {"backend": "tensorrt"},
            "streams": [{"id": "cam1", "uri": actions_video[0]}],
            "bus": {"windows": "inproc://w", "collect": "inproc://c", "results": "inproc://r"},
            "llm": {"threads": 2, "n_gpu_layers": -1},
            "sinks": {"console": False},
        },
    )
    stats = serve(cfg, until_done=True, duration_s=120, extra_sinks=[rec])
    assert stats["streams"]["cam1"]["windows"] == len(rec.windows) >= 5 and rec.results
