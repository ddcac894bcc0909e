"""The MQTT sink against a real broker (Debian's mosquitto, started by the test): events and
state arrive, the availability topic and its last will, a broker that goes away and comes back
loses nothing within the bounded queue, bad settings give one line."""

import json
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from edge_runtime.config import ConfigError, MqttConfig
from streams.rtsp_server import free_port
from tests.helpers import action_event

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")


class Broker:
    """mosquitto on a free local port, with persistence so a restart keeps the subscriber's session."""

    def __init__(self, tmp_path):
        self.port = free_port()
        conf = tmp_path / "mosquitto.conf"
        (tmp_path / "db").mkdir(exist_ok=True)
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {tmp_path / 'db'}/\n"
        )
        self.conf, self.proc = str(conf), None

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start: " + self.proc.stderr.read().decode()[-500:])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Subscriber:
    """A persistent-session subscriber of PREFIX/#, QoS 1: what arrives, topic by topic."""

    def __init__(self, port, prefix="cams"):
        import paho.mqtt.client as mqtt

        self.got: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        c = self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub", clean_session=False, protocol=mqtt.MQTTv311
        )
        c.on_connect = lambda cl, *a: cl.subscribe(f"{prefix}/#", qos=1)
        c.on_message = self._message
        c.reconnect_delay_set(0.2, 1)
        c.connect("127.0.0.1", port)
        c.loop_start()

    def _message(self, client, userdata, msg):
        with self.lock:
            self.got.append((msg.topic, msg.payload.decode(), msg.retain))

    def wait(self, pred, seconds=15.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                if pred(list(self.got)):
                    return True
            time.sleep(0.05)
        return False

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def event(eid, state, label="falling", track=0):
    return action_event(eid, state, label, stream="door", track=track)


def events_of(got):
    return [json.loads(p) for t, p, _ in got if t == "cams/door/event"]


def test_events_state_availability_and_a_broker_restart(tmp_path):
    from edge_runtime.mqtt import Mqtt

    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port)
    sink = None
    try:
        time.sleep(0.3)  # the subscription is in place
        sink = Mqtt(MqttConfig(host="127.0.0.1", port=broker.port, topic_prefix="cams", queue_size=50), "edge01")
        sink.event(event(0, "start"))
        sink.event(event(0, "end"))
        assert sub.wait(lambda g: len(events_of(g)) == 2), sub.got
        assert [e["state"] for e in events_of(sub.got)] == ["start", "end"]
        states = [json.loads(p) for t, p, _ in sub.got if t == "cams/door/state"]
        assert states[0]["events"] == {"0": {"event_id": 0, "label": "falling", "start_s": 1.0}}
        assert states[-1]["events"] == {}
        assert any(t == "cams/available" and p == "online" for t, p, _ in sub.got)

        broker.stop()  # the broker goes away: events wait in the sink's queue, the pipeline does not
        t0 = time.monotonic()
        for k in range(1, 11):
            sink.event(event(k, "start", label="clapping", track=k))
        assert time.monotonic() - t0 < 0.5
        time.sleep(1.0)
        broker.start()
        assert sub.wait(lambda g: len(events_of(g)) >= 12, 45), (len(events_of(sub.got)), sink.counters)
        ids = [e["event_id"] for e in events_of(sub.got)]
        assert sorted(set(ids)) == list(range(11)) and sink.counters["dropped"] == 0
    finally:
        if sink is not None:
            sink.close()
        sub.close()
        broker.stop()


def test_the_last_will_a_full_queue_and_bad_settings(tmp_path):
    from edge_runtime.mqtt import Mqtt

    dead = free_port()  # nothing listens there: the sink queues, drops the oldest, never blocks
    sink = Mqtt(MqttConfig(host="127.0.0.1", port=dead, topic_prefix="cams", queue_size=5), "edge02")
    t0 = time.monotonic()
    for k in range(12):
        sink.event(event(k, "update"))
    assert time.monotonic() - t0 < 0.5 and len(sink.queue) == 5 and sink.counters["dropped"] == 7
    sink.close()
    with pytest.raises(ConfigError, match="sinks.mqtt.host: cannot resolve 'no-such-broker.invalid'"):
        Mqtt(MqttConfig(host="no-such-broker.invalid"), "edge03")

    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port)
    try:
        time.sleep(0.3)
        proc = subprocess.Popen(  # a service that dies without a goodbye: the broker says it is offline
            [
                sys.executable,
                "-c",
                "import time, sys; sys.path.insert(0, '.');"
                "from edge_runtime.config import MqttConfig; from edge_runtime.mqtt import Mqtt;"
                f"Mqtt(MqttConfig(host='127.0.0.1', port={broker.port}, topic_prefix='cams', keepalive_s=5), 'dies');"
                "time.sleep(30)",
            ]
        )
        assert sub.wait(lambda g: ("cams/available", "online") in [(t, p) for t, p, _ in g], 15)
        proc.kill()
        proc.wait(5)
        assert sub.wait(lambda g: [p for t, p, _ in g if t == "cams/available"][-1:] == ["offline"], 20), sub.got
    finally:
        sub.close()
        broker.stop()
