"""Where results go: the console table, a rotating JSONL file, alert webhooks, Prometheus metrics
and /healthz. Every sink gets `window(TokenWindow)` (the provisional label, milliseconds after
the frames), `result(ActionResult)` (the language model's answer) and `event(ActionEvent)` (an
action's start, updates and end, `edge_runtime.events`); none may block the pipeline: slow work (HTTP) happens on the sink's own thread behind a bounded queue.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edge_runtime.config import AlertRule, SinkConfig
from edge_runtime.messages import ActionEvent, ActionResult, TokenWindow, who

log = logging.getLogger(__name__)


class Sink:
    def window(self, w: TokenWindow) -> None:
        pass

    def result(self, r: ActionResult) -> None:
        pass

    def event(self, e: ActionEvent) -> None:
        pass

    def close(self) -> None:
        pass


def event_line(e: ActionEvent) -> str:
    """One line for an event's start or end (the console, the monitor, a file run's summary)."""
    span = f"{e.start_s:.1f}-{e.end_s:.1f} s" if e.state == "end" else f"from {e.start_s:.1f} s"
    return f"{who(e)} event {e.event_id} {e.state}: {e.label} (p={e.probability:.2f}, {span}) {e.explanation or ''}".rstrip()


class Console(Sink):
    """A live table (redrawn in place on a terminal, one line per result otherwise)."""

    def __init__(self, stream=None, fps=None, min_interval_s: float = 0.25):
        self.out = stream or sys.stdout
        self.tty = self.out.isatty()
        self.rows: dict[str, dict] = {}
        self.fps = fps or (lambda stream_id: None)
        self.min_interval_s, self._last = min_interval_s, 0.0
        self._lock = threading.Lock()

    def window(self, w: TokenWindow) -> None:
        with self._lock:
            self.rows.setdefault(who(w), {"stream": w.stream}).update(
                provisional=f"{w.provisional_label} ({w.provisional_score:.2f})"
            )
            self._draw()

    def result(self, r: ActionResult) -> None:
        with self._lock:
            row = self.rows.setdefault(who(r), {"stream": r.stream})
            row.update(label=r.label, probability=r.probability, latency=r.capture_to_tokens_ms + r.tokens_to_label_ms)
            if r.explanation:
                row["explanation"] = r.explanation
            if not self.tty:
                print(
                    f"{who(r)} #{r.window_seq}: {r.label} (p={r.probability:.2f}, VST {r.provisional_label}) "
                    f"{r.explanation or ''} [{row['latency']:.0f} ms]",
                    file=self.out,
                    flush=True,
                )
            self._draw(force=True)

    def event(self, e: ActionEvent) -> None:
        with self._lock:
            row = self.rows.setdefault(who(e), {"stream": e.stream})
            row["event"] = f"{e.label} since {e.start_s:.1f} s" if e.state != "end" else ""
            if not self.tty and e.state != "update":
                print(event_line(e), file=self.out, flush=True)
            self._draw(force=e.state != "update")

    def _draw(self, force: bool = False) -> None:
        if not self.tty or (not force and time.monotonic() - self._last < self.min_interval_s):
            return
        self._last = time.monotonic()
        lines = [
            f"{'stream':<12} {'fps':>5} {'provisional (VST)':<28} {'label (LLM)':<28} {'p':>5} {'ms':>6}  "
            f"{'event':<26} explanation"
        ]
        for sid, row in sorted(self.rows.items()):
            fps = self.fps(row["stream"])
            lines.append(
                f"{sid[:12]:<12} {fps if fps is None else f'{fps:.1f}'!s:>5} {row.get('provisional', '')[:28]:<28} "
                f"{row.get('label', '')[:28]:<28} {row.get('probability', 0):>5.2f} {row.get('latency', 0):>6.0f}  "
                f"{row.get('event', '')[:26]:<26} {row.get('explanation', '')[:70]}"
            )
        self.out.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n")
        self.out.flush()


class Jsonl(Sink):
    """One JSON object per result and per event's start and end ({"event": ...} around it),
    appended; rotated at max_bytes (FILE.1 ... FILE.N)."""

    def __init__(self, path: str, max_bytes: int, backups: int):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def result(self, r: ActionResult) -> None:
        self._write(dataclasses.asdict(r))

    def event(self, e: ActionEvent) -> None:
        if e.state != "update":
            self._write({"event": dataclasses.asdict(e)})

    def _write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if self.f.tell() + len(line) > self.max_bytes and self.f.tell() > 0:
                self._rotate()
            self.f.write(line)
            self.f.flush()

    def _rotate(self) -> None:
        self.f.close()
        for i in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{self.path}.{i}"):
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        if self.backups:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.remove(self.path)
        self.f = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self.f.close()


class Alerts(Sink):
    """Webhook alerts on action events. A rule fires once per event whose label is in the rule's
    labels, whose mean probability is at least min_probability and which has lasted min_duration_s
    of stream time (on its start or a later update), and not within cooldown_s of its last firing
    for that person and label. POSTs happen on a sender thread (bounded queue, retries with
    exponential backoff); a slow or dead webhook delays only other alerts, never the pipeline."""

    def __init__(self, rules: list[AlertRule], metrics: Metrics | None = None, queue_size: int = 256):
        self.rules = rules
        self.metrics = metrics
        self.fired_events: set[tuple[int, int]] = set()  # (rule, event id) already sent
        self.last_fired: dict[tuple[int, str, str], float] = {}
        self.queue: queue.Queue = queue.Queue(queue_size)
        self.sent = self.failed = self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send_loop, name="alerts", daemon=True)
        self._thread.start()

    def event(self, e: ActionEvent) -> None:
        for i, rule in enumerate(self.rules):
            if e.state == "end":
                self.fired_events.discard((i, e.event_id))
                continue
            if (i, e.event_id) in self.fired_events or (rule.labels and e.label not in rule.labels):
                continue
            if e.probability < rule.min_probability or e.end_s - e.start_s < rule.min_duration_s:
                continue
            fired = (i, who(e), e.label)  # per person where the pose front end tracks people
            now = time.monotonic()
            if now - self.last_fired.get(fired, -1e18) < rule.cooldown_s:
                continue
            self.fired_events.add((i, e.event_id))
            self.last_fired[fired] = now
            body = {
                "stream": e.stream,
                "track": e.track,
                "event_id": e.event_id,
                "label": e.label,
                "probability": e.probability,
                "explanation": e.explanation,
                "start_s": e.start_s,
                "end_s": e.end_s,
                "t_start_ns": e.t_start_ns,
                "bundle": e.bundle,
            }
            try:
                self.queue.put_nowait((rule, body))
            except queue.Full:
                self.dropped += 1

    def _send_loop(self) -> None:
        import urllib.error
        import urllib.request

        while not self._stop.is_set():
            try:
                rule, body = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            data = json.dumps(body).encode()
            for attempt in range(rule.retries + 1):
                try:
                    req = urllib.request.Request(rule.url, data=data, headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=rule.timeout_s) as resp:
                        if resp.status < 300:
                            self.sent += 1
                            break
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    log.warning("alert webhook %s: %s (attempt %d)", rule.url, exc, attempt + 1)
                if attempt == rule.retries or self._stop.wait(min(0.5 * 2**attempt, 10.0)):
                    self.failed += 1
                    break
            if self.metrics:
                self.metrics.alerts(self.sent, self.failed, self.dropped)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class Metrics(Sink):
    """Prometheus metrics on /metrics and a /healthz (200 while every stream is healthy or the
    service has no streams, 503 otherwise), served by a small thread."""

    def __init__(self, host: str, port: int, health=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.fps = Gauge("lvlm_var_stream_fps", "frames per second decoded", ["stream"], registry=r)
        self.frames = Gauge("lvlm_var_stream_frames", "frames decoded", ["stream"], registry=r)
        self.drops = Gauge(
            "lvlm_var_stream_frame_drops", "frames dropped by the source's buffer policy", ["stream"], registry=r
        )
        self.reconnects = Gauge("lvlm_var_stream_reconnects", "source reconnects", ["stream"], registry=r)
        self.people = Gauge("lvlm_var_stream_people", "people tracked now (pose front end)", ["stream"], registry=r)
        self.tracks = Gauge(
            "lvlm_var_stream_tracks",
            "person tracks started and ended (pose front end)",
            ["stream", "event"],
            registry=r,
        )
        self.no_person = Gauge(
            "lvlm_var_stream_frames_without_person",
            "frames with nobody in view (pose front end)",
            ["stream"],
            registry=r,
        )
        self.windows = Counter("lvlm_var_windows", "token windows produced", ["stream"], registry=r)
        self.results = Counter("lvlm_var_results", "LLM results received", ["stream"], registry=r)
        self.events = Counter("lvlm_var_events", "action events started", ["stream", "label"], registry=r)
        buckets = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
        self.lat_tokens = Histogram(
            "lvlm_var_capture_to_tokens_ms", "capture -> tokens (provisional label)", buckets=buckets, registry=r
        )
        self.lat_label = Histogram("lvlm_var_capture_to_label_ms", "capture -> LLM label", buckets=buckets, registry=r)
        self.lat_expl = Histogram(
            "lvlm_var_tokens_to_explanation_ms", "tokens -> explanation", buckets=buckets, registry=r
        )
        self.llm_dropped = Gauge("lvlm_var_windows_dropped", "windows not read by an LLM", ["reason"], registry=r)
        self.llm_queue = Gauge("lvlm_var_llm_queue_depth", "windows waiting in the LLM worker", ["worker"], registry=r)
        self.bad_messages = Gauge("lvlm_var_bad_messages", "malformed or wrong-version messages rejected", registry=r)
        self.alert_counts = Gauge("lvlm_var_alerts", "alert webhooks", ["outcome"], registry=r)
        self.mqtt = Gauge("lvlm_var_mqtt_messages", "MQTT messages sent and dropped", ["outcome"], registry=r)
        self.health = health or (lambda: (True, "ok"))
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics", daemon=True
        )
        self._thread.start()

    def _handler(self):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    ok, text = metrics.health()
                    body, ctype, code = (text + "\n").encode(), "text/plain", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def window(self, w: TokenWindow) -> None:
        self.windows.labels(w.stream).inc()
        self.lat_tokens.observe(w.capture_to_tokens_ms)

    def result(self, r: ActionResult) -> None:
        self.results.labels(r.stream).inc()
        self.lat_label.observe(r.capture_to_tokens_ms + r.tokens_to_label_ms)
        if r.tokens_to_explanation_ms is not None:
            self.lat_expl.observe(r.tokens_to_explanation_ms)

    def event(self, e: ActionEvent) -> None:
        if e.state == "start":
            self.events.labels(e.stream, e.label).inc()

    def stream(
        self, sid: str, fps: float, frames: int, drops: int, reconnects: int, people: dict | None = None
    ) -> None:
        """people: the pose front end's counters of the stream (people, tracks_started,
        tracks_ended, frames_without_person), where the bundle has one."""
        self.fps.labels(sid).set(fps)
        self.frames.labels(sid).set(frames)
        self.drops.labels(sid).set(drops)
        self.reconnects.labels(sid).set(reconnects)
        if people:
            self.people.labels(sid).set(people["people"])
            self.tracks.labels(sid, "started").set(people["tracks_started"])
            self.tracks.labels(sid, "ended").set(people["tracks_ended"])
            self.no_person.labels(sid).set(people["frames_without_person"])

    def alerts(self, sent: int, failed: int, dropped: int) -> None:
        for k, v in (("sent", sent), ("failed", failed), ("dropped", dropped)):
            self.alert_counts.labels(k).set(v)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class EventLog(Sink):
    """Every event that ended, kept for the summary of a run over recorded files."""

    def __init__(self):
        self.ended: list[ActionEvent] = []
        self._lock = threading.Lock()

    def event(self, e: ActionEvent) -> None:
        if e.state == "end":
            with self._lock:
                self.ended.append(e)

    def summary(self) -> str:
        with self._lock:
            events = sorted(self.ended, key=lambda e: (e.stream, e.start_s))
        return "\n".join([f"{len(events)} event(s)"] + [event_line(e) for e in events])


class Fanout(Sink):
    """All sinks as one; a sink that raises is logged and skipped, never fatal."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = sinks

    def _each(self, method: str, msg) -> None:
        for s in self.sinks:
            try:
                getattr(s, method)(msg)
            except Exception as exc:  # noqa: BLE001 - a sink's failure must not stop the pipeline
                log.warning("sink %s failed on %s: %s", type(s).__name__, method, exc)

    def window(self, w: TokenWindow) -> None:
        self._each("window", w)

    def result(self, r: ActionResult) -> None:
        self._each("result", r)

    def event(self, e: ActionEvent) -> None:
        self._each("event", e)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def build_sinks(
    cfg: SinkConfig, health=None, fps=None, extra: list[Sink] | None = None, name: str = "lvlm-var"
) -> tuple[Fanout, Metrics | None]:
    metrics = Metrics(cfg.metrics_host, cfg.metrics_port, health) if cfg.metrics_port is not None else None
    sinks: list[Sink] = list(extra or [])
    if cfg.console:
        sinks.append(Console(fps=fps))
    if cfg.jsonl:
        sinks.append(Jsonl(cfg.jsonl, cfg.jsonl_max_bytes, cfg.jsonl_backups))
    if cfg.alerts:
        sinks.append(Alerts(cfg.alerts, metrics))
    if cfg.mqtt is not None:
        from edge_runtime.mqtt import Mqtt

        sinks.append(Mqtt(cfg.mqtt, name, metrics))
    if metrics:
        sinks.append(metrics)
    return Fanout(sinks), metrics
