"""Messages on the bus: frozen dataclasses with a schema version, msgpack on the wire (never pickle).

Every message is a msgpack map {"v": SCHEMA_VERSION, "kind": ..., fields...}. `decode` checks the
size limit, the version, the kind, every field's presence and type, and raises `MessageError`
(one line) otherwise; receivers count those and carry on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import msgpack

SCHEMA_VERSION = 1
MAX_BYTES = 64 * 1024  # far above any real message (a window is ~300 bytes, a result ~1 KB)


class MessageError(ValueError):
    """A malformed, oversized, unknown or wrong-version message."""


@dataclass(frozen=True)
class TokenWindow:
    stream: str
    window_seq: int
    t_start_ns: int  # capture wall-clock time of the window's first frame
    t_end_ns: int  # ... and of its last frame
    tokens: tuple[int, ...]
    distances: tuple[float, ...]
    provisional_label: str  # the VST semantic head
    provisional_score: float
    capture_to_tokens_ms: float  # last frame captured -> tokens ready
    sent_ns: int  # wall clock when ingest sent it (staleness is judged from this)
    bundle: str  # bundle id
    count: int | None = None  # repetitions the VST's head counts in the window (a VST without the head: None)
    provisional_probs: tuple[float, ...] | None = None  # the head's probability of every label, in the bundle's order
    track: int | None = None  # the person's track in the stream (pose front end); None: the whole view
    pts_start_ns: int | None = None  # the first frame's presentation time on the stream's own clock
    pts_end_ns: int | None = None  # ... and the last frame's
    lossless: bool = False  # a recorded file's window: every one is read (queued, never superseded or stale)


@dataclass(frozen=True)
class ActionResult:
    stream: str
    window_seq: int
    t_start_ns: int
    t_end_ns: int
    tokens: tuple[int, ...]
    provisional_label: str
    provisional_score: float
    label: str  # the language model's, constrained to the label set
    probability: float
    explanation: str | None
    capture_to_tokens_ms: float
    tokens_to_label_ms: float
    tokens_to_explanation_ms: float | None
    bundle: str
    worker: str = ""
    count: int | None = None  # the window's count token, where the bundle's language model reads one
    track: int | None = None  # the person's track in the stream, as in the window
    pts_start_ns: int | None = None  # stream time, as in the window
    pts_end_ns: int | None = None


@dataclass(frozen=True)
class ActionEvent:
    """An action of one person (or the whole view) with a start and an end, made of consecutive
    results (`edge_runtime.events`). Sent when it starts, as it goes on, and when it ends; the
    `event_id` ties the three together."""

    stream: str
    event_id: int  # unique per ingest
    state: str  # "start", "update", "end"
    label: str
    probability: float  # the mean of its windows' probabilities
    explanation: str | None  # the latest of its windows'
    start_s: float  # stream time (seconds on the stream's clock) where it began
    end_s: float  # ... and where it ends (so far, until state == "end")
    windows: int
    t_start_ns: int  # wall clock of its first frame (where the stream has no clock of its own, its times are these)
    t_end_ns: int
    bundle: str
    track: int | None = None


@dataclass(frozen=True)
class Health:
    service: str  # "ingest", "llm-worker"
    name: str
    state: str
    counters: dict = field(default_factory=dict)
    sent_ns: int = 0


KINDS = {"window": TokenWindow, "result": ActionResult, "event": ActionEvent, "health": Health}
KIND_OF = {cls: kind for kind, cls in KINDS.items()}
_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,), dict: (dict,)}


def who(msg) -> str:
    """A window's, result's or event's stream and, with the pose front end, its person: "door", "door/2"."""
    return msg.stream if msg.track is None else f"{msg.stream}/{msg.track}"


def encode(msg) -> bytes:
    body = dataclasses.asdict(msg)
    body.update(v=SCHEMA_VERSION, kind=KIND_OF[type(msg)])
    return msgpack.packb(body, use_bin_type=True)


def _check(cls, name: str, hint: str, value):
    """The field's value with its declared type, or MessageError."""
    optional = "| None" in hint
    base = hint.replace("| None", "").strip()
    if value is None:
        if optional:
            return None
        raise MessageError(f"{cls.__name__}.{name} is missing")
    if base.startswith("tuple["):
        item = float if "float" in base else int
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(x, _TYPES[item]) and not isinstance(x, bool) for x in value
        ):
            raise MessageError(f"{cls.__name__}.{name} must be a list of {item.__name__}")
        return tuple(item(x) for x in value)
    typ = {"int": int, "float": float, "str": str, "dict": dict, "bool": bool}[base]
    if not isinstance(value, _TYPES[typ]) or (typ is not bool and isinstance(value, bool)):
        raise MessageError(f"{cls.__name__}.{name} must be {typ.__name__}, got {type(value).__name__}")
    return typ(value) if typ in (int, float) else value


def decode(data: bytes):
    if len(data) > MAX_BYTES:
        raise MessageError(f"message of {len(data)} bytes exceeds the {MAX_BYTES}-byte limit")
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_BYTES,
            max_bin_len=0,
            max_array_len=4096,
            max_map_len=256,
        )
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types for garbage
        raise MessageError(f"not a msgpack message ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise MessageError("message is not a map")
    if body.get("v") != SCHEMA_VERSION:
        raise MessageError(f"schema version {body.get('v')!r}, this lvlm-var speaks {SCHEMA_VERSION}")
    cls = KINDS.get(body.get("kind"))
    if cls is None:
        raise MessageError(f"unknown message kind {body.get('kind')!r}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in body:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise MessageError(f"{cls.__name__}.{f.name} is missing")
        values[f.name] = _check(cls, f.name, str(f.type), body[f.name])
    return cls(**values)
