"""MQTT: action events and each stream's state for home-automation and alarm systems, in the
style Frigate's users know (`[sinks.mqtt]`; paho-mqtt).

Topics (PREFIX = `topic_prefix`):
- `PREFIX/available`: "online" (retained) while the service runs; the broker publishes the
  last will, "offline", when the service is gone;
- `PREFIX/STREAM/event`: every event's start, updates and end (JSON: the ActionEvent's fields);
- `PREFIX/STREAM/state`: the stream's state now (JSON, retained): the events open per person
  and the latest label.

The sink never blocks the pipeline: messages go into a bounded queue that a sender thread drains
while the client is connected; paho's network thread reconnects with backoff (1 to 30 s). While
the broker is away the queue keeps the newest `queue_size` messages; older ones are dropped and
counted. A host that does not resolve is a configuration error (one line at start); a broker that
refuses or is down is logged once per outage and retried.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import socket
import threading

from edge_runtime.config import ConfigError, MqttConfig
from edge_runtime.messages import ActionEvent, ActionResult
from edge_runtime.sinks import Sink

log = logging.getLogger(__name__)


class Mqtt(Sink):
    def __init__(self, cfg: MqttConfig, name: str, metrics=None):
        import paho.mqtt.client as mqtt

        try:
            socket.getaddrinfo(cfg.host, cfg.port)
        except OSError as exc:
            raise ConfigError(f"sinks.mqtt.host: cannot resolve {cfg.host!r} ({exc.strerror or exc})") from None
        self.cfg, self.prefix = cfg, cfg.topic_prefix.rstrip("/")
        self.queue: collections.deque = collections.deque()
        self.cond = threading.Condition(threading.RLock())
        self.metrics = metrics
        self.connected = False
        self.counters = {"sent": 0, "dropped": 0, "connects": 0}
        self.states: dict[str, dict] = {}
        self._stop = threading.Event()
        self._complained = False
        c = self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id or f"lvlm-var-{name}", protocol=mqtt.MQTTv311
        )
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            c.tls_set(ca_certs=cfg.ca_file)
        c.will_set(f"{self.prefix}/available", "offline", qos=1, retain=True)
        c.reconnect_delay_set(1, 30)
        c.on_connect, c.on_disconnect = self._on_connect, self._on_disconnect
        c.connect_async(cfg.host, cfg.port, cfg.keepalive_s)
        c.loop_start()
        self._thread = threading.Thread(target=self._send_loop, name="mqtt", daemon=True)
        self._thread.start()

    # ---- paho's callbacks (its network thread) ------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if not self._complained:
                log.error("mqtt %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason_code)
                self._complained = True
            return
        self._complained = False
        client.publish(f"{self.prefix}/available", "online", qos=1, retain=True)
        with self.cond:
            self.connected = True
            self.counters["connects"] += 1
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self.cond:
            was, self.connected = self.connected, False
        if was and not self._stop.is_set():
            log.warning("mqtt %s:%d: connection lost (%s); reconnecting", self.cfg.host, self.cfg.port, reason_code)

    # ---- the sink -----------------------------------------------------------------------------
    def _put(self, topic: str, payload: dict, retain: bool = False) -> None:
        with self.cond:
            if len(self.queue) >= self.cfg.queue_size:
                self.queue.popleft()
                self.counters["dropped"] += 1
                if self.metrics is not None:
                    self.metrics.mqtt.labels("dropped").set(self.counters["dropped"])
            self.queue.append((f"{self.prefix}/{topic}", json.dumps(payload, ensure_ascii=False), retain))
            self.cond.notify_all()

    def _state(self, stream: str) -> dict:
        return self.states.setdefault(stream, {"stream": stream, "events": {}, "label": None, "probability": None})

    def result(self, r: ActionResult) -> None:
        with self.cond:
            state = self._state(r.stream)
            if state["label"] != r.label:  # the state changes with the label, not with every window
                state.update(label=r.label, probability=round(r.probability, 3))
                self._put(f"{r.stream}/state", state, retain=self.cfg.retain_state)

    def event(self, e: ActionEvent) -> None:
        with self.cond:
            self._put(f"{e.stream}/event", dataclasses.asdict(e))
            if e.state == "update":
                return
            state = self._state(e.stream)
            who = "view" if e.track is None else str(e.track)
            if e.state == "start":
                state["events"][who] = {"event_id": e.event_id, "label": e.label, "start_s": e.start_s}
            else:
                state["events"].pop(who, None)
            self._put(f"{e.stream}/state", state, retain=self.cfg.retain_state)

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            with self.cond:
                while not (self.connected and self.queue) and not self._stop.is_set():
                    self.cond.wait(0.2)
                if self._stop.is_set():
                    return
                topic, payload, retain = self.queue.popleft()
            info = self.client.publish(topic, payload, qos=self.cfg.qos, retain=retain)
            if info.rc == 0:
                self.counters["sent"] += 1
                if self.metrics is not None:
                    self.metrics.mqtt.labels("sent").set(self.counters["sent"])
                continue
            with self.cond:  # not taken (the connection just went): back to the front
                self.queue.appendleft((topic, payload, retain))
                self.connected = False
            self._stop.wait(0.2)

    def close(self) -> None:
        with self.cond:  # a moment for what is queued, while the broker is there
            deadline = 20  # x 0.1 s
            while self.queue and self.connected and deadline:
                self.cond.wait(0.1)
                deadline -= 1
        self._stop.set()
        with self.cond:
            self.cond.notify_all()
        self._thread.join(2)
        if self.connected:
            try:
                self.client.publish(f"{self.prefix}/available", "offline", qos=1, retain=True).wait_for_publish(2)
            except (RuntimeError, ValueError):  # the connection went meanwhile: the last will says it
                pass
        self.client.disconnect()
        self.client.loop_stop()
