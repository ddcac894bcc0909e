"""The one configuration schema (pydantic, extra="forbid", every field described and bounded),
loaded from TOML and overridden from the command line; `lvlm-var config check FILE` validates it.

Errors name the field: `streams.0.uri: Field required`.
"""

from __future__ import annotations

import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # Ubuntu 22.04's Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration that does not validate: one line naming the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamConfig(_Model):
    id: str = Field(
        description="stream id: the results' topic and label in every sink",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    )
    uri: str = Field(
        description="file path, file://, rtsp://, /dev/videoN or v4l2://, csi://N, test://, pipeline://", min_length=1
    )
    realtime: bool = Field(False, description="pace a file at its own frame rate (as a camera would)")
    max_reconnects: int | None = Field(
        None, ge=0, description="give up after this many reconnects (None: never; 0: a stream that ends stays ended)"
    )
    explain: bool | None = Field(None, description="explanations for this stream (None: llm.explain)")
    explain_interval_s: float | None = Field(
        None, ge=0, le=3600, description="at most one explanation this often (None: llm.explain_interval_s)"
    )


class EngineConfig(_Model):
    backend: Literal["auto", "tensorrt", "onnxruntime"] = Field(
        "auto",
        description="auto: TensorRT plan for this GPU if the bundle has one, else ONNX Runtime (TensorRT, CUDA or CPU provider)",
    )
    max_batch: int = Field(32, ge=1, le=1024, description="frames per frame-encoder call, across streams")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="how long a partial batch waits for more frames")
    threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads (0: its default)")
    mirror: bool | None = Field(
        None,
        description="the VST head's label probabilities from each window and its mirror "
        "image (one more frame-encoder pass per frame and token-engine pass "
        "per window); None: as the bundle's label pool was fitted (lvlm.head_mirror)",
    )


class PoseConfig(_Model):
    detect_every: int = Field(
        15,
        ge=1,
        le=1000,
        description="pose front end: frames between person-detector runs "
        "while people are tracked (it also runs whenever nobody is)",
    )
    max_people: int = Field(
        4, ge=1, le=64, description="pose front end: people tracked per stream, each with its own windows"
    )
    min_detection: float = Field(
        0.5, gt=0, lt=1, description="pose front end: the detector's score that starts a track"
    )
    min_presence: float = Field(
        0.5, gt=0, lt=1, description="pose front end: the landmark model's presence score below which a track ends"
    )
    smoothing: bool = Field(
        False,
        description="pose front end: smooth each person's landmarks over time (a One-Euro "
        "filter): less jitter where they stand still, little lag where they move",
    )
    min_cutoff: float = Field(
        0.5, gt=0, le=100, description="pose smoothing: the filter's cutoff (Hz) for a still joint; lower is steadier"
    )
    beta: float = Field(
        10.0,
        ge=0,
        le=1000,
        description="pose smoothing: how fast the cutoff grows with a joint's "
        "speed (body sizes a second); higher lags less",
    )


class EventRule(_Model):
    min_probability: float | None = Field(
        None, gt=0, le=1, description="this label's minimum (None: events.min_probability)"
    )
    open_windows: int | None = Field(
        None, ge=1, le=100, description="this label's windows to open (None: events.open_windows)"
    )


class EventsConfig(_Model):
    idle_labels: list[str] = Field(["no action"], description="labels that never make an event")
    min_probability: float = Field(
        0.5, gt=0, le=1, description="a window's label counts towards an event from this probability"
    )
    open_windows: int = Field(2, ge=1, le=100, description="consecutive windows of a label that open its event")
    close_windows: int = Field(2, ge=1, le=100, description="consecutive windows of anything else that close it")
    labels: dict[str, EventRule] = Field(
        default_factory=dict, description="per-label rules, e.g. falling = {open_windows = 1}"
    )


class CurveConfig(_Model):
    server_secret_key: str | None = Field(None, description="ingest: its secret key file (lvlm-var keys generate)")
    authorized_keys: str | None = Field(None, description="ingest: folder of client public keys allowed to connect")
    client_secret_key: str | None = Field(None, description="worker/monitor: its secret key file")
    server_public_key: str | None = Field(None, description="worker/monitor: the ingest's public key file")


class BusConfig(_Model):
    windows: str = Field("ipc:///tmp/lvlm-var-windows", description="ingest PUSH -> LLM workers (PULL)")
    collect: str = Field("ipc:///tmp/lvlm-var-collect", description="LLM workers (PUSH) -> ingest")
    results: str = Field("ipc:///tmp/lvlm-var-results", description="ingest PUB of results, topic = stream id")
    window_hwm: int = Field(16, ge=1, le=100000, description="windows queued per worker connection before dropping")
    curve: CurveConfig | None = Field(None, description="CURVE keys; required when an endpoint is tcp://")

    @field_validator("windows", "collect", "results")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith(("inproc://", "ipc://", "tcp://")):
            raise ValueError("must start with inproc://, ipc:// or tcp://")
        return v


class LLMConfig(_Model):
    workers: int = Field(1, ge=0, le=64, description="LLM worker threads in `lvlm-var run` (each owns its own model)")
    threads: int = Field(2, ge=1, le=256, description="llama.cpp threads per worker")
    n_gpu_layers: int = Field(0, ge=-1, le=1000, description="layers offloaded to CUDA/Jetson (-1: all)")
    n_ctx: int = Field(1024, ge=256, le=32768, description="context length")
    explain: bool = Field(True, description="generate the explanation after the label")
    explanation_tokens: int = Field(48, ge=1, le=512, description="at most this many explanation tokens")
    explain_interval_s: float = Field(0.0, ge=0, le=3600, description="per stream, at most one explanation this often")
    deadline_s: float = Field(
        5.0, gt=0, le=600, description="windows older than this when their turn comes are dropped"
    )


class AlertRule(_Model):
    url: str = Field(description="webhook URL (POST, JSON body)", pattern=r"^https?://")
    labels: list[str] = Field(default_factory=list, description="labels that trigger it (empty: any)")
    min_probability: float = Field(0.5, ge=0, le=1)
    min_duration_s: float = Field(0.0, ge=0, le=3600, description="the event must have lasted this long (stream time)")
    cooldown_s: float = Field(60.0, ge=0, le=86400, description="per person and label, no repeat within this time")
    timeout_s: float = Field(5.0, gt=0, le=120)
    retries: int = Field(3, ge=0, le=20)


class MqttConfig(_Model):
    host: str = Field(description="broker host", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    tls: bool = Field(False, description="TLS to the broker (port 8883 usually)")
    ca_file: str | None = Field(None, description="CA certificate for TLS (None: the system's)")
    username: str | None = None
    password: str | None = None
    topic_prefix: str = Field(
        "lvlm-var", pattern=r"^[^#+]+$", description="topics: PREFIX/STREAM/event, .../state, PREFIX/available"
    )
    qos: int = Field(1, ge=0, le=2)
    retain_state: bool = Field(True, description="retain each stream's state message")
    client_id: str | None = Field(None, description="None: lvlm-var-NAME")
    queue_size: int = Field(
        1000, ge=1, le=1_000_000, description="messages held while the broker is away; beyond, dropped (counted)"
    )
    keepalive_s: int = Field(30, ge=5, le=3600)


class SinkConfig(_Model):
    console: bool = Field(True, description="live table on the terminal")
    jsonl: str | None = Field(None, description="append results to this JSONL file (rotated)")
    jsonl_max_bytes: int = Field(50_000_000, ge=1000, description="rotate the JSONL file at this size")
    jsonl_backups: int = Field(5, ge=0, le=1000)
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics and /healthz (None: off)")
    metrics_host: str = Field("127.0.0.1", description="address the metrics server binds")
    alerts: list[AlertRule] = Field(default_factory=list)
    mqtt: MqttConfig | None = Field(None, description="publish events and per-stream state to an MQTT broker")


class Config(_Model):
    bundle: str = Field(description="bundle directory (lvlm-var export bundle)")
    streams: list[StreamConfig] = Field(default_factory=list, description="video sources")
    engine: EngineConfig = EngineConfig()
    pose: PoseConfig = PoseConfig()
    bus: BusConfig = BusConfig()
    llm: LLMConfig = LLMConfig()
    sinks: SinkConfig = SinkConfig()
    events: EventsConfig = EventsConfig()
    name: str = Field("lvlm-var", description="this node's name in health messages and metrics")

    @field_validator("streams")
    @classmethod
    def _unique(cls, v: list[StreamConfig]) -> list[StreamConfig]:
        ids = [s.id for s in v]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"stream ids must be unique: {', '.join(sorted(dup))}")
        return v


def _one_line(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {where}: {err['msg']}{more}"


def _set(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def parse_value(text: str):
    """A CLI override's value as TOML would read it (numbers, booleans, arrays), else a string."""
    try:
        return tomllib.loads(f"x = {text}")["x"]
    except tomllib.TOMLDecodeError:
        return text


def load(path: str | None = None, overrides: dict | None = None) -> Config:
    """Config from a TOML file (optional) plus {dotted.key: value} overrides."""
    tree: dict = {}
    source = path or "config"
    if path:
        try:
            with open(path, "rb") as f:
                tree = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for key, value in (overrides or {}).items():
        _set(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None


EXAMPLE = """\
# lvlm-var configuration (lvlm-var config check FILE)
bundle = "build/bundle"
name = "edge-01"

[[streams]]
id = "door"
uri = "rtsp://user:pass@192.168.1.20:554/stream1"

[[streams]]
id = "lab"
uri = "v4l2:///dev/video0"

[engine]
backend = "auto"          # auto | tensorrt | onnxruntime
max_batch = 32
max_wait_ms = 5
# mirror = true           # the head's label from each window and its mirror image (2x the encoder's work);
                          # unset: as the bundle's label pool was fitted (lvlm.head_mirror)

[pose]                    # the pose front end (bundles whose VST reads BlazePose's joints)
detect_every = 15         # frames between person-detector runs while people are tracked
max_people = 4            # tracks per stream, each with its own windows and results
min_detection = 0.5
min_presence = 0.5        # below it a track ends (the person left or is hidden)
smoothing = false         # a One-Euro filter on each person's landmarks
min_cutoff = 0.5          # Hz for a still joint (lower: steadier)
beta = 10.0               # cutoff growth with speed (higher: less lag)

[events]                  # window labels -> action events with a start and an end, per person
idle_labels = ["no action"]
min_probability = 0.5
open_windows = 2          # consecutive windows of a label open its event ...
close_windows = 2         # ... and of anything else close it
labels = { falling = { open_windows = 1 } }  # a fall is reported from its first window

[bus]                     # inproc:// in one process; ipc:// or tcp:// between services
windows = "ipc:///run/lvlm-var/windows"
collect = "ipc:///run/lvlm-var/collect"
results = "ipc:///run/lvlm-var/results"

[llm]
workers = 1
threads = 2
n_gpu_layers = 0          # -1 on a Jetson / CUDA box: everything on the GPU
explain = true
explain_interval_s = 2.0
deadline_s = 5.0

[sinks]
console = true
jsonl = "/var/lib/lvlm-var/results.jsonl"
metrics_port = 9108

[[sinks.alerts]]
url = "http://127.0.0.1:8080/alert"
labels = ["falling"]
min_probability = 0.6
min_duration_s = 1.0
cooldown_s = 60

# [sinks.mqtt]            # events and per-stream state: PREFIX/STREAM/event, PREFIX/STREAM/state, PREFIX/available
# host = "127.0.0.1"
# port = 1883
# topic_prefix = "lvlm-var"
# username = "edge01"
# password = "..."
# tls = false
"""
